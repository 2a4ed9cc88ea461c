"""`ggufops gate`: block a change that makes a model worse than the one it replaces.

1. plan    which (environment, model) pairs change between a base ref and the work tree:
           the candidate is the version the work tree names, the baseline the version
           the environment ran at the base ref (none: a new model, held to policy minimums);
2. fetch   both artifacts, verified, into the local store (pull.pull_doc);
3. smoke   each file in a child process: it loads, generates, its logits are finite
           (a file that makes llama.cpp abort fails here; the gate process survives);
4. quality perplexity of both on the candidate's pinned eval set, KL divergence and top-1
           agreement, all from one pass; deterministic, so cached;
5. speed   pp, tg and request latency in one process over `rounds` rounds; inside a
           round each run is made for both models back to back (A B, B A, ...). The change
           is the median over rounds of the paired candidate/baseline ratio; the allowance
           is the threshold plus the spread of those ratios between rounds (the noise).

The base ref defaults to the merge-base of HEAD with the pull request's base branch
($GITHUB_BASE_REF) or the default branch (origin/HEAD, origin/main, ...), so a pull
request is compared with what it would replace; without one, HEAD~1; in a repository with
one commit, the empty tree (all models new); a shallow clone without a base is an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufops import bench, git, llm
from ggufops.benchcache import BenchCache
from ggufops.errors import GateFailed, GitError
from ggufops.registry import (
    ENVIRONMENTS_DIR,
    Registry,
    VersionRef,
    display_id,
    environment_models,
    environment_models_in,
)

PASS, FAIL, INFO = "pass", "fail", "info"
SPEED_METRICS = (  # name, higher is better
    ("pp_tokens_per_s", True),
    ("tg_tokens_per_s", True),
    ("latency_p95_ms", False),
)
MINIMUM_RULES = (  # policy key, metric, the metric must be <= (True) or >= (False) the value
    ("max_perplexity", "perplexity", True),
    ("min_pp_tokens_per_s", "pp_tokens_per_s", False),
    ("min_tg_tokens_per_s", "tg_tokens_per_s", False),
    ("max_latency_p95_ms", "latency_p95_ms", True),
)


# --- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateJob:
    env: str
    model: str
    candidate: VersionRef
    baseline: VersionRef | None
    role: str = "version"  # or "canary"


@dataclass(frozen=True)
class GatePlan:
    base: str  # the ref as given or chosen
    base_sha: str | None  # None: the empty tree
    jobs: list[GateJob]


def resolve_base(root: Path, base: str | None) -> tuple[str, str | None]:
    """(description, commit) of the ref to compare with; see the module docstring."""
    if base:
        return base, git.rev_parse(root, base)
    pr_base = os.environ.get("GITHUB_BASE_REF")
    branch = f"origin/{pr_base}" if pr_base and git.resolve(root, f"origin/{pr_base}") \
        else git.default_branch(root)
    has_head = git.resolve(root, "HEAD") is not None
    if branch and has_head:
        sha = git.merge_base(root, "HEAD", branch)
        if sha:
            return f"merge-base(HEAD, {branch})", sha
    parent = git.resolve(root, "HEAD~1")
    if parent is not None:
        return "HEAD~1", parent
    if has_head and git.is_shallow(root):
        raise GitError(
            f"{root} is a shallow clone without the base branch, so the gate cannot tell what "
            "changed; fetch full history (actions/checkout fetch-depth: 0) or pass --base REF"
        )
    return "(empty tree)", None


def environments_at(root: Path, sha: str | None) -> dict[str, dict[str, dict[str, Any]]]:
    """env -> model -> entry, as the environment files were at commit `sha`."""
    if sha is None:
        return {}
    files = git.read_tree_files(root, sha, [ENVIRONMENTS_DIR])
    result = {}
    for path, raw in files.items():
        if path.endswith(".yaml") and path.count("/") == 1:
            result[Path(path).stem] = environment_models_in(raw, f"{sha[:12]}:{path}")
    return result


def _jobs_for(env: str, now: dict[str, dict[str, Any]],
              before: dict[str, dict[str, Any]]) -> Iterator[GateJob]:
    for model in sorted(now):
        entry, old = now[model], before.get(model) or {}
        old_version = str(old["version"]) if old.get("version") else None
        baseline = VersionRef(model, old_version) if old_version else None
        if str(entry.get("version")) != old_version:
            yield GateJob(env, model, VersionRef(model, str(entry["version"])), baseline)
        canary = (entry.get("canary") or {}).get("version")
        old_canary = (old.get("canary") or {}).get("version")
        if canary and str(canary) != str(old_canary):
            yield GateJob(env, model, VersionRef(model, str(canary)), baseline, "canary")


def plan_gates(registry: Registry, base: str | None = None, env: str | None = None) -> GatePlan:
    """Every (environment, model) whose version or canary changes since the base ref."""
    description, sha = resolve_base(registry.root, base)
    before = environments_at(registry.root, sha)
    envs = [env] if env else registry.environments()
    jobs: list[GateJob] = []
    for name in envs:
        now = environment_models(registry.environment(name))
        jobs.extend(_jobs_for(name, now, before.get(name, {})))
    return GatePlan(description, sha, jobs)


# --- subjects and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One side of a comparison: a registered version and its local, verified artifact."""

    ref: str
    label: str
    quantization: str
    sha256: str
    path: Path
    chat_template: str | None = None  # inference.prompt_template: the smoke test's chat turn

    @classmethod
    def of(cls, doc: dict[str, Any], path: Path) -> Subject:
        return cls(f"{doc['name']}@{doc['version']}", display_id(doc), str(doc["quantization"]),
                   str(doc["artifact"]["sha256"]), path,
                   (doc.get("inference") or {}).get("prompt_template"))


