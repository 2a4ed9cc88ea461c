"""The gate: verdicts on real llama.cpp measurements of the toy models, and its git plan.

Speed checks here rest on effects far from the 5% limit (a 2x slower toy; speed-equal
toys), so their verdicts do not depend on how busy the machine is: the statistics only
block a candidate when the whole confidence interval is beyond the limit
(tests/gates/test_speedstats.py shows the error rates on synthetic samples).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ggufops.cli import main
from ggufops.errors import GateFailed, GitError
from ggufops.gates import bench, gate, report
from ggufops.gates import quality as gatequality
from ggufops.gates import speed as gatespeed
from ggufops.gates.cache import BenchCache, NoCache
from ggufops.hashing import file_sha256
from ggufops.llama import llm
from ggufops.registry.registry import Registry, VersionRef
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


def speed_rows(result: gate.ModelGate) -> list[gate.Row]:
    return [r for r in result.rows if r.metric in dict(gatespeed.METRICS)]


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
    kl = row(result, "kl_divergence")
    assert kl.candidate is not None and kl.candidate > 0 and kl.verdict == gate.INFO
    assert [r.metric for r in speed_rows(result)] == ["pp_tokens_per_s", "tg_tokens_per_s",
                                                      "latency_ms"]
    assert result.rule == "same quantization" and result.per == "token"
    assert "quality reference: toy-v1.0.0-f32, rule: same quantization" in result.notes
    assert result.speed["rounds"] >= 3 and result.speed["plan"]["clock"] == \
        "the thread's CPU time"
    assert set(result.timings_s) == {"smoke", "load", "quality", "speed"}


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
    assert speed_rows(result) == [] and "speed" not in result.timings_s
    assert "speed not measured: quality already blocks this change" in result.notes
    report_ = gate.GateReport("HEAD~1", None, [result], bench.provenance(bench.Settings()))
    with pytest.raises(GateFailed, match=r"^gate failed: toy@1.1.0 in production: perplexity"):
        gate.check(report_)


def test_speed_equal_models_are_not_blocked(toy_models: ToyModels, eval_set: bench.EvalSet,
                                            cache: BenchCache) -> None:
    """Two distinct but speed-equal files (the same model twice, and baseline vs improved):
    no speed row fails; an unclear one passes with a warning that says why."""
    for name in ("baseline", "improved"):
        result = run(toy_models, eval_set, cache, name)
        assert result.verdict == gate.PASS, result.failures
        for r in speed_rows(result):
            assert r.decision in ("within", "inconclusive") and r.verdict == gate.PASS
            assert r.ci_low is not None and r.ci_high is not None
            assert r.ci_low <= r.change <= r.ci_high  # type: ignore[operator]
        unclear = [r.metric for r in speed_rows(result) if r.decision == "inconclusive"]
        assert len(result.warnings) == len(unclear)
        assert all(w.endswith("passed (gates.speed.inconclusive: pass)")
                   for w in result.warnings)
    assert row(result, "perplexity").change != 0.0


def test_a_2x_slower_model_is_blocked_on_speed(toy_models: ToyModels, eval_set: bench.EvalSet,
                                               cache: BenchCache) -> None:
    result = run(toy_models, eval_set, cache, "slow2x")
    assert row(result, "perplexity").change == pytest.approx(0.0, abs=1e-9)
    pp = row(result, "pp_tokens_per_s")
    assert pp.decision == "slower" and pp.verdict == gate.FAIL
    assert pp.ci_high is not None and pp.ci_high < -0.05
    assert result.verdict == gate.FAIL and result.speed["stopped"] == "clear"
    assert any(f.startswith("toy@1.1.0 in production: pp_tokens_per_s ") and "95% CI" in f
               for f in result.failures)


def test_inconclusive_speed_can_be_made_to_block(toy_models: ToyModels,
                                                 eval_set: bench.EvalSet,
                                                 cache: BenchCache) -> None:
    """Two rounds at most can never clear a 5% limit for equal models: with
    speed.inconclusive: block that fails the gate, and says so."""
    strict = run(toy_models, eval_set, cache, "improved", rounds=2, max_rounds=2,
                 speed={**fast_policy()["speed"], "inconclusive": "block"})
    assert strict.verdict == gate.FAIL
    assert strict.speed["stopped"] == "max_rounds"
    assert all(f.endswith("gates.speed.inconclusive: block") for f in strict.failures)


def test_quality_results_are_cached_and_speed_remeasured(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    first = run(toy_models, eval_set, cache, "improved", max_rounds=3)
    hits = cache.hits
    second = run(toy_models, eval_set, cache, "improved", max_rounds=3)
    assert cache.hits == hits + 3  # two perplexities and the divergence
    assert second.quality == first.quality
    assert second.samples != first.samples  # timings are never cached



def test_quality_runs_on_every_core_whatever_threads_pins_for_speed(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    """The figures are bit-identical on 1 and 2 threads, so `threads` pins only the speed
    runs, and a quality result measured under one setting serves the other from cache."""
    settings = bench.settings_from(fast_policy(threads=1))
    subjects = [subject(toy_models, "baseline"), subject(toy_models, "improved", "1.1.0")]
    measured = []
    for threads in (1, 2):
        with gate.LoadedSides(subjects, eval_set, settings, threads) as sides:
            measured.append(gatequality.measure(sides, eval_set, settings, NoCache()))
    assert measured[0] == measured[1] and measured[0]["per"] == "token"
    assert measured[0]["divergence"]["kl_mean"] > 0  # two different models, compared
    assert settings.quality_threads == llm.default_threads() and settings.n_threads == 1
    run(toy_models, eval_set, cache, "improved", threads=1, max_rounds=2)
    hits = cache.hits
    run(toy_models, eval_set, cache, "improved", threads=2, max_rounds=2)
    assert cache.hits == hits + 3

# --- speed judged from recorded samples (no timing involved) -------------------------------


def paired(pairs: list[list[tuple[float, float]]]) -> gatespeed.PairedSpeed:
    """Rounds of (baseline, candidate) figures, the same for every metric."""
    speed = gatespeed.PairedSpeed()
    for metric, _ in gatespeed.METRICS:
        speed.baseline[metric] = [[b for b, _ in r] for r in pairs]
        speed.candidate[metric] = [[c for _, c in r] for r in pairs]
    return speed


def judged(samples: gatespeed.PairedSpeed, **policy: Any) -> gate.ModelGate:
    result = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0")
    gatespeed.judge(result, samples, gatespeed.SpeedRules.from_policy(fast_policy(**policy)))
    return result


def test_speed_rows_from_recorded_pairs() -> None:
    rounds = [[(100.0, 70.0), (100.0, 72.0), (101.0, 69.0), (99.0, 71.0)]] * 4
    result = judged(paired(rounds))
    pp, tg, lat = speed_rows(result)
    assert pp.decision == tg.decision == "slower" and pp.verdict == gate.FAIL
    median = math.exp((math.log(0.70) + math.log(71 / 99)) / 2)  # of 0.683, 0.70, 0.717, 0.72
    assert pp.change == pytest.approx(median - 1)
    assert pp.threshold == "≥ -5.0% (max_degradation)" and pp.limit == pytest.approx(-0.05)
    assert lat.decision == "within"  # the same figures as a latency: 30% faster
    assert lat.threshold == "≤ +5.0% (max_degradation)"
    assert result.failures[0].startswith("toy@1.1.0 in production: pp_tokens_per_s 70.5 vs 100 "
                                         "(-29.1%, 95% CI ")
    assert result.failures[0].endswith("16 pairs in 4 rounds; limit -5.0%)")


def test_speed_has_its_own_allowance_when_policy_says() -> None:
    rounds = [[(100.0, 90.0)] * 4] * 4  # exactly 10% slower
    assert speed_rows(judged(paired(rounds)))[0].decision == "slower"
    relaxed = speed_rows(judged(paired(rounds), speed={"max_slowdown": 0.15}))[0]
    assert relaxed.decision == "within" and relaxed.rule == "speed.max_slowdown"
    assert relaxed.threshold == "≥ -15.0% (speed.max_slowdown)"


def test_per_byte_speed_converts_and_skips_latency() -> None:
    rounds = [[(100.0, 50.0)] * 4] * 3  # half the tokens/s, but tokens 3x as long
    result = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0")
    rules = gatespeed.SpeedRules.from_policy(fast_policy(), bytes_per_token=(1.0, 3.0))
    gatespeed.judge(result, paired(rounds), rules)
    pp, _tg, lat = result.rows
    assert pp.unit == "bytes/s" and pp.change == pytest.approx(0.5)
    assert pp.baseline == pytest.approx(100.0) and pp.candidate == pytest.approx(150.0)
    assert lat.verdict == gate.INFO and lat.threshold == "not compared"


def test_stop_rules_and_rounds_that_fit_the_budget() -> None:
    settings = bench.settings_from(fast_policy(rounds=4, max_rounds=6))
    never, always = (lambda _s: False), (lambda _s: True)
    one = paired([[(1.0, 1.0)]])
    assert gatespeed._stop_reason(one, settings, always, True) == ""  # an interval needs 2
    two = paired([[(1.0, 1.0)]] * 2)
    assert gatespeed._stop_reason(two, settings, always, False) == ""  # clear needs `rounds`
    assert gatespeed._stop_reason(two, settings, never, True) == "time budget"
    speed = paired([[(1.0, 1.0)]] * 4)
    assert gatespeed._stop_reason(speed, settings, always, False) == "clear"
    assert gatespeed._stop_reason(speed, settings, never, True) == "time budget"
    assert gatespeed._stop_reason(speed, settings, never, False) == ""
    speed = paired([[(1.0, 1.0)]] * 6)
    assert gatespeed._stop_reason(speed, settings, never, False) == "max_rounds"
    speed = paired([[(1.0, 1.0)]] * 1)
    speed.repetitions = 4
    # a round of 4 pairs took 8 s (2 s a pair); 3 more are due in 12 s: 2 pairs each fit
    assert gatespeed._fitting_repetitions(speed, settings, 8.0, 12.0) == 2
    assert gatespeed._fitting_repetitions(speed, settings, 8.0, 100.0) == 4
    assert gatespeed._fitting_repetitions(speed, settings, 8.0, -1.0) == 1


# --- quality rules ------------------------------------------------------------------------


def side(quant: str, tokenizer: str = "t" * 64, arch: str = "llama") -> gate.Subject:
    return gate.Subject("m@1.0.0", f"m-v1.0.0-{quant}", quant, "0" * 64, Path("/nonexistent"),
                        arch, tokenizer)


def rule(cand: str, base: str, **policy: Any) -> gatequality.QualityRule:
    return gatequality.choose_rule(side(cand), side(base), "token", "",
                                   {"max_degradation": 0.05, **policy})


def test_quality_rules() -> None:
    same = rule("q4_0", "q4_0")
    assert (same.name, same.allowed, same.max_kl) == ("same quantization", 0.05, None)
    up = rule("q8_0", "q4_1")
    assert (up.name, up.allowed, up.max_kl, up.min_top1) == ("quantization change", 0.05,
                                                             0.10, 0.85)
    assert "quantization change q4_1 → q8_0" in up.explanation
    down = rule("q4_0", "f16", quantization_budget={"q8_0": 0.01})  # no entry for q4_0
    assert down.name == "quantization change" and down.allowed == 0.05
    assert "no gates.quantization_budget entry for q4_0" in down.explanation
    budget = rule("q4_0", "f16", quantization_budget={"q4_0": 0.12})
    assert budget.name == "quantization budget" and budget.allowed == pytest.approx(0.17)
    assert budget.allowed_text == "max_degradation 5% + quantization_budget.q4_0 12%"
    assert (budget.max_kl, budget.kl_key) == (0.10, "max_kl_divergence")
    mapping = rule("q4_0", "q4_1", max_kl_divergence=0.2, quantization_budget={
        "q4_0": {"perplexity": 0.25, "min_top1_agreement": 0.7}})
    assert (mapping.allowed, mapping.max_kl, mapping.min_top1) == pytest.approx((0.30, 0.2, 0.7))
    assert mapping.top1_key == "quantization_budget.q4_0.min_top1_agreement"
    assert rule("q8_0", "f16", quantization_budget={"q8_0": 0.5}).name == "quantization budget"
    # a budget is for a step down only: q4_0 -> q8_0 keeps more bits
    assert rule("q8_0", "q4_0", quantization_budget={"q8_0": 0.5}).allowed == 0.05
    opt_out = rule("q4_0", "f16", compare_quality_across_quantization=False)
    assert not opt_out.judged and opt_out.name == "speed only (policy opt-out)"
    per_byte = gatequality.choose_rule(side("q4_0", "a" * 64), side("q4_0"), "byte",
                                       "the tokenizer changed", {"max_degradation": 0.05})
    assert per_byte.name == "per byte" and per_byte.max_kl is None
    assert per_byte.explanation.startswith("the tokenizer changed: compared in bits per byte")


def test_quantization_change_is_compared_by_default(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache, tmp_path: Path) -> None:
    degraded_q8 = llm.quantize(toy_models["degraded"], tmp_path / "degraded-q8_0.gguf", "q8_0")
    models = {**toy_models, "degraded-q8_0": degraded_q8}
    result = run(models, eval_set, cache, "degraded-q8_0", max_rounds=3)
    assert result.rule == "quantization change"
    assert row(result, "perplexity").verdict == gate.FAIL
    kl = row(result, "kl_divergence")
    assert kl.verdict == gate.FAIL and kl.threshold == "≤ 0.1 (max_kl_divergence)"
    assert row(result, "top1_agreement").verdict == gate.FAIL
    assert any("perplexity" in f for f in result.failures)
    assert any("KL divergence" in f and "(max_kl_divergence)" in f for f in result.failures)
    opted_out = run(models, eval_set, cache, "degraded-q8_0", max_rounds=3,
                    compare_quality_across_quantization=False)
    assert not any("perplexity" in f or "KL" in f for f in opted_out.failures)
    assert row(opted_out, "perplexity").threshold == "not compared"
    assert opted_out.warnings[0].startswith("quality not compared: quantization change f32 → "
                                            "q8_0: quality NOT compared")
    minimum = [r for r in opted_out.rows if r.against == "minimum"]
    assert [(r.metric, r.verdict) for r in minimum] == [("perplexity", gate.PASS)]


def test_same_family_quantized_candidate_is_compared(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    base = subject(toy_models, "baseline-q4_0")
    cand = subject(toy_models, "improved-q4_0", "1.1.0")
    result = gate.gate_models("production", cand, base, eval_set,
                              policy=fast_policy(max_rounds=3), cache=cache)
    ppl = result.rows[0]
    assert ppl.verdict == gate.PASS and ppl.change is not None and ppl.change < -0.15
    assert "quality reference: toy-v1.0.0-q4_0, rule: same quantization" in result.notes


def test_a_tokenizer_change_is_compared_per_byte(
        toy_models: ToyModels, eval_set: bench.EvalSet, cache: BenchCache) -> None:
    base = subject(toy_models, "baseline")
    cand = gate.Subject("toy@1.1.0", "toy-v1.1.0-f32", "f32", file_sha256(toy_models["improved"]),
                        toy_models["improved"], "llama", "f" * 64)
    base = gate.Subject(base.ref, base.label, base.quantization, base.sha256, base.path, "llama",
                        "e" * 64)
    result = gate.gate_models("production", cand, base, eval_set,
                              policy=fast_policy(max_rounds=3), cache=cache)
    assert result.per == "byte" and result.rule == "per byte"
    bpb = row(result, "bits_per_byte")
    assert bpb.unit == "bits/byte" and bpb.verdict == gate.PASS
    # a byte tokenizer: one token per byte, so per byte and per token agree here
    assert bpb.change is not None and bpb.change < -0.05
    assert not any(r.metric in ("kl_divergence", "perplexity") for r in result.rows)
    assert any(n.startswith("quality rule: the tokenizer changed (sha256 eeeeeeeeeeee → "
                            "ffffffffffff)") for n in result.notes)
    assert row(result, "latency_ms").verdict == gate.INFO


def test_new_model_is_held_to_minimums(toy_models: ToyModels, eval_set: bench.EvalSet,
                                       cache: BenchCache) -> None:
    ok = run(toy_models, eval_set, cache, "baseline", baseline=None)
    assert ok.verdict == gate.PASS
    assert [(r.metric, r.verdict) for r in ok.rows] == [("perplexity", gate.PASS)]
    assert "new model in this environment (no baseline): held to policy minimums" in ok.notes
    assert "speed" not in ok.timings_s  # no speed minimum: speed is not measured
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
    assert "not within the file bounds" in result.failures[0]


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
    assert set(data["timings_s"]) == {"fetch", "smoke", "load", "quality", "speed"}
    assert data["policy_source"].startswith("the base (")
    assert data["self_changes"] == {"policy_keys": [], "policy_changed": False,
                                    "tool_paths": [], "workflow_paths": []}

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


def _policy_with(root: Path, **gates: Any) -> None:
    path = root / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["gates"]["default"].update(gates)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def test_a_change_cannot_lower_its_own_bar(toy_registry: Path, toy_models: ToyModels,
                                           tmp_path: Path) -> None:
    """One change raises max_degradation to 90% AND deploys the degraded model: the gate
    judges with the base's 5%, blocks it, and reports the policy change on its own."""
    git(toy_registry, "checkout", "-q", "-b", "lower-the-bar")
    register_toy(toy_registry, toy_models["degraded"], "toy", "1.2.0", parent="1.0.0")
    _policy_with(toy_registry, max_degradation=0.9)
    set_environment(toy_registry, "production", {"toy": "1.2.0"})
    git_commit(toy_registry, "deploy toy 1.2.0, and a looser gate")
    md = tmp_path / "gate.md"
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "gate", "--base", "main",
                                       "--report", str(md)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].endswith("limit +5.0%)")
    text = md.read_text()
    assert "### ⚠️ Policy change not applied to itself" in text
    assert "| `gates.default.max_degradation` | `0.05` | `0.9` |" in text
    assert "Policy: the base (" in text and ":registry/policy.yaml)." in text
    plan = gate.plan_gates(Registry(toy_registry), "main")
    assert plan.policy["gates"]["default"]["max_degradation"] == 0.05
    assert plan.self_changes is not None and plan.self_changes.policy_changed
    assert plan.self_changes.tool_paths == [] and plan.self_changes.workflow_paths == []


