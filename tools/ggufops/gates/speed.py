"""The gate's speed half: paired runs in rounds until the verdict is clear, then judged.

Each round loads both models afresh (which one loads first alternates), warms them up and
makes `repetitions` pairs of runs of each kind, candidate and baseline back to back, with
the one that goes first alternating from pair to pair:

  pp_tokens_per_s  prompt processing: a batch of P prompt tokens (llama-bench pp)
  tg_tokens_per_s  generation: G single-token decodes from an empty context (llama-bench tg)
  latency_ms       a whole request: a prompt cut from the eval set, then greedy tokens

A run repeats its work until it takes about `run_seconds` and keeps the fastest repeat,
as timeit does: on a shared machine preemption only ever adds time, so the best of a few
repeats is the steadiest estimate of what the model costs. P and G shrink for a big model
so that a run stays short. The sizes are fixed in the first round from the slower model's
probe runs; both models do the same work.

Each metric's change gets a confidence interval (speedstats.py). After `rounds` rounds
the measurement stops as soon as every interval is conclusive; while one is not, more
rounds follow, up to `max_rounds`, and only while another round fits in the time budget
(two rounds always run). A metric still inconclusive passes with a warning
(gates.speed.inconclusive: block makes it fail).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ggufops.gates import bench, speedstats
from ggufops.gates.result import FAIL, INFO, PASS, ModelGate, Row, Subject
from ggufops.llama import llm

METRICS = (  # name, higher is better
    ("pp_tokens_per_s", True),
    ("tg_tokens_per_s", True),
    ("latency_ms", False),
)
UNITS = {"pp_tokens_per_s": "tokens/s", "tg_tokens_per_s": "tokens/s", "latency_ms": "ms"}
PER_BYTE_UNITS = {"pp_tokens_per_s": "bytes/s", "tg_tokens_per_s": "bytes/s"}
MIN_PP_TOKENS, MIN_TG_TOKENS = 32, 8
MIN_ROUNDS = 2  # the fewest rounds a confidence interval is computed from


@dataclass(frozen=True)
class RunPlan:
    """The work of one run of each kind (the same for both models)."""

    pp_tokens: int
    pp_repeat: int
    tg_tokens: int
    tg_repeat: int
    latency_max_tokens: int
    latency_repeat: int
    clock: llm.Clock = time.perf_counter

    @property
    def clock_name(self) -> str:
        return "the thread's CPU time" if self.clock is time.thread_time else "wall time"


def timer(threads: int) -> llm.Clock:
    """How runs are timed: one thread computes on this thread, so its CPU time is exactly
    what the model costs and no other process on the machine can stretch it; with more
    threads only wall time sees their parallel work."""
    return time.thread_time if threads == 1 else time.perf_counter


def _series() -> dict[str, list[list[float]]]:
    return {m: [] for m, _ in METRICS}


@dataclass
class PairedSpeed:
    """Per metric and round, the figure of each run; baseline[m][r][i] pairs candidate[m][r][i]."""

    plan: RunPlan | None = None
    baseline: dict[str, list[list[float]]] = field(default_factory=_series)
    candidate: dict[str, list[list[float]]] = field(default_factory=_series)
    stopped: str = ""  # why no more rounds: clear | max_rounds | time budget
    repetitions: int = 0  # pairs per metric in the next round

    @property
    def rounds(self) -> int:
        return len(self.baseline["pp_tokens_per_s"])

    def log_ratios(self, metric: str) -> list[list[float]]:
        return [speedstats.log_ratios(b, c)
                for b, c in zip(self.baseline[metric], self.candidate[metric], strict=True)]

    def pooled(self, side: str, metric: str) -> float:
        """The median of every run of one side: the figure the report shows."""
        runs = getattr(self, side)[metric]
        return llm.median([x for r in runs for x in r])


# --- the rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedRules:
    """How speed is judged: the allowed slowdown, the confidence, what inconclusive does."""

    max_slowdown: float
    slowdown_key: str
    confidence: float
    block_inconclusive: bool
    bytes_per_token: tuple[float, float] | None = None  # (baseline, candidate): per byte

    @classmethod
    def from_policy(cls, policy: dict[str, Any],
                    bytes_per_token: tuple[float, float] | None = None) -> SpeedRules:
        speed = policy.get("speed") or {}
        has_own = "max_slowdown" in speed
        return cls(float(speed["max_slowdown"] if has_own else policy["max_degradation"]),
                   "speed.max_slowdown" if has_own else "max_degradation",
                   float(speed.get("confidence", 0.95)),
                   speed.get("inconclusive", "pass") == "block", bytes_per_token)

    @property
    def judged(self) -> tuple[str, ...]:
        """Per byte, latency is not judged: a request makes a fixed number of *tokens*."""
        names = [m for m, _ in METRICS]
        return tuple(names if self.bytes_per_token is None else names[:2])

    def scale(self, metric: str) -> tuple[float, float]:
        """What turns each side's figure into the compared one (bytes per token, per byte)."""
        if self.bytes_per_token is None or metric not in PER_BYTE_UNITS:
            return 1.0, 1.0
        return self.bytes_per_token

    def estimate(self, speed: PairedSpeed, metric: str) -> speedstats.Estimate:
        est = speedstats.estimate(speed.log_ratios(metric), self.confidence)
        base, cand = self.scale(metric)
        return est.shifted(cand / base)

    def decision(self, speed: PairedSpeed, metric: str) -> str:
        return speedstats.decide(self.estimate(speed, metric),
                                 higher_is_better=dict(METRICS)[metric],
                                 max_slowdown=self.max_slowdown)

    def clear(self, speed: PairedSpeed) -> bool:
        """Whether every judged metric has a conclusive verdict."""
        return all(self.decision(speed, m) != speedstats.INCONCLUSIVE for m in self.judged)


