"""GGUF quantization types: which is lower, and what llama.cpp measured each one costs.

The numbers are llama.cpp's own, from the "LLaMA 3 8b Scoreboard" and "LLaMA 2 vs. LLaMA 3
Quantization comparison" tables of its perplexity tool (tools/perplexity/README.md,
revision f364eb6f): every type quantized from the FP16 model without an importance
matrix, measured on Wikitext-2. Bits per weight are that table's file sizes over the
model's 8.03 B parameters, so they include the tensors each type keeps at higher
precision; they only order the types.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB_BITS_PER_WEIGHT = 8 * 2**30 / 8.03e9  # one GiB of the LLaMA-3-8B file, in bits per weight


@dataclass(frozen=True)
class Reference:
    """What llama.cpp measured for one type on LLaMA 3 8B against FP16."""

    size_gib: float
    kl_divergence: float  # mean KL(FP16 || quantized), nats per token
    top1_agreement: float | None  # "Same top p": the same most likely token (where published)

    @property
    def bits_per_weight(self) -> float:
        return self.size_gib * GIB_BITS_PER_WEIGHT


LLAMA_CPP_TABLE: dict[str, Reference] = {
    "q8_0": Reference(7.96, 0.001355, 0.97674),
    "q6_k": Reference(6.14, 0.005452, 0.96031),
    "q5_k_m": Reference(5.33, 0.010762, None),
    "q5_k_s": Reference(5.21, 0.016595, None),
    "q5_1": Reference(5.65, 0.018045, None),
    "q5_0": Reference(5.21, 0.022239, None),
    "q4_k_m": Reference(4.58, 0.031273, 0.91901),
    "q4_k_s": Reference(4.37, 0.043136, None),
    "q4_1": Reference(4.78, 0.071683, None),
    "q4_0": Reference(4.34, 0.071940, None),
    "q3_k_l": Reference(4.03, 0.087176, None),
    "q3_k_m": Reference(3.74, 0.101913, None),
    "q3_k_s": Reference(3.41, 0.228217, None),
    "q2_k": Reference(2.96, 0.445132, 0.71138),
}
# Types the table lists only with an importance matrix, and the float types: size only.
_OTHER_SIZES_GIB = {
    "f32": 29.94, "f16": 14.97, "bf16": 14.97, "iq4_nl": 4.35, "iq4_xs": 4.14, "iq3_m": 3.53,
    "iq3_s": 3.42, "iq3_xs": 3.28, "iq3_xxs": 3.05, "q2_k_s": 2.96, "iq2_m": 2.74,
    "iq2_s": 2.56, "iq2_xs": 2.43, "iq2_xxs": 2.24, "iq1_m": 2.01, "iq1_s": 1.88,
}

# Defaults of gates.max_kl_divergence and gates.min_top1_agreement: where llama.cpp's
# tables leave the 4-bit class. KL 0.10 nats/token is LLaMA-3-8B q3_K_M (0.102); q4_0 is
# 0.072, q4_K_M 0.031, q8_0 0.0014. A same-top-token rate of 85% is LLaMA-2-7B q2_K
# (85.6%, KL 0.109); LLaMA-3-8B q4_K_M keeps 91.9%, q8_0 97.7%.
DEFAULT_MAX_KL = 0.10
DEFAULT_MIN_TOP1 = 0.85


def bits_per_weight(quantization: str) -> float | None:
    """Nominal bits per weight of a type (None: a type this table does not know)."""
    name = quantization.lower()
    if name in LLAMA_CPP_TABLE:
        return LLAMA_CPP_TABLE[name].bits_per_weight
    size = _OTHER_SIZES_GIB.get(name)
    return size * GIB_BITS_PER_WEIGHT if size is not None else None


def is_lower(candidate: str, baseline: str) -> bool:
    """Whether `candidate` keeps fewer bits per weight than `baseline` (a lossy step)."""
    cand, base = bits_per_weight(candidate), bits_per_weight(baseline)
    return cand is not None and base is not None and cand < base
