"""GGUF headers: what is read, and files that are refused (not GGUF, truncated)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from ggufops.artifacts.ggufheader import quantization_name, read_header
from ggufops.artifacts.ggufparse import GgufFile
from ggufops.errors import BadGguf, TruncatedGguf
from testing.s3 import write_tiny_gguf

TOKENS = ["a", "b", "c", "d", "e", "f", "g", "<s>"]


def _expected_tokenizer_sha(tokens: list[str], merges: list[str]) -> str:
    h = hashlib.sha256()
    for key, items in (("tokenizer.ggml.tokens", tokens), ("tokenizer.ggml.merges", merges)):
        h.update(key.encode() + b"\0")
        for item in items:
            raw = item.encode()
            h.update(struct.pack("<Q", len(raw)) + raw)
    return h.hexdigest()


def test_reads_header_fields(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", context_length=4096, chat_template="{{ x }}")
    header = read_header(path)
    assert header.architecture == "llama"
    assert header.context_length == 4096
    assert header.quantization == "f16"
    assert header.parameter_count == 8 * 16 + 16  # token_embd + output_norm
    assert header.tensor_count == 2
    assert header.size == path.stat().st_size
    assert header.tokenizer_sha256 == _expected_tokenizer_sha(TOKENS, ["a b"])
    assert header.chat_template_sha256 == hashlib.sha256(b"{{ x }}").hexdigest()
    assert header.as_version_fields()["parameter_count"] == 144


def test_chat_template_absent_is_none(tmp_path: Path) -> None:
    assert read_header(write_tiny_gguf(tmp_path / "m.gguf")).chat_template_sha256 is None


def test_tokenizer_hash_changes_with_tokens(tmp_path: Path) -> None:
    a = read_header(write_tiny_gguf(tmp_path / "a.gguf", seed=1))
    b = read_header(write_tiny_gguf(tmp_path / "b.gguf", seed=2))
    other = list(TOKENS)
    other[3] = "z"
    c = read_header(write_tiny_gguf(tmp_path / "c.gguf", tokens=other))
    assert a.tokenizer_sha256 == b.tokenizer_sha256  # weights differ, tokenizer does not
    assert c.tokenizer_sha256 != a.tokenizer_sha256


@pytest.mark.parametrize(
    ("file_type", "name"),
    [(0, "f32"), (1, "f16"), (2, "q4_0"), (7, "q8_0"), (15, "q4_k_m"), (18, "q6_k"), (32, "bf16")],
)
def test_quantization_names(file_type: int, name: str) -> None:
    assert quantization_name(file_type) == name


def test_file_type_from_header(tmp_path: Path) -> None:
    assert read_header(write_tiny_gguf(tmp_path / "m.gguf", file_type=15)).quantization == "q4_k_m"


def test_missing_file_type_is_guessed_from_tensors(tmp_path: Path) -> None:
    header = read_header(write_tiny_gguf(tmp_path / "m.gguf", file_type=None))
    assert header.quantization == "f32"


def test_unknown_file_type_refused(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", file_type=999)
    with pytest.raises(BadGguf, match=r"unknown general\.file_type 999"):
        read_header(path)


def test_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(BadGguf) as e:
        read_header(path)
    message = str(e.value)
    assert str(path) in message
    assert "not a GGUF file" in message
    assert "\n" not in message


def test_empty_file_is_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(BadGguf, match="not a GGUF file"):
        read_header(path)


def test_truncated_in_tensor_data(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", extra_bytes=10_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedGguf) as e:
        read_header(path)
    assert str(path) in str(e.value)
    assert "truncated" in str(e.value)


def test_truncated_in_header(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TruncatedGguf, match="truncated or corrupt") as e:
        read_header(path)
    assert str(path) in str(e.value)


def test_missing_context_length_refused(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "noctx.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BadGguf, match=r"llama\.context_length"):
        read_header(path)


def test_toy_models_from_llama_cpp_quantizer(tmp_path: Path) -> None:
    from ggufops.llama import toy

    files = toy.build_toy_set(tmp_path)
    headers = {name: read_header(path) for name, path in files.items()}
    for name, header in headers.items():
        suffix = name.rsplit("-", 1)[1] if "-" in name else "f32"
        assert header.quantization == suffix, name
        assert header.architecture == "llama"
    base = headers["baseline"]
    assert headers["baseline-q4_k_m"].parameter_count == base.parameter_count
    assert headers["baseline-q4_k_m"].tokenizer_sha256 == base.tokenizer_sha256
    assert base.context_length > 0


# --- ggufparse against the gguf package's own reader ------------------------------------


def _reference(path: Path) -> tuple[dict[str, object], list[tuple[str, tuple[int, ...], int, int]]]:
    """Every metadata value and tensor entry, as gguf's GGUFReader reads them."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()
              if not key.startswith("GGUF.")}
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape)), int(t.tensor_type),
                int(t.data_offset)) for t in reader.tensors]
    return fields, tensors


def _parsed(path: Path) -> tuple[dict[str, object], list[tuple[str, tuple[int, ...], int, int]]]:
    with GgufFile(path) as f:
        fields = {key: f.value(key) for key in f.fields}
        tensors = [(t.name, t.shape, t.ggml_type, t.data_offset) for t in f.tensors]
    return fields, tensors


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _assert_same(path: Path) -> None:
    (ref_fields, ref_tensors), (fields, tensors) = _reference(path), _parsed(path)
    assert fields.keys() == ref_fields.keys()
    different = [k for k in fields if not _close(fields[k], ref_fields[k])]
    assert different == []
    assert tensors == ref_tensors


@pytest.mark.slow
def test_parser_reads_the_real_model_as_gguf_does(smollm2: Path) -> None:
    _assert_same(smollm2)
    header = read_header(smollm2)
    assert header.parameter_count == 134_515_008
    assert (header.quantization, header.context_length) == ("q4_1", 8192)
    assert header.tensor_count == 272


def test_parser_reads_toys_as_gguf_does(tmp_path: Path) -> None:
    _assert_same(write_tiny_gguf(tmp_path / "m.gguf", chat_template="{{ x }}",
                                 extra_bytes=1000))


def test_big_endian_file_gives_the_same_header(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    headers = []
    for endian in (gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG):
        path = tmp_path / f"{endian.name}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
        writer.add_context_length(64)
        writer.add_file_type(0)
        writer.add_token_list(TOKENS)
        writer.add_token_merges(["a b", "c d"])
        writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        headers.append(read_header(path))
    little, big = headers
    assert big.tokenizer_sha256 == little.tokenizer_sha256 == \
        _expected_tokenizer_sha(TOKENS, ["a b", "c d"])
    assert (big.context_length, big.parameter_count) == (64, 32)


def test_unknown_value_type_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    # the first key/value follows the 24-byte preamble: u64 key length, key, u32 value type
    key_length = struct.unpack_from("<Q", data, 24)[0]
    struct.pack_into("<I", data, 32 + key_length, 99)
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedGguf, match="unknown value type 99"):
        read_header(path)