# --- measuring ---------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's garbage collector off while timing (as timeit does): its pauses come at
    regular allocation counts and would land on one model more than the other."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(subjects: Sequence[Subject], tokens: Sequence[Sequence[int]],
            prompts: Sequence[bytes], settings: bench.Settings, *, deadline: float,
            is_clear: Callable[[PairedSpeed], bool],
            run_round: Callable[[PairedSpeed], None] | None = None) -> PairedSpeed:
    """Rounds of paired runs of (baseline, candidate) until clear, max_rounds or deadline.

    `run_round` measures one round elsewhere (the runtime gate: in two child processes)."""
    speed = PairedSpeed(repetitions=settings.repetitions)
    longest = 0.0  # per pair: the next round is predicted from the slowest so far
    with gc_paused():
        while not speed.stopped:
            began, pairs = time.monotonic(), speed.repetitions
            if run_round is not None:
                run_round(speed)
            else:
                _round(subjects, tokens, prompts, settings, speed)
            now = time.monotonic()
            longest = max(longest, (now - began) / pairs)
            speed.stopped = _stop_reason(speed, settings, is_clear,
                                         now + longest * speed.repetitions > deadline)
            speed.repetitions = _fitting_repetitions(speed, settings, longest * pairs,
                                                     deadline - now)
    return speed


def _fitting_repetitions(speed: PairedSpeed, settings: bench.Settings, round_s: float,
                         remaining_s: float) -> int:
    """Fewer pairs per round when the rounds still due would not fit in the time left:
    more, smaller rounds give a narrower interval than fewer, bigger ones."""
    due = settings.rounds - speed.rounds
    if due <= 0:
        return speed.repetitions
    per_pair = round_s / speed.repetitions
    fitting = int(remaining_s / due / per_pair) if remaining_s > 0 else 1
    return max(1, min(speed.repetitions, fitting))


def _stop_reason(speed: PairedSpeed, settings: bench.Settings,
                 is_clear: Callable[[PairedSpeed], bool], over_budget: bool) -> str:
    """Why to stop now ("": go on). Two rounds always run: an interval needs two."""
    if speed.rounds < MIN_ROUNDS:
        return ""
    if speed.rounds >= settings.rounds and is_clear(speed):
        return "clear"
    if speed.rounds >= settings.max_rounds:
        return "max_rounds"
    return "time budget" if over_budget else ""