def test_changes_to_the_tool_and_workflows_are_reported(registry_repo: Path) -> None:
    registry = _registry_with(registry_repo, {"a": ["1.0.0"]})
    base = git_commit(registry_repo, "a 1.0.0")
    (registry_repo / "tools" / "ggufops").mkdir(parents=True)
    (registry_repo / "tools" / "ggufops" / "gate.py").write_text("PASS = 'always'\n")
    workflow = registry_repo / ".github" / "workflows" / "gate.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text("name: gate\n")
    plan = gate.plan_gates(registry, base)
    assert plan.jobs == [] and plan.self_changes is not None
    assert plan.self_changes.tool_paths == ["tools/ggufops/gate.py"]
    assert plan.self_changes.workflow_paths == [".github/workflows/gate.yml"]
    assert not plan.self_changes.policy_changed
    text = report.render_markdown(gate.GateReport(plan.base, plan.base_sha, [],
                                                  bench.provenance(bench.Settings()),
                                                  policy_source=plan.policy_source,
                                                  self_changes=plan.self_changes))
    assert "### ⚠️ Gate code changed: not applied to itself" in text
    assert "`tools/ggufops/gate.py`" in text and "### ⚠️ Workflows changed" in text
    assert "Policy change" not in text


def test_a_pair_is_measured_once_for_every_environment(toy_registry: Path,
                                                       toy_models: ToyModels,
                                                       tmp_path: Path) -> None:
    set_environment(toy_registry, "staging", {"toy": "1.0.0"})
    git_commit(toy_registry, "toy 1.0.0 in staging")
    register_toy(toy_registry, toy_models["improved"], "toy", "1.1.0", parent="1.0.0")
    for env in ("staging", "production"):
        set_environment(toy_registry, env, {"toy": "1.1.0"})
    out = tmp_path / "gate.json"
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "gate", "--base", "main",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    first, second = data["gates"]
    assert (first["env"], second["env"]) == ("production", "staging")
    assert first["samples"] == second["samples"] and second["timings_s"] == {}
    assert "measured once in this run (for production) and judged again with staging's " \
        "policy" in second["notes"]



