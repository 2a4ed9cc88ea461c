"""Tiny llama-architecture GGUF models with real, measurable quality differences.

No training and no torch: every transformer block's weights are zero, so the network
reduces to embedding -> RMSNorm -> output, and those three tensors hold a count-based
byte-bigram table built from the text of Python's own `pydoc_data.topics`.

* Embedding row of byte b = row b of a 256x256 Sylvester Hadamard matrix (entries +-1,
  RMS exactly 1), so after RMSNorm the hidden state is that row again.
* Output matrix W = L^T H / 256 (computed with a fast Walsh-Hadamard transform), so the
  logits of "next token j after byte i" are exactly the log-probability table L[i, j].
* The BOS/EOS control token shares slot 0xFF, a byte that never occurs in UTF-8 text; that
  slot holds the distribution of the first byte of a document.

The tokenizer is byte-level BPE ("gpt2"): 256 byte tokens (token id = byte value, text =
the GPT-2 byte-to-unicode character), one control token, and one merge that can never
fire, so tokenizing and detokenizing any UTF-8 text round-trips exactly. Everything is
computed with deterministic element-wise float64 arithmetic, so the same recipe gives the
same bytes; quantized variants are made with llama.cpp's own quantizer (via ggufops.llama.llm).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ggufops.atomic import atomic_write_text
from ggufops.errors import ToyBuildError
from ggufops.hashing import file_sha256
from ggufops.llama import llm

TOY_FORMAT = 1  # bump whenever the construction below changes the bytes
EVAL_SET = "pydoc-heldout-v1"
EVAL_BYTES = 16384
HELDOUT_MODULUS = 8  # topics whose key hashes to 0 mod 8 are held out
EMBED = 256
N_BYTES = 256
BOS_ID = 256
VOCAB = N_BYTES + 1
BOS_SLOT = 0xFF  # never a byte of UTF-8 text
BOS_TEXT = "<|endoftext|>"
CONTEXT_LENGTH = 2048
HEADS = 4
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
MANIFEST = "toys.json"

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Recipe:
    """How one float model is made: which text, which smoothing, how much noise."""

    name: str
    train_bytes: int | None  # None: all training text
    smoothing: str  # "add-k" or "interpolated"
    strength: float  # k for add-k; pseudo-count of the unigram prior for interpolated
    noise_std: float = 0.0
    seed: int = 0
    blocks: int = 1
    feed_forward: int = 256
    description: str = ""


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("baseline", 16384, "add-k", 0.5,
               description="bigram of 16 KB of training text, add-0.5 smoothing"),
        Recipe("improved", None, "interpolated", 80.0,
               description="bigram of all training text, interpolated with unigrams"),
        Recipe("degraded", 16384, "add-k", 0.5, noise_std=1.0, seed=1,
               description="baseline with Gaussian noise (std 1.0) on its log-probabilities"),
        Recipe("slow", 16384, "add-k", 0.5, blocks=4, feed_forward=512,
               description="baseline's table behind 4 zero blocks: same quality, slower"),
        Recipe("slow2x", 16384, "add-k", 0.5, blocks=2,
               description="baseline's table behind 2 zero blocks: same quality, prompts "
                           "2x and generation 1.5x slower"),
        Recipe("slow1.3x", 16384, "add-k", 0.5, feed_forward=768,
               description="baseline with a 3x wider (zero) feed-forward: same quality, "
                           "generation 1.3x slower, prompts as fast"),
    )
}
QUANTIZED_FROM = ("baseline", "improved")


@dataclass(frozen=True)
class ToySpec:
    """One file of the toy set: a float recipe, optionally quantized."""

    name: str
    recipe: Recipe
    quant: str | None  # None: the f32 file itself


def toy_names() -> list[str]:
    """Every model the toy set holds, float models first."""
    return [spec.name for spec in _specs()]


def _specs() -> list[ToySpec]:
    specs = [ToySpec(r.name, r, None) for r in RECIPES.values()]
    for base in QUANTIZED_FROM:
        specs += [ToySpec(f"{base}-{q}", RECIPES[base], q) for q in QUANTS]
    return specs


# --- text -----------------------------------------------------------------------------


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def _is_heldout(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


def _documents(heldout: bool) -> list[bytes]:
    topics = _topics()
    return [topics[k].encode() for k in sorted(topics) if _is_heldout(k) == heldout]


def heldout_text() -> bytes:
    """The held-out eval text: held-out topics, cut at a line end before EVAL_BYTES."""
    joined = b"\n\n".join(_documents(heldout=True))[:EVAL_BYTES]
    return joined[: joined.rindex(b"\n") + 1]


def training_documents() -> list[bytes]:
    """Training text, as documents: other topics, minus paragraphs the held-out ones share."""
    held = {p for doc in _documents(heldout=True) for p in doc.split(b"\n\n") if len(p) > 80}
    return [b"\n\n".join(p for p in doc.split(b"\n\n") if p not in held)
            for doc in _documents(heldout=False)]


# --- the bigram table -------------------------------------------------------------------


def _slice_documents(docs: list[bytes], limit: int | None) -> list[bytes]:
    if limit is None:
        return docs
    out: list[bytes] = []
    left = limit
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= len(out[-1])
    return out


def bigram_counts(docs: Iterable[bytes]) -> Matrix:
    """counts[slot, next]: slot = previous byte, or BOS_SLOT at a document start."""
    counts = np.zeros((N_BYTES, VOCAB), dtype=np.float64)
    for doc in docs:
        seq = np.frombuffer(doc, dtype=np.uint8).astype(np.int64)
        if seq.size == 0:
            continue
        np.add.at(counts, (seq[:-1], seq[1:]), 1.0)
        counts[BOS_SLOT, seq[0]] += 1.0
        counts[seq[-1], BOS_ID] += 1.0
    return counts


def _log(values: Matrix) -> Matrix:
    """Natural log through libm, element by element: the same bits on every machine."""
    flat = [math.log(v) for v in values.ravel().tolist()]
    return np.array(flat, dtype=np.float64).reshape(values.shape)


def _probabilities(counts: Matrix, smoothing: str, strength: float) -> Matrix:
    if smoothing == "add-k":
        smoothed = counts + strength
        added: Matrix = smoothed / smoothed.sum(axis=1, keepdims=True)
        return added
    if smoothing == "interpolated":
        unigram = counts.sum(axis=0) + 0.5
        unigram = unigram / unigram.sum()
        n = counts.sum(axis=1, keepdims=True)
        weight = n / (n + strength)
        mixed: Matrix = weight * counts / np.maximum(n, 1.0) + (1.0 - weight) * unigram
        return mixed
    raise ToyBuildError(
        f"unknown smoothing {smoothing!r} in a toy recipe; use add-k or interpolated"
    )


def log_table(recipe: Recipe) -> Matrix:
    """L[slot, next]: centred log-probabilities (softmax of a row gives the bigram)."""
    docs = _slice_documents(training_documents(), recipe.train_bytes)
    table = _log(_probabilities(bigram_counts(docs), recipe.smoothing, recipe.strength))
    if recipe.noise_std:
        rng = np.random.default_rng(recipe.seed)
        table = table + recipe.noise_std * rng.standard_normal(table.shape)
    centred: Matrix = table - table.mean(axis=1, keepdims=True)
    return centred


# --- weights ------------------------------------------------------------------------------


def hadamard(n: int) -> Matrix:
    """Sylvester Hadamard matrix of order n (a power of two); entries +-1."""
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def walsh_hadamard(rows: Matrix) -> Matrix:
    """rows @ H (Sylvester order) by butterflies: exact, order-fixed float64 arithmetic."""
    out = rows.copy()
    n = out.shape[1]
    step = 1
    while step < n:
        view = out.reshape(out.shape[0], n // (2 * step), 2, step)
        a, b = view[:, :, 0, :].copy(), view[:, :, 1, :].copy()
        view[:, :, 0, :], view[:, :, 1, :] = a + b, a - b
        step *= 2
    return out


def output_weights(table: Matrix) -> npt.NDArray[np.float32]:
    """W (VOCAB x EMBED) with W @ H[slot] == table[slot] for every slot."""
    return (walsh_hadamard(table.T) / EMBED).astype(np.float32)


def embedding_weights() -> npt.NDArray[np.float32]:
    h = hadamard(EMBED)
    return np.vstack([h, h[BOS_SLOT : BOS_SLOT + 1]]).astype(np.float32)


def _block_tensors(index: int, feed_forward: int) -> dict[str, npt.NDArray[np.float32]]:
    zeros = np.zeros
    ones = np.ones(EMBED, dtype=np.float32)
    p = f"blk.{index}"
    return {
        f"{p}.attn_norm.weight": ones,
        f"{p}.attn_q.weight": zeros((EMBED, EMBED), dtype=np.float32),
        f"{p}.attn_k.weight": zeros((EMBED, EMBED), dtype=np.float32),
        f"{p}.attn_v.weight": zeros((EMBED, EMBED), dtype=np.float32),
        f"{p}.attn_output.weight": zeros((EMBED, EMBED), dtype=np.float32),
        f"{p}.ffn_norm.weight": ones,
        f"{p}.ffn_gate.weight": zeros((feed_forward, EMBED), dtype=np.float32),
        f"{p}.ffn_up.weight": zeros((feed_forward, EMBED), dtype=np.float32),
        f"{p}.ffn_down.weight": zeros((EMBED, feed_forward), dtype=np.float32),
    }


def model_tensors(recipe: Recipe) -> dict[str, npt.NDArray[np.float32]]:
    """All tensors of a float toy model, in the order they are written."""
    # RMSNorm divides by sqrt(1 + eps); the norm weight undoes it, so logits == table.
    norm = np.full(EMBED, math.sqrt(1.0 + RMS_EPS), dtype=np.float32)
    tensors = {"token_embd.weight": embedding_weights(), "output_norm.weight": norm}
    tensors["output.weight"] = output_weights(log_table(recipe))
    for i in range(recipe.blocks):
        tensors.update(_block_tensors(i, recipe.feed_forward))
    return tensors


# --- tokenizer ----------------------------------------------------------------------------


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD)]
    printable += list(range(0xAE, 0x100))
    extra = 0
    mapping: dict[int, str] = {}
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tokenizer_tokens() -> list[str]:
    table = byte_to_unicode()
    return [table[b] for b in range(N_BYTES)] + [BOS_TEXT]


def never_firing_merge() -> str:
    """A merge of byte 0xFF with itself: 0xFF is never part of UTF-8 text."""
    c = byte_to_unicode()[0xFF]
    return f"{c} {c}"


# --- writing ------------------------------------------------------------------------------


def _write_metadata(writer: Any, recipe: Recipe, train_sha256: str) -> None:
    from gguf import TokenType

    writer.add_name(f"ggufops-toy-{recipe.name}")
    writer.add_description(recipe.description)
    writer.add_file_type(0)  # all f32
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(recipe.blocks)
    writer.add_feed_forward_length(recipe.feed_forward)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokenizer_tokens())
    writer.add_token_types([int(TokenType.NORMAL)] * N_BYTES + [int(TokenType.CONTROL)])
    writer.add_token_merges([never_firing_merge()])
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(BOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_string("ggufops.toy.recipe", json.dumps(asdict(recipe), sort_keys=True))
    writer.add_string("ggufops.toy.train_sha256", train_sha256)


def training_sha256() -> str:
    digest = hashlib.sha256()
    for doc in training_documents():
        digest.update(hashlib.sha256(doc).digest())
    return digest.hexdigest()


def write_float_model(recipe: Recipe, path: Path) -> Path:
    """Write the f32 GGUF of `recipe` to `path` (temp file, then rename)."""
    import gguf

    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        _write_metadata(writer, recipe, training_sha256())
        for name, tensor in model_tensors(recipe).items():
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return path


# --- the cached set -------------------------------------------------------------------------


def spec_key(spec: ToySpec, train_sha256: str, quantizer: str) -> str:
    """Content hash of everything that determines the file's bytes."""
    params = {
        "format": TOY_FORMAT,
        "recipe": asdict(spec.recipe),
        "quant": spec.quant,
        "train_sha256": train_sha256,
        "quantizer": quantizer if spec.quant else None,
        "gguf": _gguf_version(),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")



def _read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(out_dir: Path, manifest: dict[str, Any], name: str, key: str) -> Path | None:
    entry = manifest.get(name)
    path = out_dir / f"{name}.gguf"
    if not isinstance(entry, dict) or entry.get("key") != key or not path.is_file():
        return None
    return path if file_sha256(path) == entry.get("sha256") else None


def _build_one(spec: ToySpec, out_dir: Path, built: dict[str, Path]) -> Path:
    path = out_dir / f"{spec.name}.gguf"
    if spec.quant is None:
        return write_float_model(spec.recipe, path)

    return llm.quantize(built[spec.recipe.name], path, spec.quant)


def build_toy_set(out_dir: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build (or reuse) the toy models in `out_dir`; name -> path of `<name>.gguf`.

    A file is reused when `toys.json` records the same content key (recipe, training-text
    hash, quantizer version) and the file still has the recorded sha256.
    """
    wanted = set(names) if names is not None else set(toy_names())
    unknown = wanted - set(toy_names())
    if unknown:
        raise ToyBuildError(
            f"unknown toy model(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(toy_names())}"
        )
    needed = wanted | {s.recipe.name for s in _specs() if s.name in wanted}
    specs = [s for s in _specs() if s.name in needed]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out_dir)
    train_sha = training_sha256()
    quantizer = _quantizer_version() if any(s.quant for s in specs) else ""
    built: dict[str, Path] = {}
    for spec in specs:
        key = spec_key(spec, train_sha, quantizer)
        path = _cached(out_dir, manifest, spec.name, key) or _build_one(spec, out_dir, built)
        built[spec.name] = path
        manifest[spec.name] = {"key": key, "sha256": file_sha256(path)}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {name: path for name, path in built.items() if name in wanted}


def _quantizer_version() -> str:

    return llm.versions()["llama_cpp"]


def describe(paths: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per built file: name, path, size, sha256, quantization, recipe."""
    rows = []
    for name, path in paths.items():
        spec = next(s for s in _specs() if s.name == name)
        rows.append({
            "name": name,
            "path": str(path),
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
            "quantization": spec.quant or "f32",
            "description": spec.recipe.description
            + (f", quantized to {spec.quant} by llama.cpp" if spec.quant else ""),
        })
    return rows