@dataclass
class Row:
    metric: str
    baseline: float | None
    candidate: float | None
    change: float | None  # (candidate - baseline) / baseline
    threshold: str
    verdict: str
    unit: str = ""
    limit: float | None = None  # the allowed relative change (signed), or absolute bound
    against: str = "baseline"  # or "minimum" (policy minimums), "" (reported only)


@dataclass
class ModelGate:
    env: str
    model: str
    role: str
    candidate: str
    baseline: str | None
    candidate_label: str = ""
    baseline_label: str | None = None
    eval_set: str = ""
    eval_sha256: str = ""
    verdict: str = PASS
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    noise: dict[str, float] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.verdict = FAIL
        self.failures.append(message)


@dataclass
class GateReport:
    base: str
    base_sha: str | None
    gates: list[ModelGate]
    provenance: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.verdict != FAIL for g in self.gates)

    def summary(self) -> str:
        """One line: the verdict and, for a failure, model, metric and numbers."""
        failures = [f for g in self.gates for f in g.failures]
        if not failures:
            return f"gate passed: {len(self.gates)} model change(s) checked against {self.base}"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"gate failed: {failures[0]}{more}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["summary"] = self.summary()
        return data


# --- measuring one pair ------------------------------------------------------------------------


@dataclass
class _Side:
    subject: Subject
    model: llm.Model
    tokens: list[int]
    speed: bench.SpeedSamples = field(default_factory=bench.SpeedSamples)


def _smoke(subject: Subject, settings: bench.Settings) -> llm.Smoke:
    return llm.smoke_test_isolated(subject.path, n_tokens=settings.smoke_tokens,
                                   n_threads=settings.threads, n_ctx=settings.n_ctx,
                                   chat_template=subject.chat_template)


