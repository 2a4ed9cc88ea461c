"""The rules of a canary's analysis plan (`canary.analysis` of an environment entry).

    canary: {version: 2.1.0, weight: 10, analysis: {steps: [10, 25, 50, 100], interval: 60}}

The steps are the weights the canary walks, strictly increasing, the last one 100 (the
promotion), the first below it; the weight in force is one of them and below 100 (a deploy
starts at the first); the interval is at least 1 second. The schema checks the types;
these are the rules across fields, used by `validate` (file:line) and by `deploy --steps`
(before anything is written).
"""

from __future__ import annotations

import itertools

from ggufops.registry.records import CanaryAnalysis

FINAL_STEP = 100  # the last step: the canary becomes the primary
MIN_INTERVAL_S = 1.0


def plan_problems(weight: int, plan: CanaryAnalysis) -> list[tuple[str, str]]:
    """(field under `analysis`, what is wrong) for each broken rule; [] for a good plan."""
    steps = list(plan.steps)
    problems: list[tuple[str, str]] = []
    if any(b <= a for a, b in itertools.pairwise(steps)):
        problems.append(("steps", f"steps {_text(steps)} must be strictly increasing"))
    if steps[-1] != FINAL_STEP:
        problems.append(("steps", f"steps {_text(steps)} must end with {FINAL_STEP} (the "
                         "promotion); add it"))
    if steps[0] >= FINAL_STEP or weight >= FINAL_STEP:
        problems.append(("steps", f"steps {_text(steps)} at weight {weight}: the canary must "
                         f"start and stay below {FINAL_STEP} (at {FINAL_STEP} the primary "
                         "has no traffic to be compared with, and the analysis would wait "
                         "forever); deploy the version without --canary to send it all"))
    elif weight not in steps:
        problems.append(("steps", f"the canary's weight {weight} is not one of the steps "
                         f"{_text(steps)}; start the canary at the first step"))
    if plan.interval < MIN_INTERVAL_S:
        problems.append(("interval", f"interval {plan.interval:g} must be at least "
                         f"{MIN_INTERVAL_S:g} second"))
    return problems


def parse_steps(text: str) -> tuple[int, ...]:
    """`10,25,50,100` -> (10, 25, 50, 100); ValueError naming the bad part."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of whole percents "
                         "(e.g. 10,25,50,100)")
    return tuple(int(p) for p in parts)


def next_step(weight: int, plan: CanaryAnalysis) -> int:
    """The weight after `weight` (FINAL_STEP when `weight` is the last before it)."""
    return next((s for s in plan.steps if s > weight), FINAL_STEP)


def _text(steps: list[int]) -> str:
    return ",".join(str(s) for s in steps)
