"""Every llama.cpp call ggufops makes lives here (llama-cpp-python, in process).

A `Model` wraps one `llama_cpp.Llama` (used for loading and the tokenizer) plus a batch of
our own, so each decode asks for exactly the logits it needs: all scored positions for
perplexity, only the last one for prompt processing, none for nothing. Measurements follow
llama.cpp's own tools:

* perplexity: the tokens are cut into chunks of n_ctx; each chunk starts with BOS (it
  replaces the chunk's first token) and only the second half of each chunk is scored, so
  every scored token has at least n_ctx/2 tokens of context (llama-perplexity);
* KL divergence and top-1 agreement of two models over the same positions
  (llama-perplexity --kl-divergence), computed chunk by chunk, never holding all logits;
* pp and tg (llama-bench): pp = N prompt tokens decoded as a batch; tg = N single-token
  decodes; only decode time counts, tokenization is excluded.

`python -m ggufops.llama.llm smoke FILE` runs the smoke test in a child process: llama.cpp may
abort() on some malformed files and the gate must survive that.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ggufops.errors import LlamaError, SmokeTestFailed
from ggufops.llama.chattemplate import GGUF, NO_CHAT, has_chat
from ggufops.procs import ChildResult, run_python

Logits = npt.NDArray[np.float32]

# llama_ftype values (llama.h) for the quantizations ggufops makes.
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
          "q2_k": 10, "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
          "q5_k_m": 17, "q6_k": 18}
SMOKE_TIMEOUT_S = 120.0


_ERRORS: deque[str] = deque(maxlen=32)  # llama.cpp's latest error log lines
_LOG_LEVEL_ERROR, _LOG_LEVEL_CONT = 4, 5  # ggml_log_level (ggml.h)
_log_state = {"level": 0}


def _on_log(level: int, text: bytes, _user_data: Any) -> None:
    """llama.cpp's log callback: keep error lines (for our messages), print nothing."""
    if level != _LOG_LEVEL_CONT:
        _log_state["level"] = level
    if _log_state["level"] == _LOG_LEVEL_ERROR:
        _ERRORS.append(text.decode(errors="replace"))


@cache
def _lib() -> Any:
    """The llama_cpp module, with llama.cpp's log routed to _on_log (kept quiet)."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    callback = llama_cpp.llama_log_callback(_on_log)
    _callbacks.append(callback)  # ctypes callbacks must outlive their registration
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return llama_cpp


_callbacks: list[Any] = []


def last_error() -> str:
    """llama.cpp's most specific recent error, e.g. why a model did not load."""
    lines = [ln.strip() for ln in "".join(_ERRORS).splitlines() if ln.strip()]
    reasons = [ln.split(": ", 1)[-1].removeprefix("error loading model: ") for ln in lines]
    specific = [r for r in reasons if not any(g in r for g in _GENERIC_ERRORS)]
    return specific[0] if specific else (reasons[-1] if reasons else "")


_GENERIC_ERRORS = ("failed to load model", "failed to read tensor")