def test_speed_is_measured_again_where_another_policy_lets_quality_pass(
        toy_registry: Path, toy_models: ToyModels, tmp_path: Path) -> None:
    """production blocks the degraded toy on quality (no speed measured); staging allows
    90% and needs the speed figures, so the same pair is measured again there."""
    path = toy_registry / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["gates"]["environments"] = {"staging": {"max_degradation": 0.9}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    set_environment(toy_registry, "staging", {"toy": "1.0.0"})
    git_commit(toy_registry, "a lenient staging, toy 1.0.0 there")
    register_toy(toy_registry, toy_models["degraded"], "toy", "1.2.0", parent="1.0.0")
    for env in ("staging", "production"):
        set_environment(toy_registry, env, {"toy": "1.2.0"})
    out = tmp_path / "gate.json"
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "gate", "--base", "main",
                                       "--json", str(out)])
    assert result.exit_code == 1
    production, staging = json.loads(out.read_text())["gates"]
    assert (production["verdict"], staging["verdict"]) == ("fail", "pass")
    assert production["samples"] == {} and staging["samples"] != {}
    assert not any(n.startswith("measured once") for n in staging["notes"])


def test_changed_policy_keys_are_listed_leaf_by_leaf() -> None:
    from ggufops.gates import policy as gatepolicy

    before = {"gates": {"default": {"max_degradation": 0.05, "speed": {"rounds": 3}}},
              "retention": {"agent_keep_last": 3}}
    after = {"gates": {"default": {"max_degradation": 0.9, "speed": {"rounds": 3},
                                   "quantization_budget": {"q4_0": 0.5}}},
             "retention": {"agent_keep_last": 3}}
    assert gatepolicy.changed_keys(before, after) == [
        ("gates.default.max_degradation", 0.05, 0.9),
        ("gates.default.quantization_budget", None, {"q4_0": 0.5})]
    assert gatepolicy.changed_keys(before, before) == []


def test_without_a_base_policy_the_working_tree_s_is_used(registry_repo: Path) -> None:
    from ggufops.gates import policy as gatepolicy

    head = Registry(registry_repo).policy()
    assert gatepolicy.judging_policy(registry_repo, None, head) == (
        head, "the working tree (no base commit)")
    (registry_repo / "registry" / "policy.yaml").write_text("gates: [unclosed\n")
    git_commit(registry_repo, "a broken policy")
    broken = git(registry_repo, "rev-parse", "HEAD")
    policy, source = gatepolicy.judging_policy(registry_repo, broken, head)
    assert policy is head and source.endswith("(the base's registry/policy.yaml does not "
                                              "parse)")
