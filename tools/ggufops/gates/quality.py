"""The gate's quality half: measure two models on the eval set, pick the rule, judge.

Which rule compares a candidate with its baseline:

  per byte             the tokenizer or the architecture differs: both score the same bytes
                       of the eval set, every token once, and bits per byte are compared
                       (lm-evaluation-harness's bits_per_byte); per-token perplexities of
                       two tokenizers are not comparable, and KL is not computed;
  same quantization    perplexity may rise by at most max_degradation; KL divergence and
                       top-1 agreement are reported (a new version is meant to differ);
  quantization change  the same tokenizer in another quantization: perplexity by at most
                       max_degradation, plus gates.quantization_budget[candidate type] when
                       the candidate keeps fewer bits per weight; KL divergence and top-1
                       agreement within max_kl_divergence / min_top1_agreement (defaults
                       from llama.cpp's quantization tables, see quantization.py);
  speed only           gates.compare_quality_across_quantization: false, an explicit
                       opt-out for quantization changes, shown as a warning.

Quality is deterministic (a fixed number of eval tokens per model, see
bench.Settings.eval_token_count), so results are cached by what they depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ggufops.errors import EvalSetError
from ggufops.gates import bench
from ggufops.gates.cache import BenchCache
from ggufops.gates.result import FAIL, INFO, PASS, ModelGate, Row, Subject
from ggufops.llama import llm, quantization

PER_TOKEN, PER_BYTE = "token", "byte"


@dataclass
class Side:
    """One loaded model in the comparison, with the eval set's tokens under its tokenizer."""

    subject: Subject
    model: llm.Model
    tokens: list[int]


# --- measuring ---------------------------------------------------------------------------


def why_per_byte(sides: Sequence[Side], n_tokens: int) -> str:
    """Why two models must be compared per byte ("" when per token is sound)."""
    base, cand = (s.subject for s in sides)
    if base.architecture and cand.architecture and base.architecture != cand.architecture:
        return f"the architecture changed ({base.architecture} → {cand.architecture})"
    if base.tokenizer_sha256 and cand.tokenizer_sha256 and \
            base.tokenizer_sha256 != cand.tokenizer_sha256:
        return (f"the tokenizer changed (sha256 {base.tokenizer_sha256[:12]} → "
                f"{cand.tokenizer_sha256[:12]})")
    if sides[0].model.n_vocab != sides[1].model.n_vocab or \
            sides[0].tokens[:n_tokens] != sides[1].tokens[:n_tokens]:
        return "the two models tokenize the eval set differently"
    return ""


def measure(sides: Sequence[Side], eval_set: bench.EvalSet, settings: bench.Settings,
            cache: BenchCache) -> dict[str, Any]:
    """Quality of one model (a new one) or of a pair, per token or per byte."""
    counts = [settings.eval_token_count(llm.n_params(s.model)) for s in sides]
    if len(sides) == 1:
        return {"per": PER_TOKEN, "candidate": _perplexity(sides[0], eval_set, settings,
                                                           cache, counts[0])}
    reason = why_per_byte(sides, min(counts))
    if reason:
        return {"per": PER_BYTE, "why": reason,
                **_per_byte(sides, eval_set, settings, cache, counts)}
    return {"per": PER_TOKEN, **_per_token(sides, eval_set, settings, cache, min(counts))}


def _usable(side: Side, settings: bench.Settings, n_tokens: int) -> list[int]:
    count = min(len(side.tokens), n_tokens) // settings.eval_ctx * settings.eval_ctx
    if not count:
        raise EvalSetError(
            f"eval set has {len(side.tokens)} tokens for {side.subject.label}, fewer than one "
            f"chunk of eval_ctx={settings.eval_ctx}; lower gates.eval_ctx in policy.yaml")
    return side.tokens[:count]


def _perplexity(side: Side, eval_set: bench.EvalSet, settings: bench.Settings,
                cache: BenchCache, n_tokens: int) -> dict[str, Any]:
    tokens = _usable(side, settings, n_tokens)
    key = bench.quality_key(side.subject.sha256, eval_set, settings, len(tokens))
    value, _ = bench.cached_quality(cache, key,
                                    lambda: bench.measure_quality(side.model, tokens, settings))
    return value