@dataclass
class Model:
    """A loaded GGUF model with one context of n_ctx tokens."""

    path: Path
    llama: Any
    n_ctx: int
    n_batch: int
    n_threads: int
    n_vocab: int
    bos: int
    load_ms: float
    batch: Any
    chat_template: str | None = None  # set by use_chat_template: gguf, a format name, none

    @property
    def ctx(self) -> Any:
        return self.llama.ctx

    def close(self) -> None:
        if self.batch is not None:
            _lib().llama_batch_free(self.batch)
            self.batch = None
        self.llama.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_threads() -> int:
    """Cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def load(path: Path, *, n_ctx: int = 512, n_threads: int | None = None,
         n_batch: int | None = None, n_gpu_layers: int = 0,
         llama_args: dict[str, Any] | None = None) -> Model:
    """Load `path`; LlamaError with llama.cpp's reason if it refuses the file.

    n_gpu_layers: layers offloaded to a GPU (-1: all); a CPU-only build ignores it.
    llama_args: more llama_cpp.Llama settings (e.g. type_k, flash_attn) for a runtime gate."""
    lib = _lib()
    threads = n_threads or default_threads()
    batch_size = n_batch or n_ctx
    if not path.exists():
        raise LlamaError(f"model file {path} does not exist; pull it first (`ggufops pull`)")
    start = time.perf_counter()
    _ERRORS.clear()
    try:
        llama = _tracing_llama()(
            model_path=str(path), n_ctx=n_ctx, n_batch=batch_size, n_ubatch=batch_size,
            n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False,
            n_gpu_layers=n_gpu_layers, **(llama_args or {}),
        )
    except (ValueError, RuntimeError) as e:
        reason = last_error() or str(e)
        raise LlamaError(
            f"llama.cpp cannot load {path}: {reason}; is it a complete, valid llama GGUF?"
        ) from None
    load_ms = (time.perf_counter() - start) * 1000.0
    vocab = lib.llama_model_get_vocab(llama.model)
    return Model(
        path=path, llama=llama, n_ctx=n_ctx, n_batch=batch_size, n_threads=threads,
        n_vocab=int(llama.n_vocab()), bos=int(lib.llama_vocab_bos(vocab)), load_ms=load_ms,
        batch=lib.llama_batch_init(batch_size, 0, 1),
    )


# --- tokens -------------------------------------------------------------------------------


def tokenize(model: Model, text: str | bytes, *, add_bos: bool = False) -> list[int]:
    """Tokens of `text` (special-token text is treated as plain text)."""
    raw = text.encode() if isinstance(text, str) else text
    return [int(t) for t in model.llama.tokenize(raw, add_bos=add_bos, special=False)]


def detokenize(model: Model, tokens: Sequence[int]) -> bytes:
    result: bytes = model.llama.detokenize(list(tokens))
    return result


# --- decoding -----------------------------------------------------------------------------


def clear(model: Model) -> None:
    """Forget everything in the context (KV cache metadata)."""
    lib = _lib()
    lib.llama_memory_clear(lib.llama_get_memory(model.ctx), False)


def _fill(model: Model, tokens: Sequence[int], start: int, wanted: Sequence[bool]) -> None:
    batch = model.batch
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = start + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = wanted[i]


def _decode_batch(model: Model, tokens: Sequence[int], start: int,
                  wanted: Sequence[bool]) -> Logits | None:
    lib = _lib()
    _fill(model, tokens, start, wanted)
    rc = lib.llama_decode(model.ctx, model.batch)
    if rc != 0:
        raise LlamaError(f"llama_decode returned {rc} for {model.path} at position {start}")
    rows = sum(1 for w in wanted if w)
    if not rows:
        return None
    pointer = lib.llama_get_logits(model.ctx)
    flat = np.ctypeslib.as_array(pointer, shape=(rows * model.n_vocab,))
    return flat.reshape(rows, model.n_vocab).copy()


def decode(model: Model, tokens: Sequence[int], *, start: int = 0,
           outputs: Sequence[bool] | None = None) -> Logits | None:
    """Decode `tokens` at positions start.. in n_batch pieces; logits of flagged positions.

    `outputs[i]` says whether position i's logits are wanted; default: only the last one.
    """
    flags = list(outputs) if outputs is not None else [i == len(tokens) - 1
                                                       for i in range(len(tokens))]
    pieces: list[Logits] = []
    for lo in range(0, len(tokens), model.n_batch):
        hi = min(len(tokens), lo + model.n_batch)
        got = _decode_batch(model, tokens[lo:hi], start + lo, flags[lo:hi])
        if got is not None:
            pieces.append(got)
    return np.concatenate(pieces) if pieces else None


def log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    result: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return result


# --- quality ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    n_scored: int
    n_chunks: int
    n_ctx: int


def chunk_count(n_tokens: int, n_ctx: int) -> int:
    return n_tokens // n_ctx


def chunk_logprobs(model: Model, tokens: Sequence[int],
                   n_ctx: int) -> Iterator[tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]]:
    """(log-probabilities, targets) of the scored second half of every chunk."""
    for logits, targets in chunk_logits(model, tokens, n_ctx):
        yield log_softmax(logits), targets


def chunk_logits(model: Model, tokens: Sequence[int],
                 n_ctx: int) -> Iterator[tuple[Logits, npt.NDArray[np.int64]]]:
    """(raw logits, targets) of the scored second half of every chunk."""
    if n_ctx > model.n_ctx:
        raise LlamaError(
            f"chunk of {n_ctx} tokens exceeds the context {model.n_ctx} of {model.path}"
        )
    first = n_ctx // 2
    for c in range(chunk_count(len(tokens), n_ctx)):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        targets = np.array(chunk[first + 1:], dtype=np.int64)
        chunk[0] = model.bos
        clear(model)
        wanted = [first <= i < n_ctx - 1 for i in range(n_ctx)]
        logits = decode(model, chunk, outputs=wanted)
        assert logits is not None
        yield logits, targets


def perplexity(model: Model, tokens: Sequence[int], *, n_ctx: int | None = None) -> Perplexity:
    """llama-perplexity's number for `tokens` (use a fixed token count to compare models)."""
    size = n_ctx or model.n_ctx
    total, count, chunks = 0.0, 0, 0
    for logp, targets in chunk_logprobs(model, tokens, size):
        total -= float(logp[np.arange(targets.size), targets].sum())
        count += int(targets.size)
        chunks += 1
    if not count:
        raise LlamaError(f"need at least {size} tokens to measure perplexity, got {len(tokens)}")
    nll = total / count
    return Perplexity(math.exp(nll), nll, count, chunks, size)


