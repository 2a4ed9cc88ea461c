"""The gate's report: Markdown for $GITHUB_STEP_SUMMARY or a PR comment, and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ggufops.atomic import atomic_write_text
from ggufops.gate import FAIL, INFO, PASS, GateReport, ModelGate, Row

VERDICTS = {PASS: "✅ pass", FAIL: "❌ **fail**", INFO: "info"}
LABELS = {
    "perplexity": "perplexity (lower is better)",
    "kl_divergence": "KL divergence vs baseline (nats/token)",
    "top1_agreement": "top-1 agreement with baseline",
    "pp_tokens_per_s": "prompt processing (tokens/s)",
    "tg_tokens_per_s": "generation (tokens/s)",
    "latency_p95_ms": "request latency p95 (ms)",
    "smoke_test": "smoke test",
}


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "top1_agreement":
        return f"{value:.1%}"
    if metric == "kl_divergence":
        return f"{value:.4f}"
    if metric.endswith("tokens_per_s"):
        return f"{value:,.0f}"
    if metric.endswith("_ms"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_change(change: float | None) -> str:
    return "" if change is None else f"{change * 100:+.1f}%"


SPEED_NOTE = (
    "<sub>Speed: candidate and baseline run back to back, alternating, in each of the "
    "policy's rounds; *change* is the median over rounds of the candidate/baseline ratio "
    "of those paired runs (so it can differ from the ratio of the pooled figures shown), and "
    "the threshold adds the spread of those ratios between rounds (noise). Perplexity is "
    "deterministic and compared as is.</sub>"
)


def _label(row: Row) -> str:
    label = LABELS.get(row.metric, row.metric)
    return f"{label}, policy minimum" if row.against == "minimum" else label


def _row(row: Row) -> str:
    cells = [_label(row), fmt_value(row.metric, row.baseline),
             fmt_value(row.metric, row.candidate), fmt_change(row.change), row.threshold,
             VERDICTS.get(row.verdict, row.verdict)]
    return "| " + " | ".join(cells) + " |"


def _title(gate: ModelGate) -> str:
    what = "canary " if gate.role == "canary" else ""
    frm = gate.baseline.split("@")[1] if gate.baseline else "(new)"
    to = gate.candidate.split("@")[1]
    return (f"### {VERDICTS[gate.verdict]} · `{gate.model}` {what}in **{gate.env}**: "
            f"{frm} → {to}")


def model_section(gate: ModelGate) -> list[str]:
    lines = [_title(gate), ""]
    against = f" vs baseline `{gate.baseline_label}`" if gate.baseline_label else ""
    lines.append(f"Candidate `{gate.candidate_label}`{against}; eval set `{gate.eval_set}` "
                 f"(sha256 `{gate.eval_sha256[:12]}`).")
    lines += [""] + [f"- {note}" for note in gate.notes] + [""] if gate.notes else [""]
    lines += ["| metric | baseline | candidate | change | threshold | verdict |",
              "|---|---:|---:|---:|---|---|"]
    lines += [_row(r) for r in gate.rows]
    if gate.failures:
        lines += [""] + [f"> **{f}**" for f in gate.failures]
    lines += _samples(gate)
    return [*lines, ""]


def _samples(gate: ModelGate) -> list[str]:
    if not gate.samples:
        return []
    lines = ["", "<details><summary>per-round figures</summary>", ""]
    for side, series in gate.samples.items():
        for metric, values in series.items():
            shown = ", ".join(fmt_value(metric, v) for v in values)
            lines.append(f"- {side} {metric}: {shown}")
    return [*lines, "", "</details>"]


def render_markdown(report: GateReport) -> str:
    """The whole report: a verdict line, one table per model, then provenance."""
    head = "✅ ggufops gate passed" if report.passed else "❌ ggufops gate FAILED"
    base = f"{report.base}" + (f" ({report.base_sha[:12]})" if report.base_sha else "")
    lines = [f"## {head}", "", f"{report.summary()}.", "", f"Base: `{base}`.", ""]
    if not report.gates:
        lines += ["No model version changes in any environment: nothing to gate.", ""]
    for gate in report.gates:
        lines += model_section(gate)
    if any(r.metric.endswith(("_per_s", "_ms")) for g in report.gates for r in g.rows):
        lines += [SPEED_NOTE, ""]
    p = report.provenance
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings_s.items())
    lines.append(f"<sub>llama-cpp-python {p['llama_cpp_python']} · llama.cpp {p['llama_cpp']} · "
                 f"{p['cpu']} · {p['threads']} thread(s)" + (f" · {phases}" if phases else "")
                 + "</sub>")
    return "\n".join(lines) + "\n"


def render_json(report: GateReport) -> str:
    return json.dumps(report.to_json(), indent=2, default=str) + "\n"


def write_report(path: Path, text: str) -> None:
    """Write `text` to `path`; append instead when `path` is $GITHUB_STEP_SUMMARY."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and Path(summary).resolve() == path.resolve():
        with path.open("a", encoding="utf-8") as f:
            f.write(text)
        return
    atomic_write_text(path, text)
