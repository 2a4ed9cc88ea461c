"""Hot standby: whether the primary a swap replaces may stay loaded beside the new one.

A rollback to a version still in memory is a pointer swap (modeltable.ModelTable
.promote_standby): no hashing, no load, no smoke test. Keeping it costs memory, so the
server keeps it only when it fits: its footprint (file size + KV cache) must be at most half
of what the host (or its cgroup) still has available, which leaves room for the next load
of a model its size. `--standby off` (GGUFOPS_STANDBY) never keeps one.

KV cache estimate, from the GGUF header: 2 (K and V) x layers x context x KV width x 2 bytes
(f16), where the KV width is key_length (or embedding_length / head_count) x head_count_kv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ggufops.artifacts.ggufparse import GgufFile, GgufFormatError

MODES = ("auto", "off")
KV_BYTES_PER_VALUE = 2  # llama.cpp's default KV cache type is f16
HEADROOM_FACTOR = 2  # available memory must hold the standby and one more like it
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class FitCheck:
    """The memory-fit decision for one model, with the numbers it was made from."""

    needed_bytes: int
    available_bytes: int
    keep: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"needed_bytes": self.needed_bytes, "available_bytes": self.available_bytes,
                "keep": self.keep, "reason": self.reason}


def kv_cache_bytes(path: Path, n_ctx: int) -> int:
    """Estimated KV cache of `path` at `n_ctx` tokens; 0 when the header does not say."""
    try:
        with GgufFile(path) as reader:
            arch = reader.value("general.architecture")
            values = {k: reader.value(f"{arch}.{k}") for k in (
                "block_count", "embedding_length", "attention.head_count",
                "attention.head_count_kv", "attention.key_length")}
    except (OSError, GgufFormatError):
        return 0
    return _kv_bytes(values, n_ctx)


def _kv_bytes(values: dict[str, object], n_ctx: int) -> int:
    layers, embd, heads = (values.get(k) for k in ("block_count", "embedding_length",
                                                    "attention.head_count"))
    if not all(isinstance(v, int) and v > 0 for v in (layers, embd, heads)):
        return 0
    assert isinstance(layers, int) and isinstance(embd, int) and isinstance(heads, int)
    kv_heads = _positive(values.get("attention.head_count_kv"), heads)
    head_dim = _positive(values.get("attention.key_length"), embd // heads)
    return 2 * layers * n_ctx * head_dim * kv_heads * KV_BYTES_PER_VALUE


def _positive(value: object, default: int) -> int:
    return value if isinstance(value, int) and value > 0 else default


def available_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by its cgroup's headroom."""
    return min(_meminfo_available(), _cgroup_headroom())


def _meminfo_available() -> int:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_headroom() -> int:
    """memory.max - memory.current of this process's cgroup (v2); unlimited -> a huge number."""
    unlimited = 1 << 62
    try:
        relative = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        group = CGROUP / relative.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return unlimited
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return unlimited


def fit_check(mode: str, size: int, kv_bytes: int, available: int | None = None) -> FitCheck:
    """May a model of `size` bytes (-1: unknown) with `kv_bytes` of KV cache stay loaded as
    standby?"""
    needed = size + kv_bytes
    if mode == "off":
        return FitCheck(needed, 0, False, "standby is off (--standby off)")
    if size < 0:
        return FitCheck(0, 0, False, "its file is no longer in the store")
    have = available_bytes() if available is None else available
    if needed * HEADROOM_FACTOR <= have:
        return FitCheck(needed, have, True, "fits")
    return FitCheck(needed, have, False,
                    f"needs {needed} bytes, {HEADROOM_FACTOR}x that must be free but only "
                    f"{have} are available")