def _quality(sides: Sequence[_Side], eval_set: bench.EvalSet, settings: bench.Settings,
             cache: BenchCache, gate: ModelGate) -> dict[str, dict[str, Any]]:
    """{"baseline"?, "candidate", "divergence"?}: perplexities (and KL) from cache or one pass."""
    roles = ["baseline", "candidate"][-len(sides):]
    keys = [bench.quality_key(s.subject.sha256, eval_set, settings) for s in sides]
    result = {role: hit for role, key in zip(roles, keys, strict=True)
              if (hit := cache.get("quality", key)) is not None}
    cached = set(result)
    comparable = len(sides) == 2 and sides[0].tokens == sides[1].tokens and \
        sides[0].model.n_vocab == sides[1].model.n_vocab
    if len(sides) == 2 and not comparable:
        gate.notes.append("the two models tokenize the eval set differently: perplexity is per "
                          "token of each model's own tokenizer; KL divergence not computed")
    if comparable:
        div_key = {**keys[0], "candidate_sha256": sides[1].subject.sha256}
        div = cache.get("divergence", div_key)
        if div is None or len(result) < 2:
            base_ppl, cand_ppl, d = llm.quality_pair(sides[0].model, sides[1].model,
                                                     sides[0].tokens, n_ctx=settings.eval_ctx)
            result.update(baseline=asdict(base_ppl), candidate=asdict(cand_ppl))
            cached.clear()
            div = asdict(d)
            cache.put("divergence", div_key, div)
        result["divergence"] = div
    for role, key, side in zip(roles, keys, sides, strict=True):
        if role not in result:
            result[role] = bench.measure_quality(side.model, side.tokens, settings)
        if role not in cached:
            cache.put("quality", key, result[role])
    return result


def _interleave(sides: Sequence[_Side], prompts: Sequence[bytes],
                settings: bench.Settings) -> None:
    """Speed rounds, both models interleaved run by run (see bench.measure_round)."""
    measured = bench.measure_speed([s.model for s in sides], [s.tokens for s in sides], prompts,
                                   settings)
    for side, samples in zip(sides, measured, strict=True):
        side.speed = samples


# --- verdicts ---------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _quality_row(gate: ModelGate, base: float, cand: float, policy: dict[str, Any],
                 judged: bool) -> None:
    limit = float(policy["max_degradation"])
    change = (cand - base) / base
    verdict = (FAIL if change > limit else PASS) if judged else INFO
    threshold = f"≤ {_pct(limit)}" if judged else "not compared"
    gate.rows.append(Row("perplexity", base, cand, change, threshold, verdict, "", limit))
    if verdict == FAIL:
        gate.fail(f"{gate.candidate} in {gate.env}: perplexity {cand:.4g} vs {base:.4g} "
                  f"({_pct(change)}, limit {_pct(limit)})")


def _speed_row(gate: ModelGate, metric: str, higher_better: bool, *,
               base: bench.SpeedSamples, cand: bench.SpeedSamples,
               policy: dict[str, Any]) -> None:
    """Judge one speed metric: the change is the median over rounds of the paired
    candidate/baseline ratio; the allowance is the threshold plus the spread of those
    ratios between rounds (the noise) - for p95 latency at least the uncertainty of a p95
    of that many requests, (p99 - p90) / p95. An A/A comparison stays inside it."""
    b, c = base.pooled()[metric], cand.pooled()[metric]
    ratios = bench.round_ratios(base, cand, metric)
    change = llm.median(ratios) - 1.0
    noise = max(ratios) - min(ratios)
    if metric == "latency_p95_ms":
        noise = max(noise, bench.tail_uncertainty(base), bench.tail_uncertainty(cand))
    threshold = float(policy["max_degradation"])
    allowed = threshold + noise
    regression = -change if higher_better else change
    limit = -allowed if higher_better else allowed
    verdict = FAIL if regression > allowed else PASS
    text = f"{'≥' if higher_better else '≤'} {_pct(limit)} (incl. noise {noise:.1%})"
    gate.noise[metric] = noise
    gate.rows.append(Row(metric, b, c, change, text, verdict, bench.UNITS[metric], limit))
    if verdict == FAIL:
        gate.fail(f"{gate.candidate} in {gate.env}: {metric} {c:.4g} vs {b:.4g} "
                  f"({_pct(change)}, limit {_pct(limit)} = {threshold:.0%} + noise {noise:.1%})")


def _minimum_rows(gate: ModelGate, values: dict[str, float], policy: dict[str, Any],
                  metrics: Sequence[str]) -> None:
    minimums = policy.get("minimums") or {}
    for key, metric, at_most in MINIMUM_RULES:
        if key not in minimums or metric not in metrics or metric not in values:
            continue
        bound, value = float(minimums[key]), values[metric]
        ok = value <= bound if at_most else value >= bound
        threshold = f"{'≤' if at_most else '≥'} {bound:g} (policy minimums.{key})"
        gate.rows.append(Row(metric, None, value, None, threshold, PASS if ok else FAIL,
                             bench.UNITS.get(metric, ""), bound, "minimum"))
        if not ok:
            gate.fail(f"{gate.candidate} in {gate.env}: {metric} {value:.4g} does not meet "
                      f"minimums.{key} {bound:g}")