@dataclass(frozen=True)
class TextNll:
    """A text's negative log-likelihood under one model, every token scored exactly once."""

    nll_sum: float  # nats, summed over every token of the text
    n_tokens: int
    n_bytes: int

    @property
    def bits_per_byte(self) -> float:
        """lm-evaluation-harness's bits_per_byte: comparable across tokenizers."""
        return self.nll_sum / (self.n_bytes * math.log(2))


def text_nll(model: Model, text: bytes, *, n_ctx: int | None = None) -> TextNll:
    """Score every token of `text` once, as lm-evaluation-harness's rolling log-likelihood.

    The first window of n_ctx positions (BOS, then the text) scores all of its tokens; each
    later window starts n_ctx/2 positions before the first unscored token, with BOS in place
    of its first token (as llama-perplexity's chunks), and scores its second half, so every
    later prediction sees at least n_ctx/2 - 1 tokens of the text before it.
    """
    size = n_ctx or model.n_ctx
    if size > model.n_ctx or size < 2:
        raise LlamaError(f"window of {size} tokens does not fit the context {model.n_ctx} "
                         f"of {model.path}")
    sequence = [model.bos, *tokenize(model, text)]
    total, scored, start = 0.0, 1, 0
    while scored < len(sequence):
        end = min(start + size, len(sequence))
        total += _window_nll(model, sequence, start, end, scored)
        scored, start = end, end - size // 2
    return TextNll(total, len(sequence) - 1, len(text))


def _window_nll(model: Model, sequence: Sequence[int], start: int, end: int,
                first_target: int) -> float:
    """NLL of sequence[first_target:end], each predicted from sequence[start:target]."""
    window = [model.bos, *sequence[start + 1:end]]
    wanted = [first_target <= start + i + 1 < end for i in range(len(window))]
    clear(model)
    logits = decode(model, window, outputs=wanted)
    assert logits is not None
    targets = np.array(sequence[first_target:end], dtype=np.int64)
    logp = log_softmax(logits)
    return -float(logp[np.arange(targets.size), targets].sum())


def n_params(model: Model) -> int:
    """llama.cpp's count of the model's parameters (what sizes its work per token)."""
    return int(_lib().llama_model_n_params(model.llama.model))


@dataclass(frozen=True)
class Divergence:
    """How a candidate's next-token distributions differ from a reference's."""

    kl_mean: float  # mean KL(reference || candidate), nats per token
    kl_p99: float
    kl_max: float
    top1_agreement: float  # fraction of positions with the same most likely token
    n_scored: int


def quality_pair(reference: Model, candidate: Model, tokens: Sequence[int], *,
                 n_ctx: int | None = None) -> tuple[Perplexity, Perplexity, Divergence]:
    """Both perplexities and the divergence in one pass over the same scored positions."""
    if reference.n_vocab != candidate.n_vocab:
        raise LlamaError(
            f"vocabularies differ ({reference.n_vocab} vs {candidate.n_vocab} tokens): "
            "KL divergence needs the same tokenizer"
        )
    size = n_ctx or min(reference.n_ctx, candidate.n_ctx)
    return quality_from_chunks(chunk_logprobs(reference, tokens, size),
                               chunk_logprobs(candidate, tokens, size), size, len(tokens))


