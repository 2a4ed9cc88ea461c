"""The gate's report: Markdown for $GITHUB_STEP_SUMMARY or a PR comment, and JSON."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from ggufops.atomic import atomic_write_text
from ggufops.gates.result import FAIL, INFO, PASS, GateReport, ModelGate, Row, SelfChanges

VERDICTS = {PASS: "✅ pass", FAIL: "❌ **fail**", INFO: "info"}
LABELS = {
    "perplexity": "perplexity (lower is better)",
    "bits_per_byte": "bits per byte (lower is better)",
    "kl_divergence": "KL divergence vs baseline (nats/token)",
    "top1_agreement": "top-1 agreement with baseline",
    "pp_tokens_per_s": "prompt processing (tokens/s)",
    "tg_tokens_per_s": "generation (tokens/s)",
    "latency_ms": "request latency (ms)",
    "latency_p95_ms": "request latency p95 (ms)",
    "smoke_test": "smoke test",
}


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric == "top1_agreement":
        return f"{value:.1%}"
    if metric in ("kl_divergence", "bits_per_byte"):
        return f"{value:.4f}"
    if metric.endswith("_per_s"):
        return f"{value:,.0f}"
    if metric.endswith("_ms"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_change(change: float | None) -> str:
    return "" if change is None else f"{change * 100:+.1f}%"


def _label(row: Row) -> str:
    label = LABELS.get(row.metric, row.metric)
    if row.unit == "bytes/s":
        label = label.replace("tokens/s", "bytes/s")
    return f"{label}, policy minimum" if row.against == "minimum" else label


def _change(row: Row) -> str:
    if row.ci_low is None or row.ci_high is None:
        return fmt_change(row.change)
    return f"{fmt_change(row.change)} [{fmt_change(row.ci_low)}, {fmt_change(row.ci_high)}]"


def _verdict(row: Row) -> str:
    verdict = VERDICTS.get(row.verdict, row.verdict)
    if row.decision == "inconclusive" and row.verdict == PASS:
        return f"{verdict} (inconclusive ⚠️)"
    return f"{verdict} ({row.decision})" if row.decision else verdict


def _row(row: Row) -> str:
    cells = [_label(row), fmt_value(row.metric, row.baseline),
             fmt_value(row.metric, row.candidate), _change(row), row.threshold, _verdict(row)]
    return "| " + " | ".join(cells) + " |"


def _title(gate: ModelGate) -> str:
    what = "canary " if gate.role == "canary" else ""
    frm = gate.baseline.split("@")[1] if gate.baseline else "(new)"
    to = gate.candidate.split("@")[1]
    return (f"### {VERDICTS[gate.verdict]} · `{gate.model}` {what}in **{gate.env}**: "
            f"{frm} → {to}")


def _how(gate: ModelGate) -> list[str]:
    """Bullets that explain the verdict: the quality rule, the speed statistic, the time."""
    lines = []
    if gate.rule:
        count = gate.quality.get("n_tokens") or gate.quality.get("n_bytes")
        unit = "tokens" if gate.per == "token" else "bytes"
        lines.append(f"- **Quality**, per {gate.per} ({count:,} {unit} of the eval set): "
                     f"rule *{gate.rule}*.")
    if gate.speed:
        lines.append(f"- **Speed**: {_speed_text(gate.speed)}")
    if gate.timings_s:
        total = sum(gate.timings_s.values())
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in gate.timings_s.items())
        budget = f" of the {gate.time_budget_s:g} s budget" if gate.time_budget_s else ""
        lines.append(f"- **Time**: {total:.1f} s{budget} ({phases}).")
    return lines


def _speed_text(speed: dict[str, Any]) -> str:
    plan = speed.get("plan") or {}
    runs = (f" One run: {plan['pp_repeat']} pp of {plan['pp_tokens']} tokens, "
            f"{plan['tg_repeat']} tg of {plan['tg_tokens']} tokens, or {plan['latency_repeat']} "
            f"request(s) with {plan['latency_max_tokens']} new tokens; "
            f"{speed['threads']} thread(s).") if plan else ""
    pairs = sorted(set(speed["pairs_per_round"])) or [0]
    per_round = f"{pairs[0]} to {pairs[-1]}" if len(pairs) > 1 else str(pairs[0])
    return (f"{speed['rounds']} round(s) (at least {speed['min_rounds']}, at most "
            f"{speed['max_rounds']}; stopped: {speed['stopped']}), each on fresh loads with "
            f"{per_round} back-to-back pairs of runs per metric, timed by "
            f"{plan.get('clock', 'wall time')}. The change is "
            "the median of the paired candidate/baseline ratios, with its "
            f"{speed['confidence']:.0%} confidence interval from a bootstrap over rounds and "
            "pairs; a metric fails only when the whole interval is beyond the limit "
            f"({speed['slowdown_key']} {speed['max_slowdown']:.0%}).{runs}")


def model_section(gate: ModelGate) -> list[str]:
    lines = [_title(gate), ""]
    against = f" vs baseline `{gate.baseline_label}`" if gate.baseline_label else ""
    lines.append(f"Candidate `{gate.candidate_label}`{against}; eval set `{gate.eval_set}` "
                 f"(sha256 `{gate.eval_sha256[:12]}`).")
    lines += [""] + _how(gate) + [f"- {note}" for note in gate.notes] + [""]
    lines += ["| metric | baseline | candidate | change | threshold | verdict |",
              "|---|---:|---:|---:|---|---|"]
    lines += [_row(r) for r in gate.rows]
    if gate.failures:
        lines += [""] + [f"> **{f}**" for f in gate.failures]
    if gate.warnings:
        lines += [""] + [f"> ⚠️ {w}" for w in gate.warnings]
    lines += _samples(gate)
    return [*lines, ""]


def _samples(gate: ModelGate) -> list[str]:
    if not gate.samples:
        return []
    lines = ["", "<details><summary>per-round figures (medians of each round's runs)"
             "</summary>", ""]
    for side, series in gate.samples.items():
        for metric, rounds in series.items():
            shown = ", ".join(fmt_value(metric, statistics.median(r)) for r in rounds if r)
            lines.append(f"- {side} {metric}: {shown}")
    return [*lines, "", "</details>"]


def self_change_sections(changes: SelfChanges | None, source: str) -> list[str]:
    """The sections on what a change does to the rules that judge it."""
    if changes is None or not changes.any:
        return []
    lines: list[str] = []
    if changes.policy_changed:
        lines += ["### ⚠️ Policy change not applied to itself", "",
                  "This change edits `registry/policy.yaml`. The gate judged it with the "
                  f"policy of {source}; the new policy applies to the changes after this one "
                  "merges. A policy change needs its own review (make `registry/policy.yaml` "
                  "a CODEOWNERS path).", ""]
        if changes.policy_keys:
            lines += ["| policy key | base | this change |", "|---|---|---|"]
            lines += [f"| `{key}` | {_yaml_value(old)} | {_yaml_value(new)} |"
                      for key, old, new in changes.policy_keys]
            lines.append("")
    if changes.tool_paths:
        lines += ["### ⚠️ Gate code changed: not applied to itself", "",
                  "This change edits ggufops itself: " + _paths(changes.tool_paths) + ". In "
                  "CI the gate runs the base branch's ggufops (gate.yml installs it from the "
                  "base), so these edits did not judge this change; they need their own "
                  "review (make `tools/` a CODEOWNERS path).", ""]
    if changes.workflow_paths:
        lines += ["### ⚠️ Workflows changed", "",
                  "This change edits " + _paths(changes.workflow_paths) + ". GitHub runs a "
                  "pull request's own workflow files, so this report is only as good as "
                  "they are: review them first (make `.github/workflows/` a CODEOWNERS path).",
                  ""]
    return lines


def _paths(paths: list[str], shown: int = 5) -> str:
    text = ", ".join(f"`{p}`" for p in paths[:shown])
    return text + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _yaml_value(value: Any) -> str:
    return "(none)" if value is None else f"`{json.dumps(value)}`"


def render_markdown(report: GateReport) -> str:
    """The whole report: a verdict line, self-changes, one section per model, provenance."""
    head = "✅ ggufops gate passed" if report.passed else "❌ ggufops gate FAILED"
    base = f"{report.base}" + (f" ({report.base_sha[:12]})" if report.base_sha else "")
    policy = f" Policy: {report.policy_source}." if report.policy_source else ""
    lines = [f"## {head}", "", f"{report.summary()}.", "", f"Base: `{base}`.{policy}", ""]
    lines += self_change_sections(report.self_changes, report.policy_source)
    if not report.gates:
        lines += ["No model version changes in any environment: nothing to gate.", ""]
    for gate in report.gates:
        lines += model_section(gate)
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
