"""What the gate found, as data: the two sides of a comparison, its rows and verdicts.

Plain records shared by the gate's parts (gate.py runs them, gatequality.py and
gatespeed.py fill in rows, report.py renders them); nothing here measures anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufops.artifacts.ggufheader import read_header
from ggufops.hashing import file_sha256
from ggufops.registry.registry import display_id

PASS, FAIL, INFO = "pass", "fail", "info"


@dataclass(frozen=True)
class Subject:
    """One side of a comparison: a registered version and its local, verified artifact."""

    ref: str
    label: str
    quantization: str
    sha256: str
    path: Path
    architecture: str = ""  # "" when unknown: then the eval tokens decide comparability
    tokenizer_sha256: str = ""
    chat_template: str | None = None  # inference.prompt_template: the smoke test's chat turn

    @classmethod
    def of(cls, doc: dict[str, Any], path: Path) -> Subject:
        header = doc.get("gguf") or {}
        return cls(f"{doc['name']}@{doc['version']}", display_id(doc), str(doc["quantization"]),
                   str(doc["artifact"]["sha256"]), path, str(header.get("architecture", "")),
                   str(header.get("tokenizer_sha256", "")),
                   (doc.get("inference") or {}).get("prompt_template"))

    @classmethod
    def from_file(cls, ref: str, path: Path) -> Subject:
        """A subject read from the file itself (its header and sha256), e.g. for a benchmark."""
        header = read_header(path)
        name, _, version = ref.partition("@")
        return cls(ref, f"{name}-v{version}-{header.quantization}", header.quantization,
                   file_sha256(path), path, header.architecture, header.tokenizer_sha256)


@dataclass
class Row:
    metric: str
    baseline: float | None
    candidate: float | None
    change: float | None  # (candidate - baseline) / baseline
    threshold: str
    verdict: str
    unit: str = ""
    limit: float | None = None  # the allowed relative change (signed), or absolute bound
    against: str = "baseline"  # or "minimum" (policy minimums), "" (reported only)
    ci_low: float | None = None  # speed: the confidence interval of `change`
    ci_high: float | None = None
    decision: str = ""  # speed: slower | within | inconclusive
    rule: str = ""  # the policy key(s) behind the threshold


@dataclass(frozen=True)
class SelfChanges:
    """What a pull request changes in the rules that judge it (see gatepolicy.py)."""

    policy_keys: list[tuple[str, Any, Any]]  # (dotted key, base value, new value)
    policy_changed: bool  # registry/policy.yaml differs (even if only in comments)
    tool_paths: list[str]  # tools/... files that differ
    workflow_paths: list[str]  # .github/workflows/... files that differ

    @property
    def any(self) -> bool:
        return self.policy_changed or bool(self.tool_paths or self.workflow_paths)


@dataclass
class ModelGate:
    env: str
    model: str
    role: str
    candidate: str
    baseline: str | None
    candidate_label: str = ""
    baseline_label: str | None = None
    eval_set: str = ""
    eval_sha256: str = ""
    verdict: str = PASS
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rule: str = ""  # the quality rule that decided, in words
    per: str = ""  # token | byte: how quality was compared
    quality: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)  # rounds, pairs, stop reason, plan
    samples: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    time_budget_s: float | None = None

    def fail(self, message: str) -> None:
        self.verdict = FAIL
        self.failures.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@dataclass
class GateReport:
    base: str
    base_sha: str | None
    gates: list[ModelGate]
    provenance: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    policy_source: str = ""
    self_changes: SelfChanges | None = None

    @property
    def passed(self) -> bool:
        return all(g.verdict != FAIL for g in self.gates)

    def summary(self) -> str:
        """One line: the verdict and, for a failure, model, metric and numbers."""
        failures = [f for g in self.gates for f in g.failures]
        if not failures:
            return f"gate passed: {len(self.gates)} model change(s) checked against {self.base}"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"gate failed: {failures[0]}{more}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["summary"] = self.summary()
        return data