def _info_rows(gate: ModelGate, quality: dict[str, dict[str, Any]]) -> None:
    div = quality.get("divergence")
    if not div:
        return
    gate.rows.append(Row("kl_divergence", None, float(div["kl_mean"]), None,
                         "reported", INFO, "nats/token", None, ""))
    gate.rows.append(Row("top1_agreement", None, float(div["top1_agreement"]), None,
                         "reported", INFO, "", None, ""))


def _quality_judged(candidate: Subject, baseline: Subject, policy: dict[str, Any],
                    gate: ModelGate) -> bool:
    if candidate.quantization == baseline.quantization:
        gate.notes.append(f"quality reference: {baseline.label} (same quantization, "
                          f"{candidate.quantization})")
        return True
    if policy.get("compare_quality_across_quantization"):
        gate.notes.append(f"quality reference: {baseline.label}; cross-quantization "
                          f"({baseline.quantization} → {candidate.quantization}) compared because "
                          "gates.compare_quality_across_quantization is true")
        return True
    gate.notes.append(f"cross-quant: speed only. {baseline.quantization} → "
                      f"{candidate.quantization}: perplexity is not compared with "
                      f"{baseline.label} (gates.compare_quality_across_quantization is false); "
                      "the candidate is held to minimums.max_perplexity instead")
    return False


# --- the pair ------------------------------------------------------------------------------------


def gate_models(env: str, candidate: Subject, baseline: Subject | None,
                eval_set: bench.EvalSet, *, policy: dict[str, Any], cache: BenchCache,
                role: str = "version", timings: dict[str, float] | None = None) -> ModelGate:
    """Smoke-test, measure and judge `candidate` against `baseline` (None: new model)."""
    gate = ModelGate(env, candidate.ref.split("@")[0], role, candidate.ref,
                     baseline.ref if baseline else None, candidate.label,
                     baseline.label if baseline else None, eval_set.name, eval_set.sha256)
    settings = bench.settings_from(policy)
    clock = _Clock(timings if timings is not None else {})
    with clock("smoke"):
        baseline = _smoke_all(gate, candidate, baseline, settings)
    if gate.verdict == FAIL:
        return gate
    subjects = [s for s in (baseline, candidate) if s is not None]
    with _LoadedSides(subjects, eval_set, settings) as sides:
        with clock("quality"):
            quality = _quality(sides, eval_set, settings, cache, gate)
        with clock("speed"):
            _interleave(sides, bench.prompts_from(eval_set, settings.latency_prompts), settings)
    gate.quality = quality
    gate.samples = {"candidate" if s is sides[-1] else "baseline":
                    {m: s.speed.per_round(m) for m, _ in SPEED_METRICS} for s in sides}
    _judge(gate, sides, quality, policy, candidate=candidate, baseline=baseline)
    return gate


def _smoke_all(gate: ModelGate, candidate: Subject, baseline: Subject | None,
               settings: bench.Settings) -> Subject | None:
    """Smoke-test both (in parallel child processes); the baseline to compare with, if any."""
    subjects = [s for s in (candidate, baseline) if s is not None]
    with ThreadPoolExecutor(max_workers=len(subjects)) as pool:
        results = list(pool.map(lambda s: _smoke(s, settings), subjects))
    if not results[0].ok:
        gate.rows.append(Row("smoke_test", None, None, None, "loads, generates, finite", FAIL,
                             against=""))
        gate.fail(f"{candidate.ref} in {gate.env}: smoke test failed for {candidate.label}: "
                  f"{results[0].error}")
        return baseline
    if baseline is None or results[1].ok:
        return baseline
    gate.notes.append(f"baseline {baseline.label} failed its smoke test ({results[1].error}); "
                      "the candidate is held to the policy minimums instead")
    return None