def _per_token(sides: Sequence[Side], eval_set: bench.EvalSet, settings: bench.Settings,
               cache: BenchCache, n_tokens: int) -> dict[str, Any]:
    """Both perplexities, KL divergence and top-1 agreement, from cache or one pass."""
    tokens = _usable(sides[0], settings, n_tokens)
    keys = [bench.quality_key(s.subject.sha256, eval_set, settings, len(tokens)) for s in sides]
    div_key = {**keys[0], "candidate_sha256": sides[1].subject.sha256}
    hits = [cache.get("quality", k) for k in keys]
    div = cache.get("divergence", div_key)
    if div is not None and hits[0] is not None and hits[1] is not None:
        return {"baseline": hits[0], "candidate": hits[1], "divergence": div,
                "n_tokens": len(tokens)}
    base, cand, d = llm.quality_pair(sides[0].model, sides[1].model, tokens,
                                     n_ctx=settings.eval_ctx)
    result = {"baseline": asdict(base), "candidate": asdict(cand), "divergence": asdict(d)}
    cache.put("quality", keys[0], result["baseline"])
    cache.put("quality", keys[1], result["candidate"])
    cache.put("divergence", div_key, result["divergence"])
    return {**result, "n_tokens": len(tokens)}


def common_prefix(sides: Sequence[Side], eval_set: bench.EvalSet,
                  counts: Sequence[int]) -> bytes:
    """The eval text both models score per byte: no model gets more tokens than its count
    (bench.Settings.eval_token_count), cut after the last complete line."""
    covered = min(len(llm.detokenize(s.model, s.tokens[:n]))
                  for s, n in zip(sides, counts, strict=True))
    prefix = eval_set.text[:covered]
    cut = prefix.rfind(b"\n")
    return prefix[: cut + 1] if cut > 0 else prefix


def _per_byte(sides: Sequence[Side], eval_set: bench.EvalSet, settings: bench.Settings,
              cache: BenchCache, counts: Sequence[int]) -> dict[str, Any]:
    text = common_prefix(sides, eval_set, counts)
    result: dict[str, Any] = {"n_bytes": len(text)}
    for role, side in zip(("baseline", "candidate"), sides, strict=True):
        key = {**bench.quality_key(side.subject.sha256, eval_set, settings, 0),
               "text_bytes": len(text)}
        value = cache.get("per_byte", key)
        if value is None:
            nll = llm.text_nll(side.model, text, n_ctx=settings.eval_ctx)
            value = {**asdict(nll), "bits_per_byte": nll.bits_per_byte}
            cache.put("per_byte", key, value)
        result[role] = value
    return result


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRule:
    """How one candidate's quality is judged against its baseline."""

    name: str  # same quantization | quantization change | quantization budget | per byte | ...
    allowed: float  # the relative rise of perplexity (or bits per byte) allowed
    allowed_text: str  # e.g. "max_degradation 5% + quantization_budget.q4_0 12%"
    max_kl: float | None  # None: KL reported, not judged
    min_top1: float | None
    kl_key: str = ""
    top1_key: str = ""
    judged: bool = True  # False: the speed-only opt-out
    explanation: str = ""


def choose_rule(candidate: Subject, baseline: Subject, per: str, why: str,
                policy: dict[str, Any]) -> QualityRule:
    """The rule for this pair under `policy` (a merged `gates` entry)."""
    degradation = float(policy["max_degradation"])
    plain = f"max_degradation {degradation:.0%}"
    if per == PER_BYTE:
        return QualityRule("per byte", degradation, plain, None, None, explanation=(
            f"{why}: compared in bits per byte over the same bytes of the eval set, every "
            "token scored once (per-token perplexities of different tokenizers are not "
            f"comparable; KL divergence is not computed); bits per byte may rise by at most "
            f"{degradation:.0%} (max_degradation)"))
    if candidate.quantization == baseline.quantization:
        return QualityRule("same quantization", degradation, plain, None, None, explanation=(
            f"same quantization ({candidate.quantization}): perplexity may rise by at most "
            f"{degradation:.0%} (max_degradation); KL divergence and top-1 agreement are "
            "reported, not judged (a new version is meant to differ)"))
    return _quantization_rule(candidate.quantization, baseline.quantization, policy)


