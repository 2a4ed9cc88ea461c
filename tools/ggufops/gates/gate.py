"""`ggufops gate`: block a change that makes a model worse than the one it replaces.

1. plan    which (environment, model) pairs change between a base ref and the work tree:
           the candidate is the version the work tree names, the baseline the version
           the environment ran at the base ref (none: a new model, held to policy minimums);
           and the policy to judge with: the base's, never the change's own (gatepolicy.py);
2. fetch   both artifacts, verified, into the local store (pull.pull_doc);
3. smoke   each file in a child process: it loads, generates, its logits are finite
           (a file that makes llama.cpp abort fails here; the gate process survives);
4. quality on the candidate's pinned eval set, per token (perplexity, KL divergence, top-1
           agreement, from one pass) or per byte when the tokenizer or architecture
           differs; the rule depends on the quantizations (gatequality.py); cached;
5. speed   paired runs in rounds, each round on fresh loads, until every metric's
           confidence interval is clearly inside or beyond the limit (gatespeed.py,
           speedstats.py), or the rounds or the time budget run out.

Each model change has a time budget (gates.time_budget_s): quality is sized to the model,
not to the clock, and only the extra speed rounds stop for it. A pair of artifacts is
measured once per run and judged again for every environment it appears in.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.artifacts import pull
from ggufops.errors import GateFailed, GitError
from ggufops.gates import bench
from ggufops.gates import policy as gatepolicy
from ggufops.gates import quality as gatequality
from ggufops.gates import speed as gatespeed
from ggufops.gates.cache import BenchCache
from ggufops.gates.result import (
    FAIL,
    INFO,
    PASS,
    GateReport,
    ModelGate,
    Row,
    SelfChanges,
    Subject,
)
from ggufops.llama import llm
from ggufops.registry.records import NO_ENTRY, EnvEntry, environment_in
from ggufops.registry.registry import (
    ENVIRONMENTS_DIR,
    Registry,
    VersionRef,
)

__all__ = ["FAIL", "INFO", "PASS", "GateJob", "GatePlan", "GateReport", "ModelGate",
           "PairMeasurement", "Row", "SelfChanges", "Subject", "check", "gate_models",
           "judge_pair", "measure_pair", "plan_gates", "resolve_base", "run_gates"]


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
    policy: dict[str, Any] = field(default_factory=dict)  # the policy that judges: the base's
    policy_source: str = ""
    self_changes: SelfChanges | None = None


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


def environments_at(root: Path, sha: str | None) -> dict[str, dict[str, EnvEntry]]:
    """env -> model -> entry, as the environment files were at commit `sha`."""
    if sha is None:
        return {}
    files = git.read_tree_files(root, sha, [ENVIRONMENTS_DIR])
    result = {}
    for path, raw in files.items():
        if path.endswith(".yaml") and path.count("/") == 1:
            result[Path(path).stem] = environment_in(raw, f"{sha[:12]}:{path}").models
    return result


def _jobs_for(env: str, now: dict[str, EnvEntry],
              before: dict[str, EnvEntry]) -> Iterator[GateJob]:
    for model in sorted(now):
        entry, old = now[model], before.get(model, NO_ENTRY)
        old_version = old.version or None
        baseline = VersionRef(model, old_version) if old_version else None
        if entry.version != old_version:
            yield GateJob(env, model, VersionRef(model, entry.version), baseline)
        canary, old_canary = entry.canary_version, old.canary_version
        if canary and canary != old_canary:
            yield GateJob(env, model, VersionRef(model, canary), baseline, "canary")


def plan_gates(registry: Registry, base: str | None = None, env: str | None = None) -> GatePlan:
    """Every (environment, model) whose version or canary changes since the base ref."""
    description, sha = resolve_base(registry.root, base)
    before = environments_at(registry.root, sha)
    envs = [env] if env else registry.environments()
    jobs: list[GateJob] = []
    for name in envs:
        now = registry.environment_record(name).models
        jobs.extend(_jobs_for(name, now, before.get(name, {})))
    head_policy = registry.policy()
    policy, source = gatepolicy.judging_policy(registry.root, sha, head_policy)
    changes = gatepolicy.self_changes(registry.root, sha, policy, head_policy)
    return GatePlan(description, sha, jobs, policy, source, changes)


# --- measuring one pair -----------------------------------------------------------------------


@dataclass
class PairMeasurement:
    """Everything measured for one (candidate, baseline) pair; judged per environment."""

    candidate: Subject
    baseline: Subject | None  # None: a new model, or a baseline that failed its smoke test
    settings: bench.Settings
    smoke_error: str = ""  # the candidate's smoke failure
    notes: list[str] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    speed: gatespeed.PairedSpeed | None = None
    single_speed: bench.SpeedSamples | None = None  # a new model: for the minimums
    bytes_per_token: tuple[float, float] | None = None  # per byte: (baseline, candidate)
    timings: dict[str, float] = field(default_factory=dict)
    load_average: float = 0.0  # of the machine when speed was measured

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())


def measure_pair(candidate: Subject, baseline: Subject | None, eval_set: bench.EvalSet, *,
                 policy: dict[str, Any], cache: BenchCache) -> PairMeasurement:
    """Smoke-test, then measure quality and speed of `candidate` against `baseline`."""
    settings = bench.settings_from(policy)
    deadline = time.monotonic() + settings.time_budget_s
    result = PairMeasurement(candidate, baseline, settings)
    clock = _Clock(result.timings)
    with clock("smoke"):
        _smoke_all(result)
    if result.smoke_error:
        return result
    subjects = [s for s in (result.baseline, candidate) if s is not None]
    prompts = bench.prompts_from(eval_set, settings.latency_prompts)
    timed_here = len(subjects) == 1 and _speed_minimums(policy)  # else speed loads afresh
    threads = settings.n_threads if timed_here else settings.quality_threads
    with clock("load"), LoadedSides(subjects, eval_set, settings, threads) as sides:
        clock.switch("quality")
        result.quality = gatequality.measure(sides, eval_set, settings, cache)
        if timed_here:
            clock.switch("speed")
            result.single_speed = bench.measure_speed([sides[0].model], [sides[0].tokens],
                                                      prompts, settings)[0]
        elif result.quality["per"] == gatequality.PER_BYTE:
            result.bytes_per_token = (len(eval_set.text) / len(sides[0].tokens),
                                      len(eval_set.text) / len(sides[1].tokens))
        tokens = [s.tokens for s in sides]
    if len(subjects) == 2 and not quality_blocks(result, policy):
        rules = gatespeed.SpeedRules.from_policy(policy, result.bytes_per_token)
        result.load_average = os.getloadavg()[0]
        with clock("speed"):
            result.speed = gatespeed.measure(subjects, tokens, prompts, settings,
                                             deadline=deadline, is_clear=rules.clear)
    return result


def quality_blocks(measured: PairMeasurement, policy: dict[str, Any]) -> bool:
    """Whether quality alone fails the pair under `policy`: then speed is not measured (the
    change is blocked either way, and the time budget is not spent on it)."""
    if measured.baseline is None:
        return False
    scratch = ModelGate("", "", "", "", None)
    rule = gatequality.choose_rule(measured.candidate, measured.baseline,
                                   measured.quality["per"], str(measured.quality.get("why", "")),
                                   policy)
    gatequality.judge(scratch, rule, measured.quality, policy)
    return scratch.verdict == FAIL


def _speed_minimums(policy: dict[str, Any]) -> bool:
    """Whether a new model's speed matters: the policy has a minimum for it."""
    named = set(policy.get("minimums") or {})
    return bool(named & {k for k, m, _ in gatequality.MINIMUM_RULES if m != "perplexity"})


