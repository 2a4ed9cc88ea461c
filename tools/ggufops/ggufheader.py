"""What a GGUF file's header says, read with the `gguf` package's GGUFReader.

Only the header and the tensor table are read (GGUFReader maps the file; tensor data is
not touched), so this is fast for any file size. A file that is not GGUF, or whose tensor
data would extend past the end of the file, is refused with one line naming the file.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops.errors import BadGguf, TruncatedGguf

GGUF_MAGIC = b"GGUF"
TOKENS_KEY = "tokenizer.ggml.tokens"
MERGES_KEY = "tokenizer.ggml.merges"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
FILE_TYPE_KEY = "general.file_type"
ARCH_KEY = "general.architecture"


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    size: int
    architecture: str
    parameter_count: int
    context_length: int
    quantization: str
    tokenizer_sha256: str
    chat_template_sha256: str | None
    tensor_count: int

    def as_version_fields(self) -> dict[str, Any]:
        """The `gguf:` mapping of a version file."""
        return {
            "architecture": self.architecture,
            "parameter_count": self.parameter_count,
            "context_length": self.context_length,
            "tokenizer_sha256": self.tokenizer_sha256,
            "chat_template_sha256": self.chat_template_sha256,
        }


def quantization_name(file_type: int) -> str:
    """general.file_type -> lower-case name: 15 -> q4_k_m, 1 -> f16, 0 -> f32."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        raise ValueError(f"unknown general.file_type {file_type}") from None
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name.lower()


def read_header(path: Path) -> GgufHeader:
    """Read and check a GGUF header; raise BadGguf / TruncatedGguf naming `path`."""
    size = _check_magic(path)
    reader = _open_reader(path)
    _check_extent(path, reader, size)
    arch = _string_field(path, reader, ARCH_KEY)
    return GgufHeader(
        path=path,
        size=size,
        architecture=arch,
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        context_length=_int_field(path, reader, f"{arch}.context_length"),
        quantization=_quantization(path, reader),
        tokenizer_sha256=tokenizer_sha256(reader),
        chat_template_sha256=_chat_template_sha256(reader),
        tensor_count=len(reader.tensors),
    )


def _check_magic(path: Path) -> int:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
            size = f.seek(0, 2)
    except OSError as e:
        raise BadGguf(f"{path}: cannot read: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise BadGguf(
            f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'); "
            "convert the model to GGUF with llama.cpp first"
        )
    return size


def _open_reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError) as e:
        raise TruncatedGguf(
            f"{path}: GGUF header cannot be read ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt: copy or download it again"
        ) from None


def _check_extent(path: Path, reader: Any, size: int) -> None:
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise TruncatedGguf(
                f"{path}: truncated GGUF: tensor {t.name!r} ends at byte {end} "
                f"but the file has {size} bytes; copy or download it again"
            )


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _string_field(path: Path, reader: Any, key: str) -> str:
    value = _field(reader, key)
    if not isinstance(value, str) or not value:
        raise BadGguf(f"{path}: GGUF header has no string key {key!r}; not a complete model")
    return value


def _int_field(path: Path, reader: Any, key: str) -> int:
    value = _field(reader, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadGguf(f"{path}: GGUF header has no positive integer key {key!r}")
    return value


def _quantization(path: Path, reader: Any) -> str:
    value = _field(reader, FILE_TYPE_KEY)
    if value is None:
        return _guess_quantization(path, reader)
    try:
        return quantization_name(int(value))
    except ValueError as e:
        raise BadGguf(f"{path}: {e}; this ggufops does not know that file type") from None


def _guess_quantization(path: Path, reader: Any) -> str:
    """Without general.file_type: the type of the matrices (2-D+ tensors), if they agree."""
    types = {str(t.tensor_type.name).lower() for t in reader.tensors if len(t.shape) >= 2}
    if len(types) != 1:
        raise BadGguf(
            f"{path}: GGUF header has no {FILE_TYPE_KEY!r} and mixed tensor types "
            f"{sorted(types)}; write the file type into the header"
        )
    return types.pop()


def _string_items(reader: Any, key: str) -> Iterable[bytes]:
    field = reader.get_field(key)
    if field is None:
        return ()
    return (field.parts[i].tobytes() for i in field.data)


def tokenizer_sha256(reader: Any) -> str:
    """sha256 over tokens then merges, each item length-prefixed (u64 LE), in file order."""
    h = hashlib.sha256()
    for key in (TOKENS_KEY, MERGES_KEY):
        h.update(key.encode() + b"\0")
        for item in _string_items(reader, key):
            h.update(struct.pack("<Q", len(item)))
            h.update(item)
    return h.hexdigest()


def _chat_template_sha256(reader: Any) -> str | None:
    value = _field(reader, CHAT_TEMPLATE_KEY)
    if not isinstance(value, str):
        return None
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