def _quantization_rule(cand_q: str, base_q: str, policy: dict[str, Any]) -> QualityRule:
    degradation = float(policy["max_degradation"])
    step = f"{base_q} → {cand_q}"
    if policy.get("compare_quality_across_quantization") is False:
        return QualityRule("speed only (policy opt-out)", degradation, "", None, None,
                           judged=False, explanation=(
                               f"quantization change {step}: quality NOT compared "
                               "(gates.compare_quality_across_quantization: false); the "
                               "candidate is held to minimums.max_perplexity only"))
    budget = _budget_entry(policy, cand_q) if quantization.is_lower(cand_q, base_q) else None
    max_kl = float(policy.get("max_kl_divergence", quantization.DEFAULT_MAX_KL))
    min_top1 = float(policy.get("min_top1_agreement", quantization.DEFAULT_MIN_TOP1))
    if budget is None:
        lower = quantization.is_lower(cand_q, base_q)
        what = (f"quantization step {step} (fewer bits per weight; no "
                f"gates.quantization_budget entry for {cand_q})" if lower
                else f"quantization change {step}")
        return QualityRule("quantization change", degradation,
                           f"max_degradation {degradation:.0%}", max_kl, min_top1,
                           "max_kl_divergence", "min_top1_agreement", explanation=(
                               f"{what}: perplexity may rise by at most {degradation:.0%} "
                               f"(max_degradation); KL divergence ≤ {max_kl:g} and top-1 "
                               f"agreement ≥ {min_top1:.0%} (defaults from llama.cpp's "
                               "quantization tables)"))
    key = f"quantization_budget.{cand_q}"
    extra = float(budget.get("perplexity", 0.0))
    max_kl = float(budget.get("max_kl_divergence", max_kl))
    min_top1 = float(budget.get("min_top1_agreement", min_top1))
    kl_key = f"{key}.max_kl_divergence" if "max_kl_divergence" in budget else "max_kl_divergence"
    top1_key = (f"{key}.min_top1_agreement" if "min_top1_agreement" in budget
                else "min_top1_agreement")
    return QualityRule(
        "quantization budget", degradation + extra,
        f"max_degradation {degradation:.0%} + {key} {extra:.0%}", max_kl, min_top1, kl_key,
        top1_key, explanation=(
            f"quantization step {step} (fewer bits per weight) allowed by gates.{key}: "
            f"perplexity may rise by {degradation:.0%} + {extra:.0%} = "
            f"{degradation + extra:.0%}; KL divergence ≤ {max_kl:g}, top-1 agreement ≥ "
            f"{min_top1:.0%}"))


def _budget_entry(policy: dict[str, Any], quant: str) -> dict[str, Any] | None:
    """gates.quantization_budget[quant] as a mapping ({perplexity, max_kl_divergence, ...})."""
    entry = (policy.get("quantization_budget") or {}).get(quant)
    if entry is None:
        return None
    return {"perplexity": float(entry)} if isinstance(entry, (int, float)) else dict(entry)


# --- judging ------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def judge(gate: ModelGate, rule: QualityRule, quality: dict[str, Any],
          policy: dict[str, Any]) -> None:
    """Rows and failures for quality under `rule`."""
    gate.rule, gate.per = rule.name, quality["per"]
    gate.notes.append(f"quality rule: {rule.explanation}")
    if quality["per"] == PER_BYTE:
        _bits_per_byte_row(gate, rule, quality)
        return
    base = float(quality["baseline"]["perplexity"])
    cand = float(quality["candidate"]["perplexity"])
    if not rule.judged:
        gate.rows.append(Row("perplexity", base, cand, (cand - base) / base, "not compared",
                             INFO, rule="compare_quality_across_quantization"))
        gate.warn(f"quality not compared: {rule.explanation}")
        minimum_rows(gate, {"perplexity": cand}, policy, ["perplexity"])
    else:
        _rise_row(gate, "perplexity", base, cand, rule)
    _divergence_rows(gate, rule, quality.get("divergence"))


