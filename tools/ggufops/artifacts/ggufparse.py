"""GGUF's header (metadata key/values and the tensor table), parsed from the format spec.

The `gguf` package's GGUFReader builds numpy views for every item of every array: on a
real model (SmolLM2: 49,152 tokens and 48,900 merges) that took 5.3 s and 190 MB, longer
than uploading the whole 145 MB file. This reads the header through a read-only memory
map with struct, touching only the header's pages: arrays are walked, not materialised,
and a string array's items are yielded as bytes only when asked for.

Layout (GGUF v2/v3; little- or big-endian): magic "GGUF", u32 version, u64 tensor count,
u64 key/value count; each key/value: string key, u32 value type, value; each tensor:
string name, u32 n_dims, u64 dims, u32 ggml type, u64 offset (from the data start, which
is the end of the tensor table rounded up to general.alignment, default 32). A string is
a u64 length and UTF-8 bytes; an array is a u32 item type, u64 count and the items.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
# value type -> struct code of the fixed-size scalar types
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


class GgufFormatError(ValueError):
    """The bytes do not follow GGUF's layout (truncated or corrupt)."""


@dataclass(frozen=True)
class Field:
    """One metadata value: where it is in the file and how to read it."""

    key: str
    type: int
    offset: int  # of the value (for an array: of its first item)
    end: int  # first byte after the value
    count: int = 1  # items, for an array
    item_type: int | None = None  # for an array


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data_offset: int  # absolute, in the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class GgufFile:
    """A parsed GGUF header over a read-only map of the file (use as a context manager)."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise GgufFormatError("the file is empty") from None
        self._order = "<"
        self.fields: dict[str, Field] = {}
        self.tensors: list[TensorInfo] = []
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as e:
            self.close()
            raise GgufFormatError(f"{type(e).__name__}: {e}") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GgufFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._map.close()

    # --- reading values ------------------------------------------------------------------

    def value(self, key: str) -> Any:
        """A scalar or string as Python; an array as a list (strings decoded); None if absent."""
        field = self.fields.get(key)
        if field is None:
            return None
        if field.type == ARRAY:
            assert field.item_type is not None
            return [self._scalar(field.item_type, off) for off in self._item_offsets(field)]
        return self._scalar(field.type, field.offset)

    def string_items(self, key: str) -> Iterator[bytes]:
        """The raw bytes of each item of a string array (nothing if absent or not strings)."""
        field = self.fields.get(key)
        if field is None or field.type != ARRAY or field.item_type != STRING:
            return
        for off in self._item_offsets(field):
            n = self._int("Q", off)
            yield self._map[off + 8:off + 8 + n]

    def raw_array(self, key: str) -> bytes | None:
        """The bytes of a string array's items as stored (u64 length + bytes, each)."""
        field = self.fields.get(key)
        if field is None or field.type != ARRAY or field.item_type != STRING:
            return None
        return self._map[field.offset:field.end]

    @property
    def little_endian(self) -> bool:
        return self._order == "<"

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        if self._map[:4] != MAGIC:
            raise GgufFormatError("no GGUF magic")
        version = self._int("I", 4)
        if version & 0xFFFF == 0:  # written big-endian
            self._order = ">"
            version = self._int("I", 4)
        if version not in (2, 3):
            raise GgufFormatError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_fields = self._int("Q", 8), self._int("Q", 16)
        offset = 24
        for _ in range(n_fields):
            offset = self._parse_field(offset)
        for _ in range(n_tensors):
            offset = self._parse_tensor(offset)
        self._place_tensors(offset)

    def _parse_field(self, offset: int) -> int:
        key, offset = self._string(offset)
        value_type = self._int("I", offset)
        offset += 4
        if value_type == ARRAY:
            item_type, count = self._int("I", offset), self._int("Q", offset + 4)
            end = self._skip_array(item_type, count, offset + 12)
            self.fields[key] = Field(key, ARRAY, offset + 12, end, count, item_type)
        else:
            end = self._skip_value(value_type, offset)
            self.fields[key] = Field(key, value_type, offset, end)
        return end

    def _parse_tensor(self, offset: int) -> int:
        name, offset = self._string(offset)
        n_dims = self._int("I", offset)
        dims = struct.unpack_from(f"{self._order}{n_dims}Q", self._map, offset + 4)
        offset += 4 + 8 * n_dims
        ggml_type, relative = self._int("I", offset), self._int("Q", offset + 4)
        # GGUF stores dims fastest-varying first; shape lists them slowest first, like numpy
        self.tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, relative))
        return offset + 12

    def _place_tensors(self, end_of_table: int) -> None:
        alignment = self.value("general.alignment") or DEFAULT_ALIGNMENT
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GgufFormatError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-end_of_table // alignment) * alignment
        self.tensors = [TensorInfo(t.name, t.shape, t.ggml_type, start + t.data_offset)
                        for t in self.tensors]

    # --- primitives ------------------------------------------------------------------------

    def _unpack(self, code: str, offset: int) -> Any:
        return struct.unpack_from(self._order + code, self._map, offset)[0]

    def _int(self, code: str, offset: int) -> int:
        return int(self._unpack(code, offset))

    def _string(self, offset: int) -> tuple[str, int]:
        n = self._int("Q", offset)
        end = offset + 8 + n
        if end > len(self._map):
            raise GgufFormatError(f"a string at byte {offset} ends past the end of the file")
        return self._map[offset + 8:end].decode("utf-8"), end

    def _scalar(self, value_type: int, offset: int) -> Any:
        if value_type == STRING:
            return self._string(offset)[0]
        code = _SCALARS.get(value_type)
        if code is None:
            raise GgufFormatError(f"value type {value_type} is not a scalar")
        return self._unpack(code, offset)

    def _skip_value(self, value_type: int, offset: int) -> int:
        if value_type == STRING:
            return offset + 8 + self._int("Q", offset)
        return offset + _scalar_size(value_type)

    def _skip_array(self, item_type: int, count: int, offset: int) -> int:
        if item_type == ARRAY:
            raise GgufFormatError("nested arrays are not supported")
        if item_type != STRING:
            end = offset + count * _scalar_size(item_type)
        else:  # walk the lengths: the hot loop of a big vocabulary, so kept bare
            unpack, data, end = struct.Struct(self._order + "Q").unpack_from, self._map, offset
            for _ in range(count):
                end += 8 + unpack(data, end)[0]
        if end > len(self._map):
            raise GgufFormatError(f"an array at byte {offset} ends past the end of the file")
        return end

    def _item_offsets(self, field: Field) -> Iterator[int]:
        assert field.item_type is not None
        offset = field.offset
        for _ in range(field.count):
            yield offset
            offset = self._skip_value(field.item_type, offset)


def _scalar_size(value_type: int) -> int:
    code = _SCALARS.get(value_type)
    if code is None:
        raise GgufFormatError(f"unknown value type {value_type}")
    return struct.calcsize(code)