ChunkLogprobs = Iterator[tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]]


def quality_from_chunks(reference: ChunkLogprobs, candidate: ChunkLogprobs, size: int,
                        n_tokens: int) -> tuple[Perplexity, Perplexity, Divergence]:
    """Both perplexities and the divergence from two streams of chunk log-probabilities
    over the same positions (two models here, or two runtimes in child processes)."""
    nll = [0.0, 0.0]
    kls: list[npt.NDArray[np.float64]] = []
    same = 0
    pairs = zip(reference, candidate, strict=True)
    for (ref_lp, targets), (cand_lp, _) in pairs:
        rows = np.arange(targets.size)
        nll[0] -= float(ref_lp[rows, targets].sum())
        nll[1] -= float(cand_lp[rows, targets].sum())
        kls.append((np.exp(ref_lp) * (ref_lp - cand_lp)).sum(axis=1))
        same += int((ref_lp.argmax(axis=1) == cand_lp.argmax(axis=1)).sum())
    if not kls:
        raise LlamaError(f"need at least {size} tokens to compare models, got {n_tokens}")
    kl = np.maximum(np.concatenate(kls), 0.0)
    n, chunks = int(kl.size), len(kls)
    ppl = [Perplexity(math.exp(v / n), v / n, n, chunks, size) for v in nll]
    div = Divergence(float(kl.mean()), float(np.percentile(kl, 99)), float(kl.max()),
                     same / n, n)
    return ppl[0], ppl[1], div


# --- speed ------------------------------------------------------------------------------


Clock = Callable[[], float]


def prompt_tokens_per_s(model: Model, tokens: Sequence[int], *,
                        clock: Clock = time.perf_counter) -> float:
    """pp: decode `tokens` as one prompt (n_batch pieces), logits of the last only.

    `clock`: wall time by default; time.thread_time measures a 1-thread model's own CPU
    time, which other processes on a shared machine cannot stretch."""
    clear(model)
    start = clock()
    decode(model, tokens)
    _lib().llama_synchronize(model.ctx)
    return len(tokens) / max(clock() - start, 1e-9)


def generation_tokens_per_s(model: Model, n_gen: int, *,
                            clock: Clock = time.perf_counter) -> float:
    """tg: `n_gen` single-token decodes, starting from an empty context (llama-bench)."""
    clear(model)
    token = model.bos
    start = clock()
    for pos in range(n_gen):
        _decode_batch(model, [token], pos, [True])
    _lib().llama_synchronize(model.ctx)
    return n_gen / max(clock() - start, 1e-9)


def generate(model: Model, prompt: Sequence[int], n_tokens: int) -> tuple[list[int], bool]:
    """Greedy generation; (tokens, every logit finite)."""
    clear(model)
    logits = decode(model, list(prompt))
    finite = True
    out: list[int] = []
    for i in range(n_tokens):
        assert logits is not None
        finite = finite and bool(np.isfinite(logits).all())
        token = int(logits[-1].argmax())
        out.append(token)
        logits = _decode_batch(model, [token], len(prompt) + i, [True])
    return out, finite


def request_latency_ms(model: Model, prompt: bytes, max_tokens: int, *,
                       clock: Clock = time.perf_counter) -> float:
    """One request: tokenize, prompt, `max_tokens` greedy tokens (ms, wall clock by default)."""
    start = clock()
    generate(model, [model.bos, *tokenize(model, prompt)], max_tokens)
    return (clock() - start) * 1000.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- smoke test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Smoke:
    ok: bool
    error: str
    load_ms: float
    n_generated: int
    peak_rss_mb: float
    chat_template: str = ""  # the template of the chat turn ("" or "none": no chat turn)
    chat_tokens: int = 0  # tokens of the chat turn's answer


CHAT_SMOKE_TOKENS = 96