def _round(subjects: Sequence[Subject], tokens: Sequence[Sequence[int]],
           prompts: Sequence[bytes], settings: bench.Settings, speed: PairedSpeed) -> None:
    """Load both afresh (alternating which first), warm up, then the round's pairs."""
    flip = speed.rounds % 2
    models: dict[int, llm.Model] = {}
    try:
        for i in ((1, 0) if flip else (0, 1)):
            models[i] = llm.load(subjects[i].path, n_ctx=settings.n_ctx,
                                 n_threads=settings.n_threads)
        pair = (models[0], models[1])
        for model, toks in zip(pair, tokens, strict=True):
            warm_up(model, toks, prompts[0], speed.plan)
        if speed.plan is None:
            speed.plan = calibrate(pair, tokens, prompts, settings)
        _pairs(pair, tokens, prompts, settings, speed, flip=flip)
    finally:
        for model in models.values():
            model.close()


def warm_up(model: llm.Model, tokens: Sequence[int], prompt: bytes,
            plan: RunPlan | None) -> None:
    """One short untimed run of each kind on a fresh load (first-run costs stay out)."""
    llm.prompt_tokens_per_s(model, list(tokens[: plan.pp_tokens if plan else MIN_PP_TOKENS]))
    llm.generation_tokens_per_s(model, 2)
    llm.request_latency_ms(model, prompt, 2)


def _pow2_at_most(x: float) -> int:
    n = 1
    while n * 2 <= x:
        n *= 2
    return n


def calibrate(models: Sequence[llm.Model], tokens: Sequence[Sequence[int]],
              prompts: Sequence[bytes], settings: bench.Settings) -> RunPlan:
    """Run sizes from the slower model's probe runs: each run takes about run_seconds."""
    budget = settings.run_seconds
    probe = min(settings.pp_tokens, MIN_PP_TOKENS)
    pp_rate = min(llm.prompt_tokens_per_s(m, list(t[:probe]))
                  for m, t in zip(models, tokens, strict=True))
    pp = max(min(settings.pp_tokens, MIN_PP_TOKENS),
             min(settings.pp_tokens, _pow2_at_most(pp_rate * budget)))
    tg_probe = min(settings.tg_tokens, MIN_TG_TOKENS)
    tg_rate = min(llm.generation_tokens_per_s(m, tg_probe) for m in models)
    tg = max(tg_probe, min(settings.tg_tokens, _pow2_at_most(tg_rate * budget)))
    latency_tokens = min(settings.latency_max_tokens, tg)
    request_s = max(llm.request_latency_ms(m, prompts[0], latency_tokens) for m in models) / 1e3
    return RunPlan(pp, max(1, round(budget * pp_rate / pp)), tg,
                   max(1, round(budget * tg_rate / tg)), latency_tokens,
                   max(1, round(budget / request_s)), timer(settings.n_threads))


def _pairs(models: Sequence[llm.Model], tokens: Sequence[Sequence[int]],
           prompts: Sequence[bytes], settings: bench.Settings, speed: PairedSpeed, *,
           flip: int) -> None:
    plan = speed.plan
    assert plan is not None
    for series in (speed.baseline, speed.candidate):
        for runs in series.values():
            runs.append([])
    done = sum(len(r) for r in speed.baseline["latency_ms"][:-1])
    for rep in range(speed.repetitions):
        order = (1, 0) if (rep + flip) % 2 else (0, 1)
        prompt = prompts[(done + rep) % len(prompts)]
        for metric, _ in METRICS:
            figures = {i: _run(metric, models[i], tokens[i], prompt, plan) for i in order}
            speed.baseline[metric][-1].append(figures[0])
            speed.candidate[metric][-1].append(figures[1])


def _run(metric: str, model: llm.Model, tokens: Sequence[int], prompt: bytes,
         plan: RunPlan) -> float:
    if metric == "pp_tokens_per_s":
        return pp_run(model, tokens, plan)
    if metric == "tg_tokens_per_s":
        return tg_run(model, plan)
    return latency_run(model, prompt, plan)


def pp_run(model: llm.Model, tokens: Sequence[int], plan: RunPlan) -> float:
    """tokens/s of the fastest of `pp_repeat` prompt-processing runs of `pp_tokens` tokens."""
    batch = list(tokens[: plan.pp_tokens])
    return max(llm.prompt_tokens_per_s(model, batch, clock=plan.clock)
               for _ in range(plan.pp_repeat))


def tg_run(model: llm.Model, plan: RunPlan) -> float:
    """tokens/s of the fastest of `tg_repeat` generation runs of `tg_tokens` tokens."""
    return max(llm.generation_tokens_per_s(model, plan.tg_tokens, clock=plan.clock)
               for _ in range(plan.tg_repeat))


