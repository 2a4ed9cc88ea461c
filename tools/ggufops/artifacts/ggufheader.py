"""What a GGUF file's header says, read with ggufparse (the `gguf` package names types).

Only the header and the tensor table are read (through a read-only map; tensor data is
not touched), so this is fast for any file size and any vocabulary. A file that is not
GGUF, or whose tensor data would extend past the end of the file, is refused with one line
naming the file.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops.artifacts.ggufparse import GgufFile, GgufFormatError, TensorInfo
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
    try:
        with GgufFile(path) as reader:
            return _header(path, size, reader)
    except GgufFormatError as e:
        raise TruncatedGguf(
            f"{path}: GGUF header cannot be read ({e}); the file is truncated or corrupt: "
            "copy or download it again"
        ) from None
    except OSError as e:
        raise BadGguf(f"{path}: cannot read: {e.strerror or e}") from None


def _header(path: Path, size: int, reader: GgufFile) -> GgufHeader:
    _check_extent(path, reader, size)
    arch = _string_field(path, reader, ARCH_KEY)
    return GgufHeader(
        path=path,
        size=size,
        architecture=arch,
        parameter_count=sum(t.n_elements for t in reader.tensors),
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


def _check_extent(path: Path, reader: GgufFile, size: int) -> None:
    for t in reader.tensors:
        end = t.data_offset + _tensor_bytes(path, t)
        if end > size:
            raise TruncatedGguf(
                f"{path}: truncated GGUF: tensor {t.name!r} ends at byte {end} "
                f"but the file has {size} bytes; copy or download it again"
            )


def _tensor_bytes(path: Path, tensor: TensorInfo) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(tensor.ggml_type)]
    except (ValueError, KeyError):
        raise BadGguf(
            f"{path}: tensor {tensor.name!r} has ggml type {tensor.ggml_type}, which the "
            "installed gguf package does not know; upgrade it (pip install -U gguf)"
        ) from None
    return tensor.n_elements * type_size // block


def _type_name(ggml_type: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name.lower()
    except ValueError:
        return f"type {ggml_type}"


def _field(reader: GgufFile, key: str) -> Any:
    return reader.value(key)


def _string_field(path: Path, reader: GgufFile, key: str) -> str:
    value = _field(reader, key)
    if not isinstance(value, str) or not value:
        raise BadGguf(f"{path}: GGUF header has no string key {key!r}; not a complete model")
    return value


def _int_field(path: Path, reader: GgufFile, key: str) -> int:
    value = _field(reader, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadGguf(f"{path}: GGUF header has no positive integer key {key!r}")
    return value


def _quantization(path: Path, reader: GgufFile) -> str:
    value = _field(reader, FILE_TYPE_KEY)
    if value is None:
        return _guess_quantization(path, reader)
    try:
        return quantization_name(int(value))
    except ValueError as e:
        raise BadGguf(f"{path}: {e}; this ggufops does not know that file type") from None


def _guess_quantization(path: Path, reader: GgufFile) -> str:
    """Without general.file_type: the type of the matrices (2-D+ tensors), if they agree."""
    types = {_type_name(t.ggml_type) for t in reader.tensors if len(t.shape) >= 2}
    if len(types) != 1:
        raise BadGguf(
            f"{path}: GGUF header has no {FILE_TYPE_KEY!r} and mixed tensor types "
            f"{sorted(types)}; write the file type into the header"
        )
    return types.pop()


def tokenizer_sha256(reader: GgufFile) -> str:
    """sha256 over tokens then merges, each item length-prefixed (u64 LE), in file order.

    That is exactly how a little-endian file stores a string array, so its bytes are
    hashed as they are; a big-endian file's items are re-prefixed one by one."""
    h = hashlib.sha256()
    for key in (TOKENS_KEY, MERGES_KEY):
        h.update(key.encode() + b"\0")
        raw = reader.raw_array(key) if reader.little_endian else None
        if raw is not None:
            h.update(raw)
            continue
        for item in reader.string_items(key):
            h.update(struct.pack("<Q", len(item)))
            h.update(item)
    return h.hexdigest()


def _chat_template_sha256(reader: GgufFile) -> str | None:
    value = _field(reader, CHAT_TEMPLATE_KEY)
    if not isinstance(value, str):
        return None
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
