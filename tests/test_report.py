"""The gate report: Markdown for people, JSON for machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufops import gate, report

PROVENANCE = {"llama_cpp_python": "0.3.36", "llama_cpp": "abc1234 (ggml 0.25.3)",
              "cpu": "Test CPU", "threads": 1}


def failed_gate() -> gate.ModelGate:
    g = gate.ModelGate("production", "toy", "version", "toy@1.1.0", "toy@1.0.0",
                       "toy-v1.1.0-f32", "toy-v1.0.0-f32", "pydoc-heldout-v1", "42e07b2e595c" * 5)
    g.rows = [
        gate.Row("perplexity", 16.8047, 24.1085, 0.4346, "≤ +5.0%", gate.FAIL, "", 0.05),
        gate.Row("kl_divergence", None, 0.36125, None, "reported", gate.INFO, "nats/token"),
        gate.Row("top1_agreement", None, 0.5407, None, "reported", gate.INFO),
        gate.Row("tg_tokens_per_s", 12000.0, 11800.0, -0.0167, "≥ -8.0% (incl. noise 3.0%)",
                 gate.PASS, "tokens/s", -0.08),
    ]
    g.notes = ["quality reference: toy-v1.0.0-f32 (same quantization, f32)"]
    g.fail("toy@1.1.0 in production: perplexity 24.11 vs 16.8 (+43.5%, limit +5.0%)")
    g.samples = {"baseline": {"tg_tokens_per_s": [12000.0, 12100.0]},
                 "candidate": {"tg_tokens_per_s": [11800.0, 11700.0]}}
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
                           {"fetch": 0.5, "smoke": 1.0, "quality": 0.4, "speed": 1.2})


def test_markdown_has_verdict_line_and_a_table_per_model() -> None:
    md = report.render_markdown(sample_report())
    lines = md.splitlines()
    assert lines[0] == "## ❌ ggufops gate FAILED"
    assert lines[2] == ("gate failed: toy@1.1.0 in production: perplexity 24.11 vs 16.8 "
                        "(+43.5%, limit +5.0%).")
    assert "Base: `merge-base(HEAD, origin/main) (0123456789ab)`." in lines
    assert "### ❌ **fail** · `toy` in **production**: 1.0.0 → 1.1.0" in lines
    assert "### ✅ pass · `new` in **staging**: (new) → 0.1.0" in lines
    assert md.count("| metric | baseline | candidate | change | threshold | verdict |") == 2
    assert "| perplexity (lower is better) | 16.805 | 24.108 | +43.5% | ≤ +5.0% | ❌ **fail** |" \
        in lines
    assert "| top-1 agreement with baseline |  | 54.1% |  | reported | info |" in lines
    assert "| generation (tokens/s) | 12,000 | 11,800 | -1.7% | ≥ -8.0% (incl. noise 3.0%) | " \
           "✅ pass |" in lines
    assert "> **toy@1.1.0 in production: perplexity 24.11 vs 16.8 (+43.5%, limit +5.0%)**" in lines
    assert "- candidate tg_tokens_per_s: 11,800, 11,700" in lines
    assert "| perplexity (lower is better), policy minimum |  | 16.800 |  | ≤ 100 (policy " \
        "minimums.max_perplexity) | ✅ pass |" in lines
    assert any(ln.startswith("<sub>Speed: candidate and baseline run back to back") for ln in lines)
    assert lines[-1] == ("<sub>llama-cpp-python 0.3.36 · llama.cpp abc1234 (ggml 0.25.3) · "
                         "Test CPU · 1 thread(s) · fetch 0.5 s, smoke 1.0 s, quality 0.4 s, "
                         "speed 1.2 s</sub>")


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
                                "against": "baseline"}
    assert first["samples"]["candidate"]["tg_tokens_per_s"] == [11800.0, 11700.0]
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
