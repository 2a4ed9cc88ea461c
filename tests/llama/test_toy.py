"""Toy models: deterministic bytes, exact tokenizer, real quality differences in llama.cpp."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufops.artifacts.ggufheader import read_header
from ggufops.cli import main
from ggufops.errors import ToyBuildError
from ggufops.hashing import file_sha256
from ggufops.llama import llm, toy


def test_same_recipe_gives_same_bytes(tmp_path: Path, toy_models: dict[str, Path]) -> None:
    fresh = toy.build_toy_set(tmp_path / "again")
    assert set(fresh) == set(toy_models) == set(toy.toy_names())
    for name, path in fresh.items():
        assert file_sha256(path) == file_sha256(toy_models[name]), name


def test_float_model_written_twice_is_identical(tmp_path: Path) -> None:
    recipe = toy.RECIPES["degraded"]  # includes seeded noise
    a = toy.write_float_model(recipe, tmp_path / "a.gguf")
    b = toy.write_float_model(recipe, tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()


def test_cached_file_is_reused_and_a_damaged_one_rebuilt(tmp_path: Path) -> None:
    first = toy.build_toy_set(tmp_path, ["baseline"])["baseline"]
    stamp = first.stat().st_mtime_ns
    assert toy.build_toy_set(tmp_path, ["baseline"])["baseline"].stat().st_mtime_ns == stamp
    good = file_sha256(first)
    first.write_bytes(b"damaged")
    rebuilt = toy.build_toy_set(tmp_path, ["baseline"])["baseline"]
    assert file_sha256(rebuilt) == good
    manifest = json.loads((tmp_path / toy.MANIFEST).read_text())
    assert manifest["baseline"]["sha256"] == good


def test_quantized_subset_builds_its_float_source(tmp_path: Path) -> None:
    built = toy.build_toy_set(tmp_path, ["improved-q8_0"])
    assert list(built) == ["improved-q8_0"]
    assert (tmp_path / "improved.gguf").is_file()


def test_unknown_toy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ToyBuildError, match=r"unknown toy model\(s\) nope; choose from baseline"):
        toy.build_toy_set(tmp_path, ["nope"])


@pytest.mark.parametrize(("name", "quant"), [
    ("baseline", "f32"), ("baseline-f16", "f16"), ("baseline-q8_0", "q8_0"),
    ("baseline-q4_0", "q4_0"), ("baseline-q4_k_m", "q4_k_m"), ("improved-q4_0", "q4_0"),
])
def test_headers_say_what_llama_cpp_made(toy_models: dict[str, Path], name: str,
                                         quant: str) -> None:
    header = read_header(toy_models[name])
    assert header.architecture == "llama"
    assert header.quantization == quant
    assert header.context_length == toy.CONTEXT_LENGTH


@pytest.mark.parametrize("text", [
    "plain ASCII text\n", "naïve café \u2013 ünïcödé ✓ 🚀 日本語",
    "<|endoftext|> is plain text here",
    "\t\r\n  spaces   and\ttabs  ", "def f(x):\n    return x ** 2  # comment\n",
])
def test_tokenizer_round_trips_exactly(toy_models: dict[str, Path], text: str) -> None:
    with llm.load(toy_models["baseline"], n_ctx=64) as model:
        tokens = llm.tokenize(model, text)
        assert len(tokens) == len(text.encode())  # one token per byte
        assert tokens == list(text.encode())  # token id = byte value
        assert llm.detokenize(model, tokens) == text.encode()


def test_eval_set_round_trips_and_is_held_out(toy_models: dict[str, Path]) -> None:
    text = (Path(__file__).parents[2] / "registry" / "evals" / f"{toy.EVAL_SET}.txt").read_bytes()
    # Written once from this Python's pydoc_data (3.11.7); the committed file is what counts.
    assert text == toy.heldout_text() or sys.version_info[:3] != (3, 11, 7)
    assert 4096 < len(text) <= 32768
    training = b"\n".join(toy.training_documents())
    paragraphs = [p for p in text.split(b"\n\n") if len(p) > 200]
    assert paragraphs and not any(p in training for p in paragraphs)
    with llm.load(toy_models["baseline"], n_ctx=64) as model:
        assert llm.detokenize(model, llm.tokenize(model, text)) == text


def test_llama_cpp_logits_equal_the_bigram_table(toy_models: dict[str, Path]) -> None:
    table = toy.log_table(toy.RECIPES["baseline"])
    with llm.load(toy_models["baseline"], n_ctx=64) as model:
        for prev in (model.bos, ord("e"), ord(" "), ord("\n")):
            llm.clear(model)
            logits = llm.decode(model, [prev])
            assert logits is not None
            row = table[toy.BOS_SLOT if prev == model.bos else prev]
            got = llm.log_softmax(logits)[0]
            want = row - math.log(np.exp(row).sum())
            assert np.abs(got - want).max() < 1e-4


def test_perplexity_orders_improved_baseline_degraded(toy_models: dict[str, Path]) -> None:
    text = toy.heldout_text()
    ppl = {}
    for name in ("improved", "baseline", "degraded", "slow", "baseline-q8_0"):
        with llm.load(toy_models[name], n_ctx=512) as model:
            ppl[name] = llm.perplexity(model, llm.tokenize(model, text)[:4096]).perplexity
    assert ppl["improved"] < 0.85 * ppl["baseline"]
    assert ppl["degraded"] > 1.3 * ppl["baseline"]
    assert ppl["slow"] == pytest.approx(ppl["baseline"], rel=1e-6)  # zero blocks change nothing
    assert ppl["baseline-q8_0"] == pytest.approx(ppl["baseline"], rel=0.01)
    assert 10 < ppl["baseline"] < 25


def test_hadamard_transform_matches_the_matrix() -> None:
    rows = np.random.default_rng(0).standard_normal((3, 16))
    assert np.allclose(toy.walsh_hadamard(rows), rows @ toy.hadamard(16))


def test_toy_command_lists_files_as_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["toy", "--out", str(tmp_path), "--only", "baseline",
                                       "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["baseline"]
    assert rows[0]["quantization"] == "f32"
    assert rows[0]["sha256"] == file_sha256(tmp_path / "baseline.gguf")