def latency_run(model: llm.Model, prompt: bytes, plan: RunPlan) -> float:
    """Milliseconds of the fastest of `latency_repeat` identical requests."""
    return min(llm.request_latency_ms(model, prompt, plan.latency_max_tokens,
                                      clock=plan.clock)
               for _ in range(plan.latency_repeat))


# --- judging ------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def judge(gate: ModelGate, speed: PairedSpeed, rules: SpeedRules) -> None:
    """One row per metric: the change, its interval, the decision and the verdict."""
    for metric, higher_better in METRICS:
        if metric in rules.judged:
            _judged_row(gate, speed, rules, metric, higher_better)
        else:
            base, cand = speed.pooled("baseline", metric), speed.pooled("candidate", metric)
            gate.rows.append(Row(metric, base, cand, cand / base - 1.0, "not compared", INFO,
                                 UNITS[metric], against=""))


def _judged_row(gate: ModelGate, speed: PairedSpeed, rules: SpeedRules, metric: str,
                higher_better: bool) -> None:
    est = rules.estimate(speed, metric)
    decision = speedstats.decide(est, higher_is_better=higher_better,
                                 max_slowdown=rules.max_slowdown)
    scale = rules.scale(metric)
    base = speed.pooled("baseline", metric) * scale[0]
    cand = speed.pooled("candidate", metric) * scale[1]
    bound = speedstats.limit(higher_better, rules.max_slowdown) - 1.0
    threshold = f"{'≥' if higher_better else '≤'} {_pct(bound)} ({rules.slowdown_key})"
    fails = decision == speedstats.SLOWER or (
        decision == speedstats.INCONCLUSIVE and rules.block_inconclusive)
    per_byte = rules.bytes_per_token is not None and metric in PER_BYTE_UNITS
    unit = PER_BYTE_UNITS[metric] if per_byte else UNITS[metric]
    gate.rows.append(Row(metric, base, cand, est.ratio - 1.0, threshold,
                         FAIL if fails else PASS, unit, bound, ci_low=est.low - 1.0,
                         ci_high=est.high - 1.0, decision=decision, rule=rules.slowdown_key))
    interval = (f"{est.confidence:.0%} CI {_pct(est.low - 1.0)} to {_pct(est.high - 1.0)}, "
                f"{est.pairs} pairs in {est.rounds} rounds")
    if decision == speedstats.SLOWER:
        gate.fail(f"{gate.candidate} in {gate.env}: {metric} {cand:.4g} vs {base:.4g} "
                  f"({_pct(est.ratio - 1.0)}, {interval}; limit {_pct(bound)})")
    elif decision == speedstats.INCONCLUSIVE:
        _inconclusive(gate, speed, rules, metric, interval=interval, bound=bound)


def _inconclusive(gate: ModelGate, speed: PairedSpeed, rules: SpeedRules, metric: str, *,
                  interval: str, bound: float) -> None:
    why = {"max_rounds": "max_rounds reached", "time budget": "time budget spent"}.get(
        speed.stopped, speed.stopped)
    text = (f"{metric}: inconclusive ({interval}, straddles the limit {_pct(bound)}; "
            f"{why})")
    if rules.block_inconclusive:
        gate.fail(f"{gate.candidate} in {gate.env}: {text}; gates.speed.inconclusive: block")
    else:
        gate.warn(f"{text}: passed (gates.speed.inconclusive: pass)")


def summary(speed: PairedSpeed, rules: SpeedRules, settings: bench.Settings) -> dict[str, Any]:
    """What the report says about how speed was measured and decided."""
    plan = speed.plan
    return {"rounds": speed.rounds, "min_rounds": settings.rounds,
            "max_rounds": settings.max_rounds,
            "pairs_per_round": [len(r) for r in speed.baseline["pp_tokens_per_s"]],
            "stopped": speed.stopped, "confidence": rules.confidence,
            "max_slowdown": rules.max_slowdown, "slowdown_key": rules.slowdown_key,
            "threads": settings.n_threads,
            "plan": None if plan is None else {
                "pp_tokens": plan.pp_tokens, "pp_repeat": plan.pp_repeat,
                "tg_tokens": plan.tg_tokens, "tg_repeat": plan.tg_repeat,
                "latency_max_tokens": plan.latency_max_tokens,
                "latency_repeat": plan.latency_repeat, "clock": plan.clock_name}}
