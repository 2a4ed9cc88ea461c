"""The gate: verdicts on real llama.cpp measurements of the toy models, and its git plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggufops import bench, gate, llm
from ggufops.benchcache import BenchCache
from ggufops.cli import main
from ggufops.errors import GateFailed, GitError
from ggufops.registry import Registry, VersionRef
from ggufops.store import file_sha256
from testing.repos import git, git_commit, make_remote, set_environment, write_version
from testing.toys import fast_policy, nan_copy, register_toy

ToyModels = dict[str, Path]


def subject(toy_models: ToyModels, name: str, version: str = "1.0.0",
            quant: str | None = None) -> gate.Subject:
    path = toy_models[name]
    q = quant or (name.split("-", 1)[1] if "-" in name else "f32")
    return gate.Subject(f"toy@{version}", f"toy-v{version}-{q}", q, file_sha256(path), path)


def run(toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache, candidate: str,
        baseline: str | None = "baseline", **policy: Any) -> gate.ModelGate:
    base = subject(toy_models, baseline) if baseline else None
    return gate.gate_models("production", subject(toy_models, candidate, "1.1.0"), base,
                            eval_set, policy=fast_policy(**policy), cache=cache)


def row(result: gate.ModelGate, metric: str) -> gate.Row:
    return next(r for r in result.rows if r.metric == metric)


@pytest.fixture
def cache(tmp_path: Path) -> BenchCache:
    return BenchCache(tmp_path / "cache")


def test_improved_model_passes(toy_models: ToyModels, eval_set: bench.EvalSet,
                               cache: BenchCache) -> None:
    result = run(toy_models, eval_set, cache, "improved")
    assert result.verdict == gate.PASS, result.failures
    ppl = row(result, "perplexity")
    assert ppl.verdict == gate.PASS
    assert ppl.candidate is not None and ppl.baseline is not None
    assert ppl.candidate < 0.85 * ppl.baseline and ppl.change is not None and ppl.change < -0.15
    assert row(result, "kl_divergence").candidate > 0  # type: ignore[operator]
    assert {r.metric for r in result.rows} >= {"pp_tokens_per_s", "tg_tokens_per_s",
                                               "latency_p95_ms"}
    assert "quality reference: toy-v1.0.0-f32 (same quantization, f32)" in result.notes


def test_degraded_model_fails_on_perplexity(toy_models: ToyModels, eval_set: bench.EvalSet,
                                            cache: BenchCache) -> None:
    result = run(toy_models, eval_set, cache, "degraded")
    assert result.verdict == gate.FAIL
    ppl = row(result, "perplexity")
    assert ppl.verdict == gate.FAIL and ppl.change is not None and ppl.change > 0.3
    message = result.failures[0]
    assert message.startswith("toy@1.1.0 in production: perplexity ")
    assert f"{ppl.candidate:.4g} vs {ppl.baseline:.4g}" in message
    assert message.endswith("limit +5.0%)")
    report = gate.GateReport("HEAD~1", None, [result], bench.provenance(bench.Settings()))
    with pytest.raises(GateFailed, match=r"^gate failed: toy@1.1.0 in production: perplexity"):
        gate.check(report)


def test_a_against_a_passes_every_time(toy_models: ToyModels, eval_set: bench.EvalSet,
                                       cache: BenchCache) -> None:
    for _ in range(5):
        result = run(toy_models, eval_set, cache, "baseline")
        assert result.verdict == gate.PASS, result.failures
        assert row(result, "perplexity").change == 0.0
        assert row(result, "top1_agreement").candidate == 1.0
    assert cache.hits >= 4 * 3  # quality came from the cache after the first run


def test_quality_results_are_cached_and_speed_remeasured(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    first = run(toy_models, eval_set, cache, "improved")
    hits = cache.hits
    second = run(toy_models, eval_set, cache, "improved")
    assert cache.hits == hits + 3  # two perplexities and the divergence
    assert second.quality == first.quality
    assert second.samples != first.samples  # timings are never cached


def test_slower_model_measures_slower(toy_models: ToyModels, eval_set: bench.EvalSet,
                                      cache: BenchCache) -> None:
    result = run(toy_models, eval_set, cache, "slow")
    assert row(result, "perplexity").change == pytest.approx(0.0, abs=1e-9)
    tg = row(result, "tg_tokens_per_s")
    assert tg.candidate is not None and tg.baseline is not None and tg.candidate < tg.baseline


def samples(pp: list[list[float]], latency: list[list[float]] | None = None) -> bench.SpeedSamples:
    lat = latency or [[1.0]] * len(pp)
    return bench.SpeedSamples(pp=pp, tg=pp, latency=lat)


def test_speed_change_is_the_median_paired_ratio_and_noise_its_spread() -> None:
    result = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0")
    base = samples([[100.0, 100.0], [100.0, 50.0], [100.0, 100.0]])  # a load burst in round 2
    cand = samples([[90.0, 91.0], [92.0, 45.0], [91.0, 90.0]])
    gate._speed_row(result, "pp_tokens_per_s", True, base=base, cand=cand, policy=fast_policy())
    pp = result.rows[0]
    assert pp.change == pytest.approx(-0.095)  # round ratios 0.905, 0.91, 0.905
    assert result.noise["pp_tokens_per_s"] == pytest.approx(0.005)
    assert pp.verdict == gate.FAIL and pp.limit == pytest.approx(-0.055)
    assert pp.threshold == "≥ -5.5% (incl. noise 0.5%)"
    assert result.failures[0] == ("toy@1.1.0 in production: pp_tokens_per_s 90.5 vs 100 "
                                  "(-9.5%, limit -5.5% = 5% + noise 0.5%)")


def test_noisy_rounds_widen_the_allowance() -> None:
    result = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0")
    base = samples([[100.0], [100.0], [100.0]])
    cand = samples([[80.0], [95.0], [100.0]])  # ratios 0.8, 0.95, 1.0: median -5%, noise 20%
    gate._speed_row(result, "tg_tokens_per_s", True, base=base, cand=cand, policy=fast_policy())
    assert result.rows[0].verdict == gate.PASS
    assert result.rows[0].change == pytest.approx(-0.05)


def test_latency_compares_round_p95s() -> None:
    result = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0")
    base = samples([[1.0]] * 3, [[2.0, 2.0, 10.0]] * 3)
    cand = samples([[1.0]] * 3, [[2.0, 2.0, 13.0]] * 3)
    gate._speed_row(result, "latency_p95_ms", False, base=base, cand=cand, policy=fast_policy())
    row = result.rows[0]
    assert row.verdict == gate.FAIL and row.change == pytest.approx(11.9 / 9.2 - 1)
    assert row.baseline == pytest.approx(10.0) and row.candidate == pytest.approx(13.0)  # pooled


def test_cross_quantization_is_speed_only_by_default(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache, tmp_path: Path) -> None:
    degraded_q8 = llm.quantize(toy_models["degraded"], tmp_path / "degraded-q8_0.gguf", "q8_0")
    models = {**toy_models, "degraded-q8_0": degraded_q8}
    result = run(models, eval_set, cache, "degraded-q8_0")
    ppl = result.rows[0]
    assert ppl.metric == "perplexity" and ppl.verdict == gate.INFO
    assert ppl.threshold == "not compared" and ppl.change is not None and ppl.change > 0.3
    minimum = result.rows[1]
    assert (minimum.metric, minimum.baseline, minimum.verdict) == ("perplexity", None, gate.PASS)
    assert any(n.startswith("cross-quant: speed only. f32 → q8_0") for n in result.notes)
    assert not any("perplexity" in f for f in result.failures)
    judged = run(models, eval_set, cache, "degraded-q8_0",
                 compare_quality_across_quantization=True)
    assert judged.rows[0].verdict == gate.FAIL
    assert "perplexity" in judged.failures[0]


def test_same_family_quantized_candidate_is_compared(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    base = subject(toy_models, "baseline-q4_0")
    cand = subject(toy_models, "improved-q4_0", "1.1.0")
    result = gate.gate_models("production", cand, base, eval_set, policy=fast_policy(),
                              cache=cache)
    ppl = result.rows[0]
    assert ppl.verdict == gate.PASS and ppl.change is not None and ppl.change < -0.15
    assert "quality reference: toy-v1.0.0-q4_0 (same quantization, q4_0)" in result.notes


def test_new_model_is_held_to_minimums(toy_models: ToyModels, eval_set: bench.EvalSet,
                                       cache: BenchCache) -> None:
    ok = run(toy_models, eval_set, cache, "baseline", baseline=None)
    assert ok.verdict == gate.PASS
    assert [(r.metric, r.verdict) for r in ok.rows] == [("perplexity", gate.PASS)]
    assert "new model in this environment (no baseline): held to policy minimums" in ok.notes
    strict = run(toy_models, eval_set, cache, "baseline", baseline=None,
                 minimums={"max_perplexity": 10, "min_tg_tokens_per_s": 1e12})
    assert strict.verdict == gate.FAIL
    assert [r.verdict for r in strict.rows] == [gate.FAIL, gate.FAIL]
    value = strict.rows[0].candidate
    assert value is not None and value > 10
    assert strict.failures[0] == (f"toy@1.1.0 in production: perplexity {value:.4g} does not "
                                  "meet minimums.max_perplexity 10")


def test_corrupted_candidate_fails_smoke_without_crashing(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache, tmp_path: Path) -> None:
    bad = nan_copy(toy_models["baseline"], tmp_path / "nan.gguf")
    result = gate.gate_models("production", gate.Subject("toy@1.1.0", "toy-v1.1.0-f32", "f32",
                                                         "0" * 64, bad),
                              subject(toy_models, "baseline"), eval_set, policy=fast_policy(),
                              cache=cache)
    assert result.verdict == gate.FAIL
    assert [r.metric for r in result.rows] == ["smoke_test"]
    assert result.failures == [
        f"toy@1.1.0 in production: smoke test failed for toy-v1.1.0-f32: non-finite logits "
        f"(NaN/inf) from {bad}"]


def test_non_loading_candidate_fails_smoke(toy_models: ToyModels, eval_set: bench.EvalSet,
                                           cache: BenchCache, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(toy_models["baseline"].read_bytes()[:500_000])
    result = gate.gate_models("production", gate.Subject("toy@1.1.0", "toy-v1.1.0-f32", "f32",
                                                         "0" * 64, cut),
                              None, eval_set, policy=fast_policy(), cache=cache)
    assert result.verdict == gate.FAIL
    assert "smoke test failed for toy-v1.1.0-f32: llama.cpp cannot load" in result.failures[0]
    assert "is not within the file bounds" in result.failures[0] or \
        "not within the file bounds" in result.failures[0]


def test_broken_baseline_falls_back_to_minimums(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache, tmp_path: Path) -> None:
    bad = nan_copy(toy_models["baseline"], tmp_path / "nan.gguf")
    base = gate.Subject("toy@1.0.0", "toy-v1.0.0-f32", "f32", "1" * 64, bad)
    result = gate.gate_models("production", subject(toy_models, "improved", "1.1.0"), base,
                              eval_set, policy=fast_policy(), cache=cache)
    assert result.verdict == gate.PASS
    assert any(n.startswith("baseline toy-v1.0.0-f32 failed its smoke test") for n in result.notes)


# --- the plan: which models changed, from git ---------------------------------------------------


def _registry_with(root: Path, versions: dict[str, list[str]]) -> Registry:
    for model, vs in versions.items():
        for v in vs:
            write_version(root, model, v)
    return Registry(root)


def test_plan_finds_changed_new_and_canary_models(registry_repo: Path) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0", "1.1.0"], "b": ["2.0.0", "2.1.0"],
                                              "c": ["0.1.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0", "b": "2.0.0"})
    set_environment(registry_repo, "staging", {"a": "1.0.0"})
    base = git_commit(registry_repo, "deploy")
    set_environment(registry_repo, "production", {"a": "1.1.0", "b": "2.0.0", "c": "0.1.0"})
    env = registry_repo / "environments" / "staging.yaml"
    env.write_text("environment: staging\nmodels:\n  a:\n    version: 1.0.0\n"
                   "    canary: {version: 1.1.0, weight: 10}\n")
    plan = gate.plan_gates(registry, base)
    assert plan.base_sha == base
    assert [(j.env, j.model, str(j.candidate), str(j.baseline) if j.baseline else None, j.role)
            for j in plan.jobs] == [
        ("production", "a", "a@1.1.0", "a@1.0.0", "version"),
        ("production", "c", "c@0.1.0", None, "version"),
        ("staging", "a", "a@1.1.0", "a@1.0.0", "canary"),
    ]
    assert [j.model for j in gate.plan_gates(registry, base, "staging").jobs] == ["a"]


def test_default_base_is_merge_base_with_origin(registry_repo: Path, tmp_path: Path) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0", "1.1.0", "1.2.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0"})
    first = git_commit(registry_repo, "a 1.0.0")
    make_remote(tmp_path, registry_repo)
    git(registry_repo, "checkout", "-q", "-b", "deploy")
    set_environment(registry_repo, "production", {"a": "1.1.0"})
    git_commit(registry_repo, "deploy 1.1.0")
    set_environment(registry_repo, "production", {"a": "1.2.0"})
    git_commit(registry_repo, "deploy 1.2.0")
    plan = gate.plan_gates(registry)
    assert plan.base == "merge-base(HEAD, origin/main)" and plan.base_sha == first
    assert [(str(j.candidate), str(j.baseline)) for j in plan.jobs] == [("a@1.2.0", "a@1.0.0")]


def test_default_base_without_remote_is_previous_commit(registry_repo: Path) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0", "1.1.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0"})
    git_commit(registry_repo, "a 1.0.0")
    git(registry_repo, "branch", "-m", "main", "work")  # no main, no origin
    set_environment(registry_repo, "production", {"a": "1.1.0"})
    head = git_commit(registry_repo, "deploy")
    plan = gate.plan_gates(registry)
    assert plan.base == "HEAD~1" and plan.base_sha != head
    assert [str(j.candidate) for j in plan.jobs] == ["a@1.1.0"]


def test_unchanged_environments_plan_nothing(registry_repo: Path) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0"})
    base = git_commit(registry_repo, "deploy")
    assert gate.plan_gates(registry, base).jobs == []
    assert VersionRef("a", "1.0.0") == VersionRef.parse("a@1.0.0")


# --- end to end: artifacts on the real S3, the command as CI runs it ------------------------------


def test_gate_command_passes_improved_and_blocks_degraded(
        toy_registry: Path, toy_models: ToyModels, tmp_path: Path) -> None:


    register_toy(toy_registry, toy_models["improved"], "toy", "1.1.0", parent="1.0.0")
    set_environment(toy_registry, "production", {"toy": "1.1.0"})
    runner = CliRunner()
    dry = runner.invoke(main, ["-C", str(toy_registry), "gate", "--base", "main", "--dry-run"])
    assert dry.exit_code == 0 and "production: toy 1.0.0 -> 1.1.0" in dry.output
    md, js = tmp_path / "gate.md", tmp_path / "gate.json"
    ok = runner.invoke(main, ["-C", str(toy_registry), "gate", "--base", "main",
                              "--report", str(md), "--json", str(js)])
    assert ok.exit_code == 0, ok.output
    assert md.read_text().startswith("## ✅ ggufops gate passed")
    data = json.loads(js.read_text())
    assert data["passed"] is True and data["gates"][0]["candidate"] == "toy@1.1.0"
    assert set(data["timings_s"]) == {"fetch", "smoke", "quality", "speed"}

    register_toy(toy_registry, toy_models["degraded"], "toy", "1.2.0", parent="1.0.0")
    set_environment(toy_registry, "production", {"toy": "1.2.0"})
    bad = runner.invoke(main, ["-C", str(toy_registry), "gate", "--base", "main"])
    assert bad.exit_code == 1
    last = bad.output.strip().splitlines()[-1]
    assert last.startswith("error: gate failed: toy@1.2.0 in production: perplexity ")
    assert last.endswith("limit +5.0%)")


def test_pull_request_base_comes_from_github_base_ref(
        registry_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0", "1.1.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0"})
    git_commit(registry_repo, "a 1.0.0")
    make_remote(tmp_path, registry_repo)
    git(registry_repo, "push", "-q", "origin", "main:release")
    git(registry_repo, "fetch", "-q", "origin")
    set_environment(registry_repo, "production", {"a": "1.1.0"})
    git_commit(registry_repo, "deploy on main")
    monkeypatch.setenv("GITHUB_BASE_REF", "release")
    plan = gate.plan_gates(registry)
    assert plan.base == "merge-base(HEAD, origin/release)"
    assert [str(j.candidate) for j in plan.jobs] == ["a@1.1.0"]


def test_shallow_clone_without_base_is_a_clear_error(registry_repo: Path, tmp_path: Path) -> None:
    _registry_with(registry_repo, {"a": ["1.0.0"]})
    set_environment(registry_repo, "production", {"a": "1.0.0"})
    git_commit(registry_repo, "a 1.0.0")
    clone = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{registry_repo}", str(clone))
    git(clone, "remote", "remove", "origin")
    with pytest.raises(GitError, match=r"is a shallow clone without the base branch.*"
                                       r"fetch-depth: 0"):
        gate.plan_gates(Registry(clone))