def smoke_test(model: Model, n_tokens: int = 16, *, chat_template: str | None = None,
               chat_max_tokens: int = CHAT_SMOKE_TOKENS) -> Smoke:
    """Generate `n_tokens` greedily after BOS; every logit must be finite. With a chat
    template (not none), also one chat turn through it, which must stop by itself."""

    tokens, finite = generate(model, [model.bos], n_tokens)
    error = "" if finite else f"non-finite logits (NaN/inf) from {model.path}"
    if not error and any(not 0 <= t < model.n_vocab for t in tokens):
        error = f"generated token ids outside the vocabulary of {model.path}"
    chat_tokens = 0
    if not error and chat_template and has_chat(chat_template):
        error, chat_tokens = _chat_smoke(model, chat_template, chat_max_tokens)
    return Smoke(not error, error, model.load_ms, len(tokens), peak_rss_mb(),
                 chat_template or "", chat_tokens)


def _chat_smoke(model: Model, template: str, max_tokens: int) -> tuple[str, int]:
    clear(model)
    model.llama.reset()
    trace = Trace()
    error = chat_turn_smoke(model, template, max_tokens, trace)
    return error, trace.completion_tokens


def smoke_test_isolated(path: Path, *, n_tokens: int = 16, n_threads: int | None = None,
                        n_ctx: int = 128, timeout: float = SMOKE_TIMEOUT_S,
                        chat_template: str | None = None, python: str | None = None,
                        env: dict[str, str] | None = None) -> Smoke:
    """Load and smoke-test `path` in a child process; a crash there becomes a Smoke error.
    With `chat_template` (a version's prompt_template), one chat turn runs through it."""
    args = ["-m", "ggufops.llama.llm", "smoke", str(path),
            "--tokens", str(n_tokens), "--ctx", str(n_ctx)]
    if n_threads:
        args += ["--threads", str(n_threads)]
    if chat_template:
        args += ["--chat-template", chat_template]
    try:
        child = run_python(args, timeout=timeout, python=python, env=env)
    except subprocess.TimeoutExpired:
        return Smoke(False, f"loading {path} did not finish within {timeout:.0f} s", 0.0, 0, 0.0)
    return _smoke_from_child(path, child)


def _smoke_from_child(path: Path, child: ChildResult) -> Smoke:
    answer = child.last_json()
    if child.returncode in (0, 1) and isinstance(answer, dict):
        with contextlib.suppress(TypeError):
            return Smoke(**answer)
    if child.returncode < 0:
        reason = f"llama.cpp crashed (signal {-child.returncode}) while loading {path}"
    else:
        reason = f"smoke test of {path} exited with {child.returncode}"
    return Smoke(False, f"{reason}: {child.last_error_line()}".rstrip(": "), 0.0, 0, 0.0)


def _smoke_main(path: Path, n_tokens: int, n_threads: int | None, n_ctx: int,
                chat_template: str | None = None) -> int:
    try:
        size = max(n_ctx, 512) if chat_template else n_ctx
        with load(path, n_ctx=size, n_threads=n_threads) as model:
            result = smoke_test(model, n_tokens, chat_template=chat_template)
    except LlamaError as e:
        result = Smoke(False, str(e), 0.0, 0, peak_rss_mb())
    print(json.dumps(asdict(result)))
    return 0 if result.ok else 1


def require_smoke(label: str, result: Smoke) -> None:
    if not result.ok:
        raise SmokeTestFailed(f"smoke test failed for {label}: {result.error}")


# --- quantize, environment ------------------------------------------------------------------