def _smoke_all(result: PairMeasurement) -> None:
    """Smoke-test both in parallel child processes; a broken baseline is dropped (noted)."""
    subjects = [s for s in (result.candidate, result.baseline) if s is not None]
    settings = result.settings
    threads = max(1, settings.n_threads // len(subjects))  # they run side by side
    with ThreadPoolExecutor(max_workers=len(subjects)) as pool:
        smokes = list(pool.map(lambda s: llm.smoke_test_isolated(
            s.path, n_tokens=settings.smoke_tokens, n_threads=threads,
            n_ctx=settings.n_ctx, chat_template=s.chat_template), subjects))
    if not smokes[0].ok:
        result.smoke_error = smokes[0].error
    elif result.baseline is not None and not smokes[1].ok:
        result.notes.append(f"baseline {result.baseline.label} failed its smoke test "
                            f"({smokes[1].error}); the candidate is held to the policy "
                            "minimums instead")
        result.baseline = None


# --- judging one pair ------------------------------------------------------------------------


def judge_pair(env: str, role: str, measured: PairMeasurement, eval_set: bench.EvalSet, *,
               policy: dict[str, Any], baseline: Subject | None = None) -> ModelGate:
    """The verdict for `env` under its `policy`, from a pair measured once."""
    cand = measured.candidate
    base = baseline if baseline is not None else measured.baseline
    gate = ModelGate(env, cand.ref.split("@")[0], role, cand.ref,
                     base.ref if base else None, cand.label, base.label if base else None,
                     eval_set.name, eval_set.sha256, notes=list(measured.notes),
                     timings_s=dict(measured.timings),
                     time_budget_s=measured.settings.time_budget_s)
    if measured.smoke_error:
        gate.rows.append(Row("smoke_test", None, None, None, "loads, generates, finite", FAIL,
                             against=""))
        gate.fail(f"{cand.ref} in {env}: smoke test failed for {cand.label}: "
                  f"{measured.smoke_error}")
        return gate
    gate.quality = measured.quality
    if measured.baseline is None:
        _judge_new(gate, measured, policy)
    else:
        _judge_against(gate, measured, measured.baseline, policy)
    _budget_note(gate, measured)
    return gate


def _judge_new(gate: ModelGate, measured: PairMeasurement, policy: dict[str, Any]) -> None:
    if gate.baseline is None:
        gate.notes.append("new model in this environment (no baseline): held to policy "
                          "minimums")
    speed = measured.single_speed.pooled() if measured.single_speed else {}
    values = {"perplexity": float(measured.quality["candidate"]["perplexity"]), **speed}
    gatequality.minimum_rows(gate, values, policy, [r[1] for r in gatequality.MINIMUM_RULES])


def _judge_against(gate: ModelGate, measured: PairMeasurement, baseline: Subject,
                   policy: dict[str, Any]) -> None:
    quality = measured.quality
    rule = gatequality.choose_rule(measured.candidate, baseline, quality["per"],
                                   str(quality.get("why", "")), policy)
    gate.notes.insert(0, f"quality reference: {baseline.label}, rule: {rule.name}")
    gatequality.judge(gate, rule, quality, policy)
    speed = measured.speed
    if speed is None:
        gate.notes.append("speed not measured: quality already blocks this change")
        return
    rules = gatespeed.SpeedRules.from_policy(policy, measured.bytes_per_token)
    gatespeed.judge(gate, speed, rules)
    gate.speed = gatespeed.summary(speed, rules, measured.settings)
    gate.samples = {side: getattr(speed, side) for side in ("baseline", "candidate")}
    _busy_note(gate, measured)
    if measured.bytes_per_token is not None:
        gate.notes.append("speed per byte: tokens/s times each tokenizer's bytes per token on "
                          "the eval set; request latency is reported, not compared (a request "
                          "makes a fixed number of tokens, which differ in bytes)")


def _busy_note(gate: ModelGate, measured: PairMeasurement) -> None:
    """Say so when other work on the machine stretched wall-timed runs."""
    threads = measured.settings.n_threads
    if threads > 1 and measured.load_average >= llm.default_threads():
        gate.notes.append(
            f"the machine was busy (load average {measured.load_average:.1f} on "
            f"{llm.default_threads()} cores) while speed was timed by wall time with {threads} "
            "threads: other work stretches every run, so verdicts need more rounds and may "
            "stay inconclusive; with gates.threads: 1 each run is timed by its own CPU clock")


def _budget_note(gate: ModelGate, measured: PairMeasurement) -> None:
    budget = measured.settings.time_budget_s
    if measured.seconds > budget:
        gate.warn(f"measuring took {measured.seconds:.0f} s, over the time budget of "
                  f"{budget:g} s (gates.time_budget_s): the smoke tests, quality (sized "
                  "to the model, not to the clock) and two speed rounds always run")


def gate_models(env: str, candidate: Subject, baseline: Subject | None,
                eval_set: bench.EvalSet, *, policy: dict[str, Any], cache: BenchCache,
                role: str = "version", timings: dict[str, float] | None = None) -> ModelGate:
    """Smoke-test, measure and judge `candidate` against `baseline` (None: new model)."""
    measured = measure_pair(candidate, baseline, eval_set, policy=policy, cache=cache)
    if timings is not None:
        for phase, seconds in measured.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    return judge_pair(env, role, measured, eval_set, policy=policy, baseline=baseline)


class _Clock:
    """Adds the wall time of `with clock(phase):` blocks into a dict; `switch` moves the
    rest of a block to another phase."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.phase, self.start = "", 0.0

    def __call__(self, phase: str) -> _Clock:
        self.phase = phase
        return self

    def switch(self, phase: str) -> None:
        self._add()
        self.phase = phase

    def _add(self) -> None:
        now = time.perf_counter()
        self.timings[self.phase] = self.timings.get(self.phase, 0.0) + now - self.start
        self.start = now

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._add()


class LoadedSides:
    """Load every subject (baseline first, on `threads`) with its eval tokens; close them all
    on exit. Public because bench/bench_gate.py times the quality passes on the same loads."""

    def __init__(self, subjects: Sequence[Subject], eval_set: bench.EvalSet,
                 settings: bench.Settings, threads: int) -> None:
        self.subjects, self.eval_set, self.settings = subjects, eval_set, settings
        self.threads = threads
        self.sides: list[gatequality.Side] = []

    def __enter__(self) -> list[gatequality.Side]:
        try:
            for subject in self.subjects:
                model = llm.load(subject.path, n_ctx=self.settings.n_ctx,
                                 n_threads=self.threads)
                self.sides.append(gatequality.Side(subject, model, []))
                self.sides[-1].tokens = llm.tokenize(model, self.eval_set.text)
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

    timings: dict[str, float] = {}
    clock = _Clock(timings)
    remote = pull.lazy_remote(registry.root)
    policy_all = plan.policy or registry.policy()
    measured: dict[tuple[Any, ...], tuple[str, PairMeasurement]] = {}
    gates = []
    for job in plan.jobs:
        policy = _with_threads(bench.gate_policy(policy_all, job.env), threads)
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
        key = (candidate.sha256, baseline.sha256 if baseline else None, eval_set.sha256,
               bench.settings_from(policy))
        if key in measured and (measured[key][1].speed is not None or
                                quality_blocks(measured[key][1], policy)):
            first_env, pair = measured[key]
            gate = judge_pair(job.env, job.role, pair, eval_set, policy=policy, baseline=baseline)
            gate.notes.append(f"measured once in this run (for {first_env}) and judged again "
                              f"with {job.env}'s policy")
            gate.timings_s = {}
        else:
            pair = measure_pair(candidate, baseline, eval_set, policy=policy, cache=cache)
            measured[key] = (job.env, pair)
            for phase, seconds in pair.timings.items():
                timings[phase] = timings.get(phase, 0.0) + seconds
            gate = judge_pair(job.env, job.role, pair, eval_set, policy=policy, baseline=baseline)
        if base_doc and base_doc.get("eval", {}).get("set") != eval_set.name:
            gate.notes.append(f"baseline pins eval set {base_doc['eval']['set']}; both were "
                              f"measured on the candidate's {eval_set.name}")
        gates.append(gate)
    settings = bench.settings_from(_with_threads(bench.gate_policy(policy_all), threads))
    return GateReport(plan.base, plan.base_sha, gates, bench.provenance(settings), timings,
                      plan.policy_source, plan.self_changes)


def _with_threads(policy: dict[str, Any], threads: int | None) -> dict[str, Any]:
    return {**policy, "threads": threads} if threads else policy


def check(report: GateReport) -> None:
    """Raise GateFailed (exit 1) with the one-line summary if any gate failed."""
    if not report.passed:
        raise GateFailed(report.summary())
