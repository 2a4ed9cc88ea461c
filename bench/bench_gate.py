"""The benchmark gate on the toy models: wall time, perplexity fidelity, A/A false fails.

1. Whole `gate` on a scratch registry whose artifacts live in the embedded SeaweedFS:
   plan, fetch both artifacts (empty store), smoke, quality, speed, report. Goal < 60 s.
   Uses the repository's registry/policy.yaml (production settings).
2. Perplexity of our harness against a direct calculation from `Llama.eval` logits
   (logits_all=True, numpy log-softmax) on the same tokens: relative difference (~0).
3. A/A: the baseline against itself, N times (default 20) with production settings;
   prints how many failed (goal 0) and how close the worst one came to its limit.

Run: .venv/bin/python bench/bench_gate.py [--aa 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from ggufops import bench, gate, llm, register, report, s3config, toy
from ggufops.benchcache import BenchCache, NoCache
from ggufops.registry import Registry
from ggufops.s3server import S3Server
from ggufops.store import file_sha256
from testing.repos import GIT_TEST_ENV, git_commit, make_registry, set_environment
from testing.toys import direct_perplexity

ROOT = Path(__file__).resolve().parents[1]


def whole_gate(work: Path, models: dict[str, Path]) -> None:
    print("== 1. whole gate: baseline in production -> improved, artifacts from embedded S3")
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
        store = work / "store"  # empty: both artifacts are downloaded
        start = time.perf_counter()
        plan = gate.plan_gates(registry, "main")
        t_plan = time.perf_counter() - start
        result = gate.run_gates(registry, plan, store, NoCache())
        t_render = time.perf_counter()
        markdown = report.render_markdown(result)
        total = time.perf_counter() - start
        t_render = time.perf_counter() - t_render
    print(f"  (not timed) start SeaweedFS {t_s3:.2f} s, "
          f"register + push 2 artifacts {t_setup:.2f} s")
    print(f"  verdict: {'PASS' if result.passed else 'FAIL'} — {result.summary()}")
    print(f"  plan {t_plan:.3f} s")
    for phase, seconds in result.timings_s.items():
        print(f"  {phase:<8}{seconds:.3f} s")
    print(f"  report  {t_render:.3f} s")
    print(f"  TOTAL gate wall time {total:.2f} s (goal < 60 s)")
    (work / "gate.md").write_text(markdown)


def fidelity(models: dict[str, Path]) -> None:
    print("== 2. perplexity: harness vs direct calculation from Llama.eval logits")
    settings = _production_settings()
    text = (ROOT / "registry" / "evals" / f"{toy.EVAL_SET}.txt").read_bytes()
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


def aa_runs(models: dict[str, Path], runs: int, work: Path) -> None:
    print(f"== 3. A/A: baseline against itself, {runs} gates, production settings")
    policy = bench.gate_policy(yaml.safe_load((ROOT / "registry/policy.yaml").read_text()),
                               "production")
    text = (ROOT / "registry" / "evals" / f"{toy.EVAL_SET}.txt").read_bytes()
    import hashlib

    eval_set = bench.EvalSet(toy.EVAL_SET, ROOT / "registry" / "evals", hashlib.sha256(
        text).hexdigest(), text)
    path = models["baseline"]
    sha = file_sha256(path)
    a = gate.Subject("toy@1.0.0", "toy-v1.0.0-f32", "f32", sha, path)
    b = gate.Subject("toy@1.0.1", "toy-v1.0.1-f32", "f32", sha, path)
    cache = BenchCache(work / "cache")
    failed, closest, noise = 0, 0.0, []
    start = time.perf_counter()
    for _ in range(runs):
        result = gate.gate_models("production", b, a, eval_set, policy=policy, cache=cache)
        failed += result.verdict == gate.FAIL
        for r in result.rows:
            if r.metric in dict(gate.SPEED_METRICS) and r.change is not None and r.limit:
                higher = dict(gate.SPEED_METRICS)[r.metric]
                regression = -r.change if higher else r.change
                closest = max(closest, regression / abs(r.limit))
        noise.extend(result.noise.values())
    took = time.perf_counter() - start
    print(f"  failed: {failed} of {runs} (goal 0); {took / runs:.2f} s per gate")
    print(f"  worst regression / allowed: {closest:.2f} (fails above 1.00)")
    print(f"  noise between rounds: median {np.median(noise):.1%}, max {max(noise):.1%}")


def _production_settings() -> bench.Settings:
    policy = yaml.safe_load((ROOT / "registry/policy.yaml").read_text())
    return bench.settings_from(bench.gate_policy(policy, "production"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aa", type=int, default=20, help="A/A gates to run")
    args = parser.parse_args()
    os.environ.update({k: v for k, v in GIT_TEST_ENV.items() if k not in os.environ})
    print(f"llama-cpp-python {llm.versions()['llama_cpp_python']}, llama.cpp "
          f"{llm.versions()['llama_cpp']}, {llm.cpu_model()}, {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    try:
        start = time.perf_counter()
        models = toy.build_toy_set(work / "toys")
        print(f"== 0. toy set: {len(models)} files built in {time.perf_counter() - start:.2f} s")
        whole_gate(work, models)
        fidelity(models)
        aa_runs(models, args.aa, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