def quantize(src: Path, dst: Path, ftype: str, *, n_threads: int = 1,
             allow_requantize: bool = False) -> Path:
    """Quantize `src` to `dst` with llama.cpp's quantizer (temp file, then rename).

    `allow_requantize` lets it start from an already quantized file, as a published GGUF is."""
    lib = _lib()
    if ftype not in FTYPES:
        raise LlamaError(f"unknown quantization {ftype!r}; use one of {', '.join(FTYPES)}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    tmp = dst.with_name(f".{dst.name}.tmp")
    rc = lib.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise LlamaError(f"llama.cpp could not quantize {src} to {ftype} (code {rc})")
    tmp.replace(dst)
    return dst


@cache
def versions() -> dict[str, str]:
    """llama-cpp-python's version and the llama.cpp (ggml) build it carries."""
    lib = _lib()
    return {"llama_cpp_python": str(lib.__version__), "llama_cpp": _ggml_build(lib)}


def _ggml_build(lib: Any) -> str:
    base = Path(lib.__file__).parent / "lib" / "libggml-base.so"
    try:
        ggml = ctypes.CDLL(str(base))
        ggml.ggml_commit.restype = ctypes.c_char_p
        ggml.ggml_version.restype = ctypes.c_char_p
        return f"{ggml.ggml_commit().decode()} (ggml {ggml.ggml_version().decode()})"
    except (OSError, AttributeError):
        return "unknown"


@cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def system_info() -> str:
    info: bytes = _lib().llama_print_system_info()
    return info.decode().strip()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB).

    VmHWM is per address space, so a child started from a big parent reports its own peak;
    ru_maxrss (the fallback) carries the parent's high-water mark across exec on Linux.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ggufops.llama.llm")
    sub = parser.add_subparsers(dest="command", required=True)
    smoke = sub.add_parser("smoke", help="load FILE, generate, check logits; print JSON")
    smoke.add_argument("path", type=Path)
    smoke.add_argument("--tokens", type=int, default=16)
    smoke.add_argument("--threads", type=int, default=None)
    smoke.add_argument("--ctx", type=int, default=128)
    smoke.add_argument("--chat-template", default=None)
    args = parser.parse_args(argv)
    return _smoke_main(args.path, args.tokens, args.threads, args.ctx, args.chat_template)


# --- serving (runtime) --------------------------------------------------------------------
# What `ggufops serve` asks of llama.cpp: a Model stays loaded and answers OpenAI-style
# requests through llama-cpp-python's own completion code. A Model is not thread-safe: the
# server holds one lock per Model around every call below.

SERVE_BATCH = 512


@cache
def chat_formats() -> frozenset[str]:
    """Names of llama-cpp-python's chat formats (chatml, llama-2, ...)."""
    from llama_cpp import llama_chat_format

    return frozenset(llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers)


@dataclass
class TokenLogprob:
    """One sampled token with its log-probability and the most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Trace:
    """What one generation sampled, recorded while it runs: exact token counts for usage
    (streamed answers included), per-token log-probabilities when `top_n` is set, and
    whether every logit was finite when `check_finite` is set."""

    top_n: int | None = None
    check_finite: bool = False
    prompt_tokens: int = 0
    sampled: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finite: bool = True
    ended_by_eog: bool = False

    @property
    def completion_tokens(self) -> int:
        """Tokens of the answer: an end-of-generation token is sampled but not part of it."""
        return len(self.sampled) - (1 if self.ended_by_eog else 0)

    def record(self, llama: Any, token: int) -> None:
        self.sampled.append(token)
        self.ended_by_eog = bool(_lib().llama_vocab_is_eog(llama._model.vocab, token))
        if self.top_n is None and not self.check_finite:
            return
        logits = np.ctypeslib.as_array(_lib().llama_get_logits_ith(llama.ctx, -1),
                                       shape=(llama.n_vocab(),))
        if self.check_finite and not np.isfinite(logits).all():
            self.finite = False
        if self.top_n is not None and not self.ended_by_eog:
            self.logprobs.append(_token_logprob(logits, token, self.top_n))


def _token_logprob(logits: Logits, token: int, top_n: int) -> TokenLogprob:
    logp = log_softmax(logits[np.newaxis, :])[0]
    best = np.argpartition(-logp, top_n)[:top_n] if 0 < top_n < logp.size else \
        np.arange(logp.size if top_n else 0)
    ranked = sorted(((int(i), float(logp[i])) for i in best), key=lambda p: -p[1])
    return TokenLogprob(token, float(logp[token]), ranked)


class GenerationAborted(Exception):
    """A generation given `should_stop` was stopped by it (control flow, not a failure)."""


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise GenerationAborted


@cache
def _tracing_llama() -> Any:
    """llama_cpp.Llama whose generate() feeds the instance's `trace` (None: no cost)."""
    lib = _lib()

    class TracingLlama(lib.Llama):  # type: ignore[misc,name-defined]
        trace: Trace | None = None
        should_stop: Callable[[], bool] | None = None  # checked before the prompt, per token

        def generate(self, tokens: Sequence[int], *args: Any,
                     **kwargs: Any) -> Iterator[int]:
            trace, stop = self.trace, self.should_stop
            _check_prompt_fits(self, len(tokens))
            if trace is not None:
                trace.prompt_tokens = len(tokens)
            _check_stop(stop)
            for token in super().generate(tokens, *args, **kwargs):
                if trace is not None:
                    trace.record(self, token)
                _check_stop(stop)
                yield token

    return TracingLlama


