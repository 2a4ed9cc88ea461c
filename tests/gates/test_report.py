"""The gate report: Markdown for people, JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufops.gates import gate, report

PROVENANCE = {"llama_cpp_python": "0.3.36", "llama_cpp": "abc1234 (ggml 0.25.3)",
              "cpu": "Test CPU", "threads": 1}


def failed_gate() -> gate.ModelGate:
    g = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0",
                       "toy-v1.1.0-f32", "toy-v1.0.0-f32", "pydoc-heldout-v1", "42e07b2e595c" * 5)
    g.rows = [
        gate.Row("perplexity", 16.8047, 24.1085, 0.4346, "≤ +5.0%", gate.FAIL, "", 0.05),
        gate.Row("kl_divergence", None, 0.36125, None, "reported", gate.INFO, "nats/token"),
        gate.Row("top1_agreement", None, 0.5407, None, "reported", gate.INFO),
        gate.Row("tg_tokens_per_s", 12000.0, 11800.0, -0.0167, "≥ -5.0% (max_degradation)",
                 gate.PASS, "tokens/s", -0.05, ci_low=-0.04, ci_high=0.006,
                 decision="within"),
        gate.Row("latency_ms", 2.10, 2.16, 0.028, "≤ +5.0% (max_degradation)", gate.PASS, "ms",
                 0.05, ci_low=-0.01, ci_high=0.07, decision="inconclusive"),
    ]
    g.rule, g.per = "same quantization", "token"
    g.quality = {"per": "token", "n_tokens": 4096}
    g.notes = ["quality reference: toy-v1.0.0-f32, rule: same quantization"]
    g.fail("toy@1.1.0 in production: perplexity 24.11 vs 16.8 (+43.5%, limit +5.0%)")
    g.warn("latency_ms: inconclusive (95% CI -1.0% to +7.0%, 16 pairs in 4 rounds, straddles "
           "the limit +5.0%; max_rounds reached): passed (gates.speed.inconclusive: pass)")
    g.speed = {"rounds": 4, "min_rounds": 3, "max_rounds": 4, "pairs_per_round": [4, 4, 4, 4],
               "stopped": "max_rounds", "confidence": 0.95, "max_slowdown": 0.05,
               "slowdown_key": "max_degradation", "threads": 2,
               "plan": {"pp_tokens": 512, "pp_repeat": 2, "tg_tokens": 64, "tg_repeat": 3,
                        "latency_max_tokens": 16, "latency_repeat": 4, "clock": "wall time"}}
    g.samples = {"baseline": {"tg_tokens_per_s": [[12000.0, 12200.0], [12100.0]]},
                 "candidate": {"tg_tokens_per_s": [[11800.0, 11600.0], [11700.0]]}}
    g.timings_s = {"smoke": 1.0, "load": 0.1, "quality": 0.4, "speed": 1.2}
    g.time_budget_s = 60
    return g


def passed_gate() -> gate.ModelGate:
    g = gate.ModelGate("staging", "new", "version", "new@0.1.0", None, "new-v0.1.0-q4_0", None,
                       "pydoc-heldout-v1", "42e07b2e595c" * 5)
    g.rows = [gate.Row("perplexity", None, 16.8, None, "≤ 100 (policy minimums.max_perplexity)",
                       gate.PASS, "", 100.0, "minimum")]
    g.notes = ["new model in this environment (no baseline): held to policy minimums"]
    return g


def sample_report() -> gate.GateReport:
    return gate.GateReport("merge-base(HEAD, origin/main)", "0123456789abcdef" * 2 + "01234567",
                           [failed_gate(), passed_gate()], PROVENANCE,
                           {"fetch": 0.5, "smoke": 1.0, "quality": 0.4, "speed": 1.2},
                           "the base (0123456789ab:registry/policy.yaml)")


def test_markdown_has_verdict_line_and_a_table_per_model() -> None:
    md = report.render_markdown(sample_report())
    lines = md.splitlines()
    assert lines[0] == "## ❌ ggufops gate FAILED"
    assert lines[2] == ("gate failed: toy@1.1.0 in production: perplexity 24.11 vs 16.8 "
                        "(+43.5%, limit +5.0%).")
    assert "Base: `merge-base(HEAD, origin/main) (0123456789ab)`. Policy: the base " \
           "(0123456789ab:registry/policy.yaml)." in lines
    assert "### ❌ **fail** · `toy` in **production**: 1.0.0 → 1.1.0" in lines
    assert "### ✅ pass · `new` in **staging**: (new) → 0.1.0" in lines
    assert md.count("| metric | baseline | candidate | change | threshold | verdict |") == 2
    assert "| perplexity (lower is better) | 16.805 | 24.108 | +43.5% | ≤ +5.0% | ❌ **fail** |" \
        in lines
    assert "| top-1 agreement with baseline |  | 54.1% |  | reported | info |" in lines
    assert "| generation (tokens/s) | 12,000 | 11,800 | -1.7% [-4.0%, +0.6%] | ≥ -5.0% " \
           "(max_degradation) | ✅ pass (within) |" in lines
    assert "| request latency (ms) | 2.10 | 2.16 | +2.8% [-1.0%, +7.0%] | ≤ +5.0% " \
           "(max_degradation) | ✅ pass (inconclusive ⚠️) |" in lines
    assert "> **toy@1.1.0 in production: perplexity 24.11 vs 16.8 (+43.5%, limit +5.0%)**" in lines
    assert any(ln.startswith("> ⚠️ latency_ms: inconclusive") for ln in lines)
    assert "- candidate tg_tokens_per_s: 11,700, 11,700" in lines  # each round's median
    assert "| perplexity (lower is better), policy minimum |  | 16.800 |  | ≤ 100 (policy " \
        "minimums.max_perplexity) | ✅ pass |" in lines
    assert "- **Quality**, per token (4,096 tokens of the eval set): rule *same quantization*." \
        in lines
    speed = next(ln for ln in lines if ln.startswith("- **Speed**: "))
    assert speed.startswith("- **Speed**: 4 round(s) (at least 3, at most 4; stopped: "
                            "max_rounds), each on fresh loads with 4 back-to-back pairs of runs "
                            "per metric, timed by wall time.")
    assert "95% confidence interval from a bootstrap over rounds and pairs" in speed
    assert "(max_degradation 5%)" in speed and "2 thread(s)." in speed
    assert "- **Time**: 2.7 s of the 60 s budget (smoke 1.0 s, load 0.1 s, quality 0.4 s, " \
           "speed 1.2 s)." in lines
    assert lines[-1] == ("<sub>llama-cpp-python 0.3.36 · llama.cpp abc1234 (ggml 0.25.3) · "
                         "Test CPU · 1 thread(s) · fetch 0.5 s, smoke 1.0 s, quality 0.4 s, "
                         "speed 1.2 s</sub>")


def test_policy_changes_get_their_own_section() -> None:
    changes = gate.SelfChanges([("gates.default.max_degradation", 0.05, 0.9),
                                ("gates.default.quantization_budget.q4_0", None, 0.5)], True,
                               [f"tools/ggufops/m{i}.py" for i in range(7)], [])
    data = sample_report()
    data.self_changes = changes
    lines = report.render_markdown(data).splitlines()
    at = lines.index("### ⚠️ Policy change not applied to itself")
    assert lines[at + 2].startswith("This change edits `registry/policy.yaml`. The gate judged "
                                    "it with the policy of the base (0123456789ab:registry/"
                                    "policy.yaml); the new policy applies")
    assert "| `gates.default.max_degradation` | `0.05` | `0.9` |" in lines
    assert "| `gates.default.quantization_budget.q4_0` | (none) | `0.5` |" in lines
    assert at < lines.index("### ❌ **fail** · `toy` in **production**: 1.0.0 → 1.1.0")
    tools = next(ln for ln in lines if ln.startswith("This change edits ggufops itself"))
    assert "`tools/ggufops/m4.py` and 2 more" in tools
    assert "### ⚠️ Workflows changed" not in lines


def test_markdown_for_nothing_to_gate() -> None:
    md = report.render_markdown(gate.GateReport("HEAD~1", None, [], PROVENANCE))
    assert md.startswith("## ✅ ggufops gate passed\n\ngate passed: 0 model change(s) checked "
                         "against HEAD~1.\n")
    assert "No model version changes in any environment: nothing to gate." in md


def test_json_holds_every_number() -> None:
    data = json.loads(report.render_json(sample_report()))
    assert data["passed"] is False
    assert data["summary"].startswith("gate failed: toy@1.1.0 in production: perplexity")
    first = data["gates"][0]
    assert first["rows"][0] == {"metric": "perplexity", "baseline": 16.8047,
                                "candidate": 24.1085, "change": 0.4346, "threshold": "≤ +5.0%",
                                "verdict": "fail", "unit": "", "limit": 0.05,
                                "against": "baseline", "ci_low": None, "ci_high": None,
                                "decision": "", "rule": ""}
    assert first["rows"][3]["ci_low"] == -0.04 and first["rows"][3]["decision"] == "within"
    assert first["samples"]["candidate"]["tg_tokens_per_s"] == [[11800.0, 11600.0], [11700.0]]
    assert first["speed"]["rounds"] == 4 and first["warnings"][0].startswith("latency_ms:")
    assert data["policy_source"] == "the base (0123456789ab:registry/policy.yaml)"
    assert data["provenance"] == PROVENANCE
    assert data["timings_s"]["speed"] == 1.2


def test_report_appends_to_github_step_summary(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report.write_report(summary, "## gate\n")
    assert summary.read_text() == "earlier step\n## gate\n"
    other = tmp_path / "report.md"
    other.write_text("old")
    report.write_report(other, "new\n")
    assert other.read_text() == "new\n"
