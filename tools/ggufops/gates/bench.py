"""`ggufops bench`: measure one model version on its pinned eval set.

What is measured (see llm.py for how):
  perplexity, nll          quality on the eval set, deterministic, cached
  pp_tokens_per_s          prompt processing, llama-bench pp (median over runs)
  tg_tokens_per_s          generation, llama-bench tg (median over runs)
  latency_p50_ms, _p95_ms  whole requests (tokenize + prompt + greedy tokens)
  load_ms                  llama.cpp load time in this process
  peak_rss_mb              peak RSS of a child process that loads the model and generates

Every figure comes with what it depends on (artifact and eval sha256, llama-cpp-python and
llama.cpp versions, CPU model, threads), so numbers from different machines are never
mixed up. Settings come from `gates` in registry/policy.yaml.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.artifacts import pull
from ggufops.atomic import atomic_write_text
from ggufops.errors import BenchError, EvalSetError
from ggufops.gates.cache import BenchCache
from ggufops.llama import llm
from ggufops.percentile import interpolated
from ggufops.registry import schemas
from ggufops.registry.records import VersionRecord
from ggufops.registry.registry import EVALS_DIR, Registry, VersionRef, version_relpath

METRICS = ("perplexity", "nll", "pp_tokens_per_s", "tg_tokens_per_s", "latency_p50_ms",
           "latency_p95_ms", "load_ms", "peak_rss_mb")
PROMPT_BYTES = 96


@dataclass(frozen=True)
class Settings:
    """How to measure; every field can be set in policy.yaml `gates` (or `gates.speed`)."""

    eval_tokens: int = 4096  # at most; fewer for big models (eval_param_tokens)
    eval_ctx: int = 512
    eval_param_tokens: float = 1.5e11  # parameters x tokens one model may spend on quality
    threads: int | None = None  # speed: None is every core this job may use
    rounds: int = 3  # speed: at least this many rounds ...
    max_rounds: int = 12  # ... and at most this many, while the verdict is unclear
    time_budget_s: float = 60.0  # per model change; extra speed rounds stop within it
    pp_tokens: int = 512
    tg_tokens: int = 64
    repetitions: int = 4
    latency_prompts: int = 4
    latency_max_tokens: int = 16
    run_seconds: float = 0.05  # a speed run repeats its work until it takes about this long
    smoke_tokens: int = 16

    @property
    def n_threads(self) -> int:
        """llama.cpp threads: the policy's, else every core this process may run on."""
        return self.threads or llm.default_threads()

    @property
    def quality_threads(self) -> int:
        """Threads for the quality pass: every core, whatever `threads` says. Its figures do
        not depend on the thread count (bit-identical at 1 and 2 threads on SmolLM2-135M),
        so only the speed runs are pinned by `threads`."""
        return llm.default_threads()

    @property
    def n_ctx(self) -> int:
        """Context to load models with: room for a perplexity chunk and every speed run."""
        return max(self.eval_ctx, self.pp_tokens, self.tg_tokens + 8,
                   PROMPT_BYTES + self.latency_max_tokens + 8)

    def eval_token_count(self, n_params: int) -> int:
        """Eval tokens for a model of `n_params` parameters: at most eval_tokens and at most
        eval_param_tokens / n_params, in whole chunks of eval_ctx, never less than one.

        It depends only on the model, never on how busy the machine is, so quality stays
        deterministic (and cacheable): 4,096 tokens for a toy, 1,024 for a 135M model, one
        chunk for 8B."""
        by_size = int(self.eval_param_tokens // max(n_params, 1))
        tokens = min(self.eval_tokens, by_size) // self.eval_ctx * self.eval_ctx
        return max(self.eval_ctx, tokens)


def gate_policy(policy: dict[str, Any], env: str | None = None) -> dict[str, Any]:
    """policy.yaml `gates.default`, overridden key by key by `gates.environments[env]`."""
    gates = policy.get("gates") or {}
    merged = dict(gates.get("default") or {})
    override = ((gates.get("environments") or {}).get(env) or {}) if env else {}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def settings_from(gate: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    flat = {k: v for k, v in gate.items() if k in known}
    flat.update({k: v for k, v in (gate.get("speed") or {}).items() if k in known})
    return Settings(**flat)


# --- eval sets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    sha256: str
    text: bytes

    @classmethod
    def read(cls, name: str, path: Path) -> EvalSet:
        """The eval set in `path`, with the sha256 of its bytes."""
        text = path.read_bytes()
        return cls(name, path, hashlib.sha256(text).hexdigest(), text)


def load_eval_set(root: Path, doc: dict[str, Any]) -> EvalSet:
    """The version's pinned eval set, verified against its sha256; EvalSetError if not."""
    pinned = doc.get("eval") or {}
    name, want = str(pinned.get("set", "")), str(pinned.get("sha256", ""))
    where = version_relpath(str(doc.get("name")), str(doc.get("version")))
    path = root / EVALS_DIR / f"{name}.txt"
    if not name or not path.is_file():
        raise EvalSetError(
            f"eval set {name or '(none)'!r} pinned by {where} is missing ({EVALS_DIR}/{name}.txt); "
            "restore the file from git: eval sets are immutable"
        )
    found = EvalSet.read(name, path)
    if found.sha256 != want:
        raise EvalSetError(
            f"{EVALS_DIR}/{name}.txt has sha256 {found.sha256[:12]}…, but {where} pins "
            f"{want[:12]}…; restore the original file (eval sets are immutable) or add a new "
            "eval set"
        )
    return found


def prompts_from(eval_set: EvalSet, count: int) -> list[bytes]:
    """`count` fixed prompts: evenly spaced non-empty lines of the eval text."""
    lines = [ln.strip()[:PROMPT_BYTES] for ln in eval_set.text.splitlines() if ln.strip()]
    if not lines:
        raise EvalSetError(f"{eval_set.path} has no text to cut prompts from")
    step = max(1, len(lines) // count)
    chosen = [lines[(i * step) % len(lines)] for i in range(count)]
    return [p.decode("utf-8", errors="ignore").encode() for p in chosen]


def eval_tokens(model: llm.Model, eval_set: EvalSet, settings: Settings,
                count: int | None = None) -> list[int]:
    """The first whole chunks of the eval set's tokens: at most `count` (default: what
    settings.eval_token_count gives this model)."""
    tokens = llm.tokenize(model, eval_set.text)
    wanted = count or settings.eval_token_count(llm.n_params(model))
    usable = min(len(tokens), wanted) // settings.eval_ctx * settings.eval_ctx
    if not usable:
        raise EvalSetError(
            f"eval set {eval_set.name} has {len(tokens)} tokens for {model.path.name}, fewer "
            f"than one chunk of eval_ctx={settings.eval_ctx}; lower gates.eval_ctx in policy.yaml"
        )
    return tokens[:usable]


# --- measurements ---------------------------------------------------------------------------


def provenance(settings: Settings) -> dict[str, Any]:
    v = llm.versions()
    return {"llama_cpp_python": v["llama_cpp_python"], "llama_cpp": v["llama_cpp"],
            "cpu": llm.cpu_model(), "threads": settings.n_threads}


def quality_key(artifact_sha256: str, eval_set: EvalSet, settings: Settings,
                n_tokens: int) -> dict[str, Any]:
    """What a quality result depends on; `n_tokens`: the eval tokens actually scored over.
    Not the thread count: quality runs on every core (Settings.quality_threads)."""
    versions = {k: v for k, v in provenance(settings).items() if k != "threads"}
    return {"artifact_sha256": artifact_sha256, "eval_sha256": eval_set.sha256,
            "eval_tokens": n_tokens, "eval_ctx": settings.eval_ctx, **versions}


def measure_quality(model: llm.Model, tokens: Sequence[int], settings: Settings) -> dict[str, Any]:
    result = llm.perplexity(model, tokens, n_ctx=settings.eval_ctx)
    return asdict(result)


def cached_quality(cache: BenchCache, key: dict[str, Any],
                   measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(result, came from cache)."""
    hit = cache.get("quality", key)
    if hit is not None:
        return hit, True
    value = measure()
    cache.put("quality", key, value)
    return value, False


@dataclass
class SpeedSamples:
    """One model's speed samples, by round: [round][repetition] (latency: [round][prompt])."""

    pp: list[list[float]] = field(default_factory=list)  # tokens/s
    tg: list[list[float]] = field(default_factory=list)  # tokens/s
    latency: list[list[float]] = field(default_factory=list)  # ms per request

    def start_round(self) -> None:
        self.pp.append([])
        self.tg.append([])
        self.latency.append([])

    def pooled(self) -> dict[str, float]:
        """The figures: medians (pp, tg) and percentiles (latency) over every sample."""
        lat = [x for r in self.latency for x in r]
        return {
            "pp_tokens_per_s": llm.median([x for r in self.pp for x in r]),
            "tg_tokens_per_s": llm.median([x for r in self.tg for x in r]),
            "latency_p50_ms": interpolated(lat, 50),
            "latency_p95_ms": interpolated(lat, 95),
        }


def warm_up(model: llm.Model, tokens: Sequence[int], prompts: Sequence[bytes]) -> None:
    """One untimed pass of every kind of work, as llama-bench does before measuring."""
    llm.prompt_tokens_per_s(model, list(tokens[:64]))
    llm.generation_tokens_per_s(model, 4)
    llm.request_latency_ms(model, prompts[0], 2)


def measure_round(models: Sequence[llm.Model], tokens: Sequence[Sequence[int]],
                  prompts: Sequence[bytes], settings: Settings,
                  out: Sequence[SpeedSamples]) -> None:
    """One round for every model, interleaved finely: each pp run, tg run and request is done
    for every model back to back, and which model goes first alternates from one to the next
    (and from round to round), so the models share whatever the machine is doing."""
    for samples in out:
        samples.start_round()
    flip = len(out[0].pp) % 2
    forward = list(range(len(models)))
    backward = forward[::-1]
    for rep in range(settings.repetitions):
        order = forward if (rep + flip) % 2 == 0 else backward
        for i in order:
            pp_input = list(tokens[i][: settings.pp_tokens])
            out[i].pp[-1].append(llm.prompt_tokens_per_s(models[i], pp_input))
        for i in order:
            out[i].tg[-1].append(llm.generation_tokens_per_s(models[i], settings.tg_tokens))
    for n, prompt in enumerate(prompts):
        for i in forward if (n + flip) % 2 == 0 else backward:
            out[i].latency[-1].append(
                llm.request_latency_ms(models[i], prompt, settings.latency_max_tokens))


def measure_speed(models: Sequence[llm.Model], tokens: Sequence[Sequence[int]],
                  prompts: Sequence[bytes], settings: Settings) -> list[SpeedSamples]:
    """Warm up, then `rounds` interleaved rounds; one SpeedSamples per model.

    Python's garbage collector is off while measuring (as timeit does): its pauses come at
    regular allocation counts and would otherwise land on one model more than the other.
    """
    for model, toks in zip(models, tokens, strict=True):
        warm_up(model, toks, prompts)
    out = [SpeedSamples() for _ in models]
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(settings.rounds):
            measure_round(models, tokens, prompts, settings, out)
    finally:
        if was_enabled:
            gc.enable()
    return out





# --- one version ----------------------------------------------------------------------------


@dataclass
class BenchResult:
    ref: str
    display_id: str
    artifact_sha256: str
    eval_set: str
    eval_sha256: str
    metrics: dict[str, float]
    provenance: dict[str, Any]
    settings: dict[str, Any]
    quality_cached: bool
    n_scored: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_file(path: Path, artifact_sha256: str, eval_set: EvalSet, settings: Settings,
               cache: BenchCache, *, label: str) -> tuple[dict[str, float], bool, int]:
    """(metrics, quality came from cache, tokens scored) for one GGUF file."""
    smoke = llm.smoke_test_isolated(path, n_tokens=settings.smoke_tokens,
                                    n_threads=settings.n_threads, n_ctx=settings.n_ctx)
    llm.require_smoke(label, smoke)
    with llm.load(path, n_ctx=settings.n_ctx, n_threads=settings.n_threads) as model:
        tokens = eval_tokens(model, eval_set, settings)
        key = quality_key(artifact_sha256, eval_set, settings, len(tokens))
        quality, cached = cached_quality(cache, key,
                                         lambda: measure_quality(model, tokens, settings))
        prompts = prompts_from(eval_set, settings.latency_prompts)
        speed = measure_speed([model], [tokens], prompts, settings)[0]
        metrics = {"perplexity": quality["perplexity"], "nll": quality["nll"],
                   **speed.pooled(), "load_ms": model.load_ms,
                   "peak_rss_mb": smoke.peak_rss_mb}
    return rounded(metrics), cached, int(quality["n_scored"])


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    digits = {"perplexity": 4, "nll": 5}
    return {k: round(float(v), digits.get(k, 2)) for k, v in metrics.items()}


def bench_version(registry: Registry, ref: VersionRef, store_root: Path, settings: Settings,
                  cache: BenchCache) -> BenchResult:
    """Pull the verified artifact of `ref` and measure it on its pinned eval set."""

    doc = registry.load_ref(ref)
    eval_set = load_eval_set(registry.root, doc)
    path = pull.pull_doc(doc, str(ref), store_root, pull.lazy_remote(registry.root),
                         progress=False)
    record = VersionRecord.from_doc(doc)
    metrics, cached, n_scored = bench_file(path, record.artifact.sha256, eval_set, settings,
                                           cache, label=record.display_id)
    return BenchResult(
        ref=str(ref), display_id=record.display_id, artifact_sha256=record.artifact.sha256,
        eval_set=eval_set.name, eval_sha256=eval_set.sha256, metrics=metrics,
        provenance=provenance(settings), settings=asdict(settings), quality_cached=cached,
        n_scored=n_scored,
    )


# --- record into the version file -------------------------------------------------------------


def benchmarks_block(result: BenchResult) -> dict[str, Any]:
    """The `benchmarks:` mapping of a version file."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return {
        "eval_sha256": result.eval_sha256,
        **{k: result.provenance[k] for k in ("llama_cpp_python", "llama_cpp", "cpu", "threads")},
        "measured_at": now.isoformat().replace("+00:00", "Z"),
        "metrics": dict(result.metrics),
    }


def record(registry: Registry, ref: VersionRef, result: BenchResult) -> Path:
    """Write `benchmarks:` into the version file, only while it is not on the default branch."""
    path = registry.version_file(ref.name, ref.version)
    rel = version_relpath(ref.name, ref.version)
    branch = git.default_branch(registry.root)
    if branch and git.ls_tree(registry.root, branch, [rel]):
        raise BenchError(
            f"{rel} is already on {branch}: version files are immutable once merged; record "
            "benchmarks before merging, or register a new version"
        )
    text = _without_benchmarks(path.read_text())
    block = yamlio.dump({"benchmarks": benchmarks_block(result)})
    new_text = text.rstrip("\n") + "\n" + block
    _check_version_doc(registry.root, path, new_text)
    atomic_write_text(path, new_text)
    return path


def _without_benchmarks(text: str) -> str:
    """The version file's text minus an existing top-level `benchmarks:` block."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    skipping = False
    for line in lines:
        top_level = bool(line.strip()) and not line[0].isspace() and not line.startswith("#")
        if top_level:
            skipping = line.startswith("benchmarks:")
        if not skipping:
            out.append(line)
    return "".join(out)


def _check_version_doc(root: Path, path: Path, text: str) -> None:

    data = yamlio.parse(text, path).data
    issues = schemas.check(schemas.load_validators(root)["model-version"], data)
    if issues:
        first = issues[0]
        raise BenchError(f"{path}: recording would make it invalid: {first.message}")


# --- DVC metrics ---------------------------------------------------------------------------


def write_metrics(metrics_dir: Path, model: str, result: BenchResult) -> Path:
    """metrics/<model>.json: the numbers DVC shows (`dvc metrics show` / `diff`)."""
    path = metrics_dir / f"{model}.json"
    body = {"version": result.ref.split("@", 1)[1], **result.metrics}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")
    return path


def bench_environment(registry: Registry, env: str, store_root: Path, settings: Settings,
                      cache: BenchCache) -> list[BenchResult]:
    """Bench every version that `env` runs, in model-name order."""
    deployed = registry.deployed(env)
    return [bench_version(registry, VersionRef(m, v), store_root, settings, cache)
            for m, v in sorted(deployed.items())]


# --- text output ---------------------------------------------------------------------------


UNITS = {"perplexity": "", "nll": "nats/token", "pp_tokens_per_s": "tokens/s",
         "tg_tokens_per_s": "tokens/s", "latency_p50_ms": "ms", "latency_p95_ms": "ms",
         "load_ms": "ms", "peak_rss_mb": "MB"}


def format_result(result: BenchResult) -> str:
    """A plain-text table of one result, with its provenance."""
    p = result.provenance
    lines = [f"{result.display_id}  ({result.ref}, sha256 {result.artifact_sha256[:12]}…)",
             f"eval set {result.eval_set} (sha256 {result.eval_sha256[:12]}…), "
             f"{result.n_scored} tokens scored"
             + (" (quality from cache)" if result.quality_cached else "")]
    for name in METRICS:
        if name in result.metrics:
            lines.append(f"  {name:<18}{_fmt(name, result.metrics[name]):>12}  {UNITS[name]}")
    lines.append(f"llama-cpp-python {p['llama_cpp_python']}, llama.cpp {p['llama_cpp']}, "
                 f"{p['cpu']}, {p['threads']} thread(s)")
    return "\n".join(lines)


def _fmt(name: str, value: float) -> str:
    if name.endswith("_per_s"):
        return f"{value:,.0f}"
    return f"{value:.4f}" if name in ("perplexity", "nll") else f"{value:,.2f}"


def with_threads(settings: Settings, threads: int | None) -> Settings:
    return replace(settings, threads=threads) if threads else settings