def _rise_row(gate: ModelGate, metric: str, base: float, cand: float, rule: QualityRule, *,
              unit: str = "") -> None:
    change = (cand - base) / base
    verdict = FAIL if change > rule.allowed else PASS
    plain = rule.name != "quantization budget"
    threshold = f"≤ {_pct(rule.allowed)}" + ("" if plain else f" ({rule.allowed_text})")
    gate.rows.append(Row(metric, base, cand, change, threshold, verdict, unit, rule.allowed,
                         rule=rule.allowed_text))
    if verdict == FAIL:
        limit = f"limit {_pct(rule.allowed)}" + ("" if plain else f" = {rule.allowed_text}")
        name = metric.replace("_", " ")
        gate.fail(f"{gate.candidate} in {gate.env}: {name} {cand:.4g} vs {base:.4g} "
                  f"({_pct(change)}, {limit})")


def _bits_per_byte_row(gate: ModelGate, rule: QualityRule, quality: dict[str, Any]) -> None:
    base, cand = quality["baseline"], quality["candidate"]
    gate.notes.append(
        f"per byte over the first {quality['n_bytes']:,} bytes of the eval set: baseline "
        f"{base['n_tokens']:,} tokens, candidate {cand['n_tokens']:,} tokens")
    _rise_row(gate, "bits_per_byte", float(base["bits_per_byte"]),
              float(cand["bits_per_byte"]), rule, unit="bits/byte")


def _divergence_rows(gate: ModelGate, rule: QualityRule, div: dict[str, Any] | None) -> None:
    if not div:
        return
    kl, top1 = float(div["kl_mean"]), float(div["top1_agreement"])
    if rule.max_kl is None or rule.min_top1 is None:
        gate.rows.append(Row("kl_divergence", None, kl, None, "reported", INFO, "nats/token",
                             None, ""))
        gate.rows.append(Row("top1_agreement", None, top1, None, "reported", INFO, "", None,
                             ""))
        return
    kl_ok, top1_ok = kl <= rule.max_kl, top1 >= rule.min_top1
    gate.rows.append(Row("kl_divergence", None, kl, None,
                         f"≤ {rule.max_kl:g} ({rule.kl_key})", PASS if kl_ok else FAIL,
                         "nats/token", rule.max_kl, "", rule=rule.kl_key))
    gate.rows.append(Row("top1_agreement", None, top1, None,
                         f"≥ {rule.min_top1:.1%} ({rule.top1_key})", PASS if top1_ok else FAIL,
                         "", rule.min_top1, "", rule=rule.top1_key))
    if not kl_ok:
        gate.fail(f"{gate.candidate} in {gate.env}: KL divergence {kl:.4g} nats/token from "
                  f"the baseline, limit {rule.max_kl:g} ({rule.kl_key})")
    if not top1_ok:
        gate.fail(f"{gate.candidate} in {gate.env}: top-1 agreement {top1:.1%} with the "
                  f"baseline, limit {rule.min_top1:.1%} ({rule.top1_key})")


MINIMUM_RULES = (  # policy key, metric, the metric must be <= (True) or >= (False) the value
    ("max_perplexity", "perplexity", True),
    ("min_pp_tokens_per_s", "pp_tokens_per_s", False),
    ("min_tg_tokens_per_s", "tg_tokens_per_s", False),
    ("max_latency_p95_ms", "latency_p95_ms", True),
)


def minimum_rows(gate: ModelGate, values: dict[str, float], policy: dict[str, Any],
                 metrics: Sequence[str]) -> None:
    """Rows for the policy minimums that name one of `metrics`."""
    minimums = policy.get("minimums") or {}
    for key, metric, at_most in MINIMUM_RULES:
        if key not in minimums or metric not in metrics or metric not in values:
            continue
        bound, value = float(minimums[key]), values[metric]
        ok = value <= bound if at_most else value >= bound
        threshold = f"{'≤' if at_most else '≥'} {bound:g} (policy minimums.{key})"
        gate.rows.append(Row(metric, None, value, None, threshold, PASS if ok else FAIL,
                             bench.UNITS.get(metric, ""), bound, "minimum",
                             rule=f"minimums.{key}"))
        if not ok:
            gate.fail(f"{gate.candidate} in {gate.env}: {metric} {value:.4g} does not meet "
                      f"minimums.{key} {bound:g}")