def token_text(model: Model, token: int) -> bytes:
    """The bytes of one token, as it appears in generated text."""
    return detokenize(model, [token])


def stop_token_ids(model: Model) -> list[int]:
    """The vocabulary's end-of-sequence and end-of-turn tokens (those it has)."""
    lib = _lib()
    vocab = lib.llama_model_get_vocab(model.llama.model)
    ids = (int(lib.llama_vocab_eos(vocab)), int(lib.llama_vocab_eot(vocab)))
    return sorted({i for i in ids if i >= 0})


def gguf_chat_template(model: Model) -> str | None:
    """The file's own tokenizer.chat_template, as llama.cpp read it."""
    template = model.llama.metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template else None


def use_chat_template(model: Model, template: str) -> None:
    """Answer chat requests with `template`: gguf (the file's own Jinja2 template, its EOS
    and EOT tokens as stops), none (no chat), or a llama-cpp-python chat format name."""
    import jinja2
    from llama_cpp import llama_chat_format


    llama = model.llama
    llama.chat_handler = None
    if template == GGUF:
        text = gguf_chat_template(model)
        if text is None:
            raise LlamaError(f"{model.path.name} has no tokenizer.chat_template, but its "
                             "version says prompt_template: gguf")
        try:
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=text, eos_token=_special_text(model, "eos"),
                bos_token=_special_text(model, "bos"), stop_token_ids=stop_token_ids(model))
        except jinja2.TemplateError as e:
            raise LlamaError(f"the tokenizer.chat_template of {model.path.name} is not a valid "
                             f"Jinja2 template ({e}); register it with --chat-format NAME"
                             ) from None
        llama.chat_handler = formatter.to_chat_handler()
    elif template != NO_CHAT:
        if template not in chat_formats():
            raise LlamaError(f"llama-cpp-python has no chat format {template!r}")
        llama.chat_format = template
    model.chat_template = template


def _special_text(model: Model, which: str) -> str:
    lib = _lib()
    vocab = lib.llama_model_get_vocab(model.llama.model)
    token = int(getattr(lib, f"llama_vocab_{which}")(vocab))
    return "" if token < 0 else str(model.llama._model.token_get_text(token))


@cache
def json_grammar(schema_json: str | None) -> Any:
    """A llama.cpp grammar for any JSON object (None) or for a JSON schema (its text)."""
    from llama_cpp import llama_grammar

    try:
        if schema_json is None:
            return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF,
                                                          verbose=False)
        return llama_grammar.LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except (ValueError, RuntimeError, KeyError, TypeError, NotImplementedError) as e:
        raise LlamaError(f"cannot turn the JSON schema into a grammar: {e}") from None


def serve_load(path: Path, *, n_ctx: int, n_threads: int | None = None,
               chat_template: str | None = None, n_gpu_layers: int = 0) -> Model:
    """Load `path` for serving with `chat_template` (None: the file's own, else no chat)."""

    model = load(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=min(n_ctx, SERVE_BATCH),
                 n_gpu_layers=n_gpu_layers)
    try:
        default = GGUF if gguf_chat_template(model) else NO_CHAT
        use_chat_template(model, chat_template or default)
    except BaseException:
        model.close()
        raise
    return model


def serve_smoke_test(model: Model, n_tokens: int = 4) -> Smoke:
    """smoke_test, then an empty context again for the first request."""
    result = smoke_test(model, n_tokens)
    clear(model)
    model.llama.reset()
    return result


