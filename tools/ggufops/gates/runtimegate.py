"""`ggufops gate --runtime OLD --against-runtime NEW`: a runtime upgrade gated like a model.

A runtime is a Python interpreter (a venv) with its own llama-cpp-python, optionally with
llama.cpp settings ($GGUFOPS_RUNTIME_LLAMA_ARGS, see runtimechild.py). For every model an
environment runs, the SAME artifact is measured under both runtimes, each in a child process
of its own interpreter (runtimechild.py), and judged with the model gate's rules:

  smoke    each runtime loads the file and generates (llm's smoke child, run by that Python);
  quality  per token: each child decodes the same eval chunks and hands its logits over in
           a file; perplexity, KL divergence and top-1 agreement come from llm's own
           quality_from_chunks. If the runtimes tokenize the eval set differently, bits per
           byte (each child scores the same bytes). Rule "runtime change": perplexity within
           max_degradation, KL ≤ max_kl_divergence, top-1 ≥ min_top1_agreement
           (gates.runtime.* overrides each);
  speed    the paired rounds of speed.py, every run made by the children, baseline and
           candidate back to back, and the same confidence-interval verdicts.

Quality is not cached: it depends on the runtime, which is what changes here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import ggufops
from ggufops import procs
from ggufops.artifacts import pull
from ggufops.errors import LlamaError, UsageError
from ggufops.gates import bench, gate
from ggufops.gates import policy as gatepolicy
from ggufops.gates import quality as gatequality
from ggufops.gates import speed as gatespeed
from ggufops.gates.result import FAIL, GateReport, ModelGate, Row, Subject
from ggufops.gates.runtimechild import LLAMA_ARGS_ENV
from ggufops.llama import llm, quantization
from ggufops.registry.registry import Registry, VersionRef

TOOLS_DIR = Path(ggufops.__file__).resolve().parent.parent
ROLES = ("baseline", "candidate")


# --- runtimes and their children ------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """A Python interpreter with llama-cpp-python, and llama.cpp settings for every load."""

    python: str
    llama_args: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The child's environment: this ggufops importable, the settings passed on."""
        path = os.pathsep.join(p for p in (str(TOOLS_DIR), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path,
                LLAMA_ARGS_ENV: json.dumps(self.llama_args, sort_keys=True)}

    @property
    def label(self) -> str:
        args = f" {json.dumps(self.llama_args, sort_keys=True)}" if self.llama_args else ""
        return f"{self.python}{args}"


def parse_llama_args(text: str | None, option: str) -> dict[str, Any]:
    """A JSON object of llama_cpp.Llama settings; UsageError naming `option` if it is not."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{option} {text!r} is not JSON ({e}); give an object such as "
                         '\'{"type_k": 2}\'') from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object such as '{{\"type_k\": 2}}'")
    return value


class Child:
    """One runtimechild process (a procs.LineChild): a request line in, a reply line out."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        try:
            self.line = procs.LineChild([runtime.python, "-m", "ggufops.gates.runtimechild"],
                                        env=runtime.env(), preexec=procs.die_with_parent())
        except OSError as e:
            raise UsageError(f"runtime {runtime.python} cannot run ({e.strerror}); give the "
                             "python of a venv with llama-cpp-python and numpy") from None

    def ask(self, cmd: str, **request: Any) -> dict[str, Any]:
        try:
            self.line.send({"cmd": cmd, **request})
            reply: dict[str, Any] | None = self.line.receive()
        except OSError:
            reply = None
        if reply is None:
            raise LlamaError(f"runtime {self.runtime.label} stopped during {cmd}: "
                             f"{self._last_error()}")
        if not reply.pop("ok"):
            raise LlamaError(f"runtime {self.runtime.label}: {cmd} failed: {reply['error']}")
        return reply

    def _last_error(self) -> str:
        status = self.line.wait(timeout=30)
        return (self.line.last_error_line() or f"exit status {status}") + \
            " (is llama-cpp-python with numpy installed there?)"

    def close(self) -> None:
        """Its stdin closed, it unloads and ends; killed if it has not within 30 s."""
        self.line.close(grace=30)


class Children:
    """Both runtimes' children (baseline first), closed together."""

    def __init__(self, runtimes: Sequence[Runtime]) -> None:
        self.runtimes = runtimes
        self.children: list[Child] = []

    def __enter__(self) -> list[Child]:
        try:
            for runtime in self.runtimes:
                self.children.append(Child(runtime))
        except BaseException:
            self.__exit__()
            raise
        return self.children

    def __exit__(self, *exc: object) -> None:
        for child in self.children:
            child.close()


def describe(runtime: Runtime) -> dict[str, Any]:
    """llama-cpp-python version and build info of `runtime`, from a child of its own."""
    with Children([runtime]) as (child,):
        return child.ask("info")


# --- measuring one model under two runtimes ---------------------------------------------------


@dataclass
class Loaded:
    """The same model loaded in both children, with each child's eval tokens."""

    children: list[Child]
    tokens: list[list[int]]
    n_params: int


def load_both(children: Sequence[Child], subject: Subject, eval_set: bench.EvalSet,
              settings: bench.Settings) -> Loaded:
    """Loaded for the quality pass, on every core (the speed rounds load afresh)."""
    replies = [child.ask("load", path=str(subject.path), n_ctx=settings.n_ctx,
                         n_threads=settings.quality_threads) for child in children]
    tokens = [children[i].ask("tokenize", text_path=str(eval_set.path))["tokens"]
              for i in (0, 1)]
    return Loaded(list(children), tokens, int(replies[0]["n_params"]))


def measure_quality(loaded: Loaded, eval_set: bench.EvalSet,
                    settings: bench.Settings) -> dict[str, Any]:
    """Per token when both runtimes tokenize the eval set alike, else per byte."""
    count = settings.eval_token_count(loaded.n_params)
    if loaded.tokens[0][:count] != loaded.tokens[1][:count]:
        return _per_byte(loaded, eval_set, settings, count)
    usable = min(len(loaded.tokens[0]), count) // settings.eval_ctx * settings.eval_ctx
    if not usable:
        raise LlamaError(f"eval set {eval_set.name} has fewer than eval_ctx="
                         f"{settings.eval_ctx} tokens; lower gates.eval_ctx in policy.yaml")
    with tempfile.TemporaryDirectory(prefix="ggufops-runtime-") as scratch:
        streams = [_chunk_logprobs(child, loaded.tokens[0][:usable], settings.eval_ctx,
                                   Path(scratch) / f"{role}.npy")
                   for child, role in zip(loaded.children, ROLES, strict=True)]
        base, cand, div = llm.quality_from_chunks(streams[0], streams[1], settings.eval_ctx,
                                                  usable)
    return {"per": gatequality.PER_TOKEN, "baseline": asdict(base), "candidate": asdict(cand),
            "divergence": asdict(div), "n_tokens": usable}


def _chunk_logprobs(child: Child, tokens: Sequence[int], n_ctx: int,
                    scratch: Path) -> llm.ChunkLogprobs:
    """Each chunk decoded by `child`, its logits read back and turned into log-probs."""
    for start in range(0, len(tokens), n_ctx):
        child.ask("logits", tokens=list(tokens[start:start + n_ctx]), n_ctx=n_ctx,
                  out=str(scratch))
        with scratch.open("rb") as f:
            logits, targets = np.load(f), np.load(f)
        yield llm.log_softmax(logits), targets


def _per_byte(loaded: Loaded, eval_set: bench.EvalSet, settings: bench.Settings,
              count: int) -> dict[str, Any]:
    """Bits per byte of the same bytes: about `count` tokens' worth, cut after a line."""
    share = min(1.0, count / max(len(t) for t in loaded.tokens))
    prefix = eval_set.text[: int(len(eval_set.text) * share)]
    cut = prefix.rfind(b"\n")
    n_bytes = cut + 1 if cut > 0 else len(prefix)
    result: dict[str, Any] = {
        "per": gatequality.PER_BYTE, "n_bytes": n_bytes,
        "why": "the two runtimes tokenize the eval set differently"}
    for role, child in zip(ROLES, loaded.children, strict=True):
        result[role] = child.ask("text_nll", text_path=str(eval_set.path), n_bytes=n_bytes,
                                 n_ctx=settings.eval_ctx)
    return result


# --- speed: the rounds of speed.py, run by the children ------------------------------------------


class SpeedRounds:
    """A `run_round` for gatespeed.measure: both children load afresh, warm up, then pairs."""

    def __init__(self, loaded: Loaded, subject: Subject, settings: bench.Settings,
                 prompts: Sequence[bytes]) -> None:
        self.children, self.subject = loaded.children, subject
        self.settings, self.prompts = settings, prompts
        self.tokens = loaded.tokens  # each child's eval tokens, from the quality phase

    def __call__(self, speed: gatespeed.PairedSpeed) -> None:
        flip = speed.rounds % 2
        for i in (1, 0) if flip else (0, 1):  # fresh loads; the tokens do not change
            self.children[i].ask("load", path=str(self.subject.path),
                                 n_ctx=self.settings.n_ctx, n_threads=self.settings.n_threads)
        for i in (0, 1):
            self._warm_up(i, speed.plan)
        if speed.plan is None:
            speed.plan = self._calibrate()
        self._pairs(speed, flip)

    def _run(self, i: int, metric: str, plan: gatespeed.RunPlan, prompt: bytes) -> float:
        clock = "thread" if plan.clock is time.thread_time else "wall"
        child = self.children[i]
        if metric == "pp_tokens_per_s":
            return float(child.ask("pp", tokens=self.tokens[i][: plan.pp_tokens],
                                   repeat=plan.pp_repeat, clock=clock)["value"])
        if metric == "tg_tokens_per_s":
            return float(child.ask("tg", n=plan.tg_tokens, repeat=plan.tg_repeat,
                                   clock=clock)["value"])
        return float(child.ask("latency", prompt_hex=prompt.hex(),
                               max_tokens=plan.latency_max_tokens, repeat=plan.latency_repeat,
                               clock=clock)["value"])

    def _warm_up(self, i: int, plan: gatespeed.RunPlan | None) -> None:
        probe = gatespeed.RunPlan(plan.pp_tokens if plan else gatespeed.MIN_PP_TOKENS, 1, 2,
                                  1, 2, 1)
        for metric, _ in gatespeed.METRICS:
            self._run(i, metric, probe, self.prompts[0])

    def _calibrate(self) -> gatespeed.RunPlan:
        """speed.calibrate's sizes, from the slower runtime's probe runs."""
        s, budget = self.settings, self.settings.run_seconds
        probe_pp = min(s.pp_tokens, gatespeed.MIN_PP_TOKENS)
        probe_tg = min(s.tg_tokens, gatespeed.MIN_TG_TOKENS)
        probe = gatespeed.RunPlan(probe_pp, 1, probe_tg, 1, 1, 1)
        pp_rate = min(self._run(i, "pp_tokens_per_s", probe, b"") for i in (0, 1))
        tg_rate = min(self._run(i, "tg_tokens_per_s", probe, b"") for i in (0, 1))
        pp = max(probe_pp, min(s.pp_tokens, gatespeed._pow2_at_most(pp_rate * budget)))
        tg = max(probe_tg, min(s.tg_tokens, gatespeed._pow2_at_most(tg_rate * budget)))
        latency_tokens = min(s.latency_max_tokens, tg)
        timing = gatespeed.RunPlan(pp, 1, tg, 1, latency_tokens, 1)
        request_s = max(self._run(i, "latency_ms", timing, self.prompts[0])
                        for i in (0, 1)) / 1e3
        return gatespeed.RunPlan(pp, max(1, round(budget * pp_rate / pp)), tg,
                                 max(1, round(budget * tg_rate / tg)), latency_tokens,
                                 max(1, round(budget / request_s)), gatespeed.timer(s.n_threads))

    def _pairs(self, speed: gatespeed.PairedSpeed, flip: int) -> None:
        plan = speed.plan
        assert plan is not None
        for series in (speed.baseline, speed.candidate):
            for runs in series.values():
                runs.append([])
        done = sum(len(r) for r in speed.baseline["latency_ms"][:-1])
        for rep in range(speed.repetitions):
            order = (1, 0) if (rep + flip) % 2 else (0, 1)
            prompt = self.prompts[(done + rep) % len(self.prompts)]
            for metric, _ in gatespeed.METRICS:
                figures = {i: self._run(i, metric, plan, prompt) for i in order}
                speed.baseline[metric][-1].append(figures[0])
                speed.candidate[metric][-1].append(figures[1])


# --- one model, both runtimes ---------------------------------------------------------------


@dataclass
class RuntimeMeasurement:
    """Everything measured for one artifact under the two runtimes."""

    subject: Subject
    settings: bench.Settings
    runtimes: list[dict[str, Any]]  # each runtime's info (versions, build, settings)
    smoke_errors: list[str] = field(default_factory=list)  # "" per runtime that passed
    quality: dict[str, Any] = field(default_factory=dict)
    speed: gatespeed.PairedSpeed | None = None
    timings: dict[str, float] = field(default_factory=dict)


def measure_model(subject: Subject, eval_set: bench.EvalSet, runtimes: Sequence[Runtime],
                  infos: Sequence[dict[str, Any]], policy: dict[str, Any]) -> RuntimeMeasurement:
    """Smoke, quality and (unless quality already blocks) speed of `subject` under both."""
    settings = bench.settings_from(policy)
    deadline = time.monotonic() + settings.time_budget_s
    result = RuntimeMeasurement(subject, settings, list(infos))
    clock = gate._Clock(result.timings)
    with clock("smoke"):
        result.smoke_errors = [_smoke(subject, runtime, settings) for runtime in runtimes]
    if any(result.smoke_errors):
        return result
    prompts = bench.prompts_from(eval_set, settings.latency_prompts)
    with clock("quality"), Children(runtimes) as children:
        loaded = load_both(children, subject, eval_set, settings)
        result.quality = measure_quality(loaded, eval_set, settings)
        if quality_blocks(result, policy):
            return result
        clock.switch("speed")
        rules = gatespeed.SpeedRules.from_policy(policy)
        rounds = SpeedRounds(loaded, subject, settings, prompts)
        result.speed = gatespeed.measure([subject, subject], loaded.tokens, prompts, settings,
                                         deadline=deadline, is_clear=rules.clear,
                                         run_round=rounds)
    return result


def _smoke(subject: Subject, runtime: Runtime, settings: bench.Settings) -> str:
    smoke = llm.smoke_test_isolated(subject.path, n_tokens=settings.smoke_tokens,
                                    n_threads=settings.n_threads, n_ctx=settings.n_ctx,
                                    chat_template=subject.chat_template,
                                    python=runtime.python, env=runtime.env())
    return smoke.error


# --- judging ------------------------------------------------------------------------------


def runtime_rule(policy: dict[str, Any]) -> gatequality.QualityRule:
    """Same artifact, other runtime: perplexity, KL and top-1 all judged (gates.runtime.*
    overrides max_degradation, max_kl_divergence and min_top1_agreement)."""
    own = policy.get("runtime") or {}

    def pick(key: str, default: float) -> tuple[float, str]:
        if key in own:
            return float(own[key]), f"runtime.{key}"
        return float(policy.get(key, default)), key

    degradation, deg_key = pick("max_degradation", float(policy["max_degradation"]))
    max_kl, kl_key = pick("max_kl_divergence", quantization.DEFAULT_MAX_KL)
    min_top1, top1_key = pick("min_top1_agreement", quantization.DEFAULT_MIN_TOP1)
    return gatequality.QualityRule(
        "runtime change", degradation, f"{deg_key} {degradation:.0%}", max_kl, min_top1,
        kl_key, top1_key, explanation=(
            f"runtime change (the same artifact under two runtimes): perplexity may rise by "
            f"at most {degradation:.0%} ({deg_key}); KL divergence ≤ {max_kl:g} ({kl_key}) "
            f"and top-1 agreement ≥ {min_top1:.0%} ({top1_key})"))


def quality_blocks(measured: RuntimeMeasurement, policy: dict[str, Any]) -> bool:
    scratch = ModelGate("", "", "", "", None)
    gatequality.judge(scratch, runtime_rule(policy), measured.quality, policy)
    return scratch.verdict == FAIL


def runtime_text(info: dict[str, Any]) -> str:
    """One line naming a runtime: python, llama-cpp-python, llama.cpp build, settings."""
    args = info.get("llama_args") or {}
    settings = f", llama settings {json.dumps(args, sort_keys=True)}" if args else ""
    return (f"{info['python']} (Python {info['python_version']}): llama-cpp-python "
            f"{info['llama_cpp_python']}, llama.cpp {info['llama_cpp']}{settings}")


def judge_model(env: str, ref: str, measured: RuntimeMeasurement, eval_set: bench.EvalSet,
                policy: dict[str, Any]) -> ModelGate:
    """The verdict on the candidate runtime for this model in `env`."""
    subject, infos = measured.subject, measured.runtimes
    gate_ = ModelGate(env, ref.partition("@")[0], "runtime", f"{ref} on the candidate runtime",
                      f"{ref} on the baseline runtime",
                      f"{subject.label} · llama-cpp-python {infos[1]['llama_cpp_python']}",
                      f"{subject.label} · llama-cpp-python {infos[0]['llama_cpp_python']}",
                      eval_set.name, eval_set.sha256, timings_s=dict(measured.timings),
                      time_budget_s=measured.settings.time_budget_s)
    gate_.notes += [f"{role} runtime: {runtime_text(info)}"
                    for role, info in zip(ROLES, infos, strict=True)]
    for role, error in zip(ROLES, measured.smoke_errors, strict=True):
        if error:
            gate_.rows.append(Row("smoke_test", None, None, None, "loads, generates, finite",
                                  FAIL, against=""))
            gate_.fail(f"{ref} in {env}: smoke test failed on the {role} runtime: {error}")
    if gate_.failures:
        return gate_
    gate_.quality = measured.quality
    gatequality.judge(gate_, runtime_rule(policy), measured.quality, policy)
    if measured.speed is None:
        gate_.notes.append("speed not measured: quality already blocks this runtime")
        return gate_
    rules = gatespeed.SpeedRules.from_policy(policy)
    gatespeed.judge(gate_, measured.speed, rules)
    gate_.speed = gatespeed.summary(measured.speed, rules, measured.settings)
    gate_.samples = {side: getattr(measured.speed, side) for side in ROLES}
    return gate_


# --- every model of an environment -----------------------------------------------------------


def _models(registry: Registry, env: str) -> Iterator[VersionRef]:
    for model, version in sorted(registry.deployed(env).items()):
        yield VersionRef(model, str(version))


def gate_runtimes(registry: Registry, env: str, runtimes: Sequence[Runtime], store_root: Path,
                  *, base: str | None = None, threads: int | None = None) -> GateReport:
    """Measure and judge every model `env` runs under both runtimes, with the policy of the
    base ref (as the model gate: a pull request cannot lower its own bar)."""
    infos = [describe(runtime) for runtime in runtimes]
    remote = pull.lazy_remote(registry.root)
    _, base_sha = gate.resolve_base(registry.root, base)
    judging, source = gatepolicy.judging_policy(registry.root, base_sha, registry.policy())
    policy = gate._with_threads(bench.gate_policy(judging, env), threads)
    gates: list[ModelGate] = []
    timings: dict[str, float] = {}
    for ref in _models(registry, env):
        doc = registry.load_ref(ref)
        eval_set = bench.load_eval_set(registry.root, doc)
        path = pull.pull_doc(doc, str(ref), store_root, remote, progress=False)
        measured = measure_model(Subject.of(doc, path), eval_set, runtimes, infos, policy)
        for phase, seconds in measured.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
        gates.append(judge_model(env, str(ref), measured, eval_set, policy))
    provenance = {**{k: infos[1][k] for k in ("llama_cpp_python", "llama_cpp")},
                  "cpu": llm.cpu_model(), "threads": bench.settings_from(policy).n_threads,
                  "runtimes": infos}
    upgrade = (f"runtime llama-cpp-python {infos[0]['llama_cpp_python']} → "
            f"{infos[1]['llama_cpp_python']}")
    return GateReport(upgrade, None, gates, provenance, timings, source)