def _judge(gate: ModelGate, sides: Sequence[_Side], quality: dict[str, dict[str, Any]],
           policy: dict[str, Any], *, candidate: Subject, baseline: Subject | None) -> None:
    cand_side = sides[-1]
    cand_ppl = float(quality["candidate"]["perplexity"])
    cand_speed = cand_side.speed.pooled()
    if baseline is None:
        gate.notes.append("new model in this environment (no baseline): held to policy minimums")
        _minimum_rows(gate, {"perplexity": cand_ppl, **cand_speed}, policy,
                      [r[1] for r in MINIMUM_RULES])
        return
    judged = _quality_judged(candidate, baseline, policy, gate)
    _quality_row(gate, float(quality["baseline"]["perplexity"]), cand_ppl, policy, judged)
    if not judged:
        _minimum_rows(gate, {"perplexity": cand_ppl}, policy, ["perplexity"])
    _info_rows(gate, quality)
    for metric, higher_better in SPEED_METRICS:
        _speed_row(gate, metric, higher_better, base=sides[0].speed, cand=cand_side.speed,
                   policy=policy)


class _Clock:
    """Adds the wall time of `with clock(phase):` blocks into a dict."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, phase: str) -> _Phase:
        return _Phase(self.timings, phase)


class _Phase:
    def __init__(self, timings: dict[str, float], phase: str) -> None:
        self.timings, self.phase, self.start = timings, phase, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.timings[self.phase] = self.timings.get(self.phase, 0.0) + elapsed


class _LoadedSides:
    """Load every subject (baseline first) and close them all on exit."""

    def __init__(self, subjects: Sequence[Subject], eval_set: bench.EvalSet,
                 settings: bench.Settings) -> None:
        self.subjects, self.eval_set, self.settings = subjects, eval_set, settings
        self.sides: list[_Side] = []

    def __enter__(self) -> list[_Side]:
        try:
            for subject in self.subjects:
                model = llm.load(subject.path, n_ctx=self.settings.n_ctx,
                                 n_threads=self.settings.threads)
                self.sides.append(_Side(subject, model, []))
                self.sides[-1].tokens = bench.eval_tokens(model, self.eval_set, self.settings)
        except BaseException:
            self.__exit__()
            raise
        return self.sides

    def __exit__(self, *exc: object) -> None:
        for side in self.sides:
            side.model.close()


# --- the whole run ---------------------------------------------------------------------------


def run_gates(registry: Registry, plan: GatePlan, store_root: Path, cache: BenchCache, *,
              threads: int | None = None) -> GateReport:
    """Fetch, smoke-test, measure and judge every job of `plan` (`threads` overrides policy)."""
    from ggufops import pull

    timings: dict[str, float] = {}
    clock = _Clock(timings)
    remote = pull.lazy_remote(registry.root)
    gates = []
    for job in plan.jobs:
        policy = _with_threads(bench.gate_policy(registry.policy(), job.env), threads)
        cand_doc = registry.load_ref(job.candidate)
        base_doc = registry.load_ref(job.baseline) if job.baseline else None
        eval_set = bench.load_eval_set(registry.root, cand_doc)
        with clock("fetch"):
            cand_path = pull.pull_doc(cand_doc, str(job.candidate), store_root, remote,
                                      progress=False)
            base_path = (pull.pull_doc(base_doc, str(job.baseline), store_root, remote,
                                       progress=False) if base_doc else None)
        candidate = Subject.of(cand_doc, cand_path)
        baseline = Subject.of(base_doc, base_path) if base_doc and base_path else None
        gate = gate_models(job.env, candidate, baseline, eval_set, policy=policy, cache=cache,
                           role=job.role, timings=timings)
        if base_doc and base_doc.get("eval", {}).get("set") != eval_set.name:
            gate.notes.append(f"baseline pins eval set {base_doc['eval']['set']}; both were "
                              f"measured on the candidate's {eval_set.name}")
        gates.append(gate)
    settings = bench.settings_from(_with_threads(bench.gate_policy(registry.policy()), threads))
    return GateReport(plan.base, plan.base_sha, gates, bench.provenance(settings), timings)


def _with_threads(policy: dict[str, Any], threads: int | None) -> dict[str, Any]:
    return {**policy, "threads": threads} if threads else policy


def check(report: GateReport) -> None:
    """Raise GateFailed (exit 1) with the one-line summary if any gate failed."""
    if not report.passed:
        raise GateFailed(report.summary())