def _guard_stream(model: Model, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    try:
        yield from chunks
    except ValueError as e:  # llama-cpp-python's "prompt too long" and friends
        raise LlamaError(f"{model.path.name}: {e}") from None
    finally:
        model.llama.trace = None


def _check_prompt_fits(llama: Any, n_tokens: int) -> None:
    """llama.cpp pads a context to a multiple of 256 tokens and llama-cpp-python checks a
    prompt against that padded size, but sizes its token buffer by the n_ctx asked for: a
    prompt in between failed with numpy's "could not broadcast input array". Said plainly
    here, where completions and chat turns (whose template renders the prompt) both pass
    with their final tokens; `_openai` names the file."""
    capacity = int(llama.input_ids.shape[0])
    if n_tokens >= capacity:
        raise ValueError(f"the prompt has {n_tokens} tokens but the context holds "
                         f"{capacity}; shorten the prompt")


def complete(model: Model, prompt: str, params: dict[str, Any], *, stream: bool,
             trace: Trace | None = None, reuse_prefix: bool = False,
             should_stop: Callable[[], bool] | None = None,
             ) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """An OpenAI text completion (a dict), or an iterator of its chunks when streaming.
    `should_stop` (non-streamed only) is asked before the prompt and at every token; True
    raises GenerationAborted."""
    return _openai(model, model.llama.create_completion, stream, trace, reuse_prefix,
                   should_stop=should_stop, prompt=prompt, **params)


def chat(model: Model, messages: list[dict[str, Any]], params: dict[str, Any], *,
         stream: bool, trace: Trace | None = None, reuse_prefix: bool = False,
         should_stop: Callable[[], bool] | None = None,
         ) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """An OpenAI chat completion (a dict), or an iterator of its chunks when streaming;
    `should_stop` as in `complete`."""

    if model.chat_template in (None, NO_CHAT):
        raise LlamaError(f"{model.path.name} has no chat template")
    return _openai(model, model.llama.create_chat_completion, stream, trace, reuse_prefix,
                   should_stop=should_stop, messages=messages, **params)


def _openai(model: Model, call: Callable[..., Any], stream: bool, trace: Trace | None,
            reuse_prefix: bool, *, should_stop: Callable[[], bool] | None = None,
            **kwargs: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
    # By default every prompt is evaluated from scratch: llama.cpp's results depend on batch
    # shapes, so reusing the cached prefix of the previous request changed greedy answers
    # (the same request answered differently after another one).
    if not reuse_prefix:
        model.llama.reset()
    if stream and should_stop is not None:
        raise ValueError("should_stop is only for non-streamed generations")
    model.llama.trace = trace
    model.llama.should_stop = should_stop
    try:
        result = call(stream=stream, **kwargs)
    except ValueError as e:  # llama-cpp-python's "prompt too long", template errors
        model.llama.trace = model.llama.should_stop = None
        raise LlamaError(f"{model.path.name}: {e}") from None
    except BaseException:
        model.llama.trace = model.llama.should_stop = None
        raise
    if stream:
        return _guard_stream(model, result)
    model.llama.trace = model.llama.should_stop = None
    completion: dict[str, Any] = result
    return completion


# --- a chat turn for the smoke test ---------------------------------------------------------

SMOKE_CHAT = [{"role": "user", "content": "Say hello in one short sentence."}]


def chat_turn_smoke(model: Model, template: str, max_tokens: int,
                    trace: Trace | None = None) -> str:
    """One greedy chat turn through `template`: "" when its logits are finite and it stopped
    before `max_tokens`, else why not."""
    try:
        use_chat_template(model, template)
    except LlamaError as e:
        return str(e)
    trace = trace or Trace()
    trace.check_finite = True
    try:
        reply = chat(model, SMOKE_CHAT, {"temperature": 0.0, "max_tokens": max_tokens},
                     stream=False, trace=trace)
    except LlamaError as e:
        return f"a chat turn through the {template} template failed: {e}"
    assert isinstance(reply, dict)
    if not trace.finite:
        return f"non-finite logits (NaN/inf) in a chat turn from {model.path}"
    if reply["choices"][0]["finish_reason"] == "length":
        return (f"a chat turn through the {template} template ran to the {max_tokens}-token "
                "limit without an end-of-turn token; an instruct model stops: is this the "
                "right chat template (register --chat-format)?")
    return ""


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
