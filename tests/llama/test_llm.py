"""llm.py against real llama.cpp on the toy models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ggufops.errors import LlamaError, SmokeTestFailed
from ggufops.llama import llm, toy
from ggufops.procs import ChildResult
from testing.toys import direct_perplexity, nan_copy


@pytest.fixture(scope="module")
def tokens(toy_models: dict[str, Path]) -> list[int]:
    with llm.load(toy_models["baseline"], n_ctx=64) as model:
        return llm.tokenize(model, toy.heldout_text())


def test_perplexity_equals_direct_calculation(toy_models: dict[str, Path],
                                              tokens: list[int]) -> None:
    with llm.load(toy_models["improved"], n_ctx=256) as model:
        ours = llm.perplexity(model, tokens[:1024], n_ctx=256)
    assert ours.n_chunks == 4 and ours.n_scored == 4 * 127
    reference = direct_perplexity(toy_models["improved"], tokens[:1024], 256)
    assert ours.perplexity == pytest.approx(reference, rel=1e-6)
    assert ours.nll == pytest.approx(math.log(reference), rel=1e-6)


def test_perplexity_over_batches_smaller_than_a_chunk(toy_models: dict[str, Path],
                                                      tokens: list[int]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=256) as whole:
        a = llm.perplexity(whole, tokens[:512])
    with llm.load(toy_models["baseline"], n_ctx=256, n_batch=64) as pieces:
        b = llm.perplexity(pieces, tokens[:512])
    assert b.perplexity == pytest.approx(a.perplexity, rel=1e-5)


def test_too_few_tokens_is_an_error(toy_models: dict[str, Path], tokens: list[int]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=128) as model, \
            pytest.raises(LlamaError, match="need at least 128 tokens"):
        llm.perplexity(model, tokens[:100])


def test_quality_pair_self_and_against_degraded(toy_models: dict[str, Path],
                                                tokens: list[int]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=256) as a, \
            llm.load(toy_models["baseline"], n_ctx=256) as a2, \
            llm.load(toy_models["degraded"], n_ctx=256) as d:
        pa, pa2, same = llm.quality_pair(a, a2, tokens[:512])
        pb, pd, diff = llm.quality_pair(a, d, tokens[:512])
        alone = llm.perplexity(d, tokens[:512])
    assert pa.perplexity == pa2.perplexity == pb.perplexity
    assert same.kl_mean == 0.0 and same.top1_agreement == 1.0
    assert diff.kl_mean > 0.1 and diff.top1_agreement < 0.8
    assert pd.perplexity == pytest.approx(alone.perplexity, rel=1e-9)
    assert diff.n_scored == 2 * 127


def test_quantized_variant_diverges_a_little(toy_models: dict[str, Path],
                                             tokens: list[int]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=256) as f32, \
            llm.load(toy_models["baseline-q4_0"], n_ctx=256) as q4:
        _, _, div = llm.quality_pair(f32, q4, tokens[:512])
    assert 0 < div.kl_mean < 0.05
    assert div.top1_agreement > 0.9


def test_speed_figures_are_positive(toy_models: dict[str, Path], tokens: list[int]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=256, n_threads=1) as model:
        assert llm.prompt_tokens_per_s(model, tokens[:256]) > 0
        assert llm.generation_tokens_per_s(model, 16) > 0
        assert llm.request_latency_ms(model, b"def main():", 4) > 0
        assert model.load_ms > 0


def test_greedy_generation_is_deterministic(toy_models: dict[str, Path]) -> None:
    with llm.load(toy_models["improved"], n_ctx=64) as model:
        first, finite = llm.generate(model, [model.bos, *b"The "], 12)
        again, _ = llm.generate(model, [model.bos, *b"The "], 12)
        assert first == again and finite
        assert all(0 <= t < model.n_vocab for t in first)


def test_smoke_test_passes_in_process_and_in_a_child(toy_models: dict[str, Path]) -> None:
    with llm.load(toy_models["baseline-q4_k_m"], n_ctx=64) as model:
        assert llm.smoke_test(model, 8).ok
    child = llm.smoke_test_isolated(toy_models["baseline-q4_k_m"], n_tokens=8, n_threads=1)
    assert child.ok and child.n_generated == 8 and child.peak_rss_mb > 10


def test_smoke_test_catches_non_finite_logits(toy_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    bad = nan_copy(toy_models["baseline"], tmp_path / "nan.gguf")
    result = llm.smoke_test_isolated(bad, n_tokens=4)
    assert not result.ok
    assert result.error == f"non-finite logits (NaN/inf) from {bad}"
    with pytest.raises(SmokeTestFailed, match=r"^smoke test failed for m-v1: non-finite"):
        llm.require_smoke("m-v1", result)


def test_truncated_file_fails_to_load_with_llama_cpp_reason(toy_models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(toy_models["baseline"].read_bytes()[:1_000_000])
    with pytest.raises(LlamaError, match=r"cannot load .*cut\.gguf: tensor '.*' data is not "
                                         r"within the file bounds"):
        llm.load(cut)
    result = llm.smoke_test_isolated(cut)
    assert not result.ok and "data is not within the file bounds" in result.error


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlamaError, match="does not exist; pull it first"):
        llm.load(tmp_path / "nope.gguf")


def test_a_crashing_child_becomes_a_smoke_error(tmp_path: Path) -> None:
    crashed = ChildResult(-6, "", "GGML_ASSERT(n_rot <= 64) failed\n")
    result = llm._smoke_from_child(tmp_path / "m.gguf", crashed)
    assert not result.ok
    assert result.error == (f"llama.cpp crashed (signal 6) while loading {tmp_path / 'm.gguf'}: "
                            "GGML_ASSERT(n_rot <= 64) failed")


def test_a_hanging_load_times_out(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)  # opening it for reading blocks forever
    result = llm.smoke_test_isolated(fifo, timeout=3)
    assert not result.ok and result.error == f"loading {fifo} did not finish within 3 s"


def test_quantize_unknown_type_is_refused(toy_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(LlamaError, match="unknown quantization 'q9_9'"):
        llm.quantize(toy_models["baseline"], tmp_path / "x.gguf", "q9_9")


def test_versions_and_machine_facts() -> None:
    v = llm.versions()
    assert v["llama_cpp_python"] == "0.3.36"
    assert "ggml" in v["llama_cpp"]
    assert llm.cpu_model()
    assert llm.default_threads() >= 1
    assert "CPU" in llm.system_info()


def _bigram_nll(text: bytes) -> float:
    """The baseline toy's exact NLL of `text` from its bigram table (see toy.py)."""
    table = toy.log_table(toy.RECIPES["baseline"])
    total, slot = 0.0, toy.BOS_SLOT
    for byte in text:
        row = table[slot]
        total += math.log(sum(math.exp(x - row.max()) for x in row)) + row.max() - row[byte]
        slot = byte
    return total


def test_text_nll_scores_every_token_once(toy_models: dict[str, Path]) -> None:
    text = toy.heldout_text()[:700]
    with llm.load(toy_models["baseline"], n_ctx=256) as model:
        rolling = llm.text_nll(model, text, n_ctx=64)  # 700 tokens through windows of 64
        whole = llm.text_nll(model, text[:200], n_ctx=256)  # one window
    assert (rolling.n_tokens, rolling.n_bytes) == (700, 700)
    # a bigram model sees only the previous byte, so windows lose nothing: the sum is exact
    assert rolling.nll_sum == pytest.approx(_bigram_nll(text), rel=1e-4)
    assert whole.nll_sum == pytest.approx(_bigram_nll(text[:200]), rel=1e-4)
    assert rolling.bits_per_byte == pytest.approx(rolling.nll_sum / 700 / math.log(2))


def test_text_nll_window_must_fit_the_context(toy_models: dict[str, Path]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=64) as model, \
            pytest.raises(LlamaError, match="window of 128 tokens does not fit the context 64"):
        llm.text_nll(model, b"hello", n_ctx=128)


def test_parameter_count_is_llama_cpp_s(toy_models: dict[str, Path]) -> None:
    with llm.load(toy_models["baseline"], n_ctx=64) as small, \
            llm.load(toy_models["slow"], n_ctx=64) as big:
        assert 100_000 < llm.n_params(small) < llm.n_params(big)


def test_a_prompt_longer_than_the_context_is_a_plain_error(toy_models: dict[str, Path]) -> None:
    """n_ctx 100: llama.cpp pads the context to 256, so llama-cpp-python's own check let a
    150-token prompt through into a 100-token buffer (numpy: "could not broadcast")."""
    with llm.serve_load(toy_models["baseline"], n_ctx=100, n_threads=1) as model:
        answer = llm.complete(model, "x" * 40, {"max_tokens": 4, "temperature": 0.0},
                              stream=False)
        assert isinstance(answer, dict) and answer["usage"]["prompt_tokens"] == 41  # BOS too
        with pytest.raises(LlamaError, match=r"baseline\.gguf: the prompt has 151 tokens but "
                           r"the context holds 100; shorten the prompt"):
            llm.complete(model, "x" * 150, {"max_tokens": 4}, stream=False)


def test_a_chat_longer_than_the_context_is_a_plain_error(toy_models: dict[str, Path]) -> None:
    """The same for a chat turn, whose prompt the template renders: the check sits where
    both pass their final tokens."""
    with llm.serve_load(toy_models["baseline"], n_ctx=100, n_threads=1,
                        chat_template="chatml") as model:
        with pytest.raises(LlamaError, match=r"baseline\.gguf: the prompt has \d+ tokens but "
                           r"the context holds 100; shorten the prompt"):
            llm.chat(model, [{"role": "user", "content": "x" * 150}], {"max_tokens": 4},
                     stream=False)
        stream = llm.chat(model, [{"role": "user", "content": "x" * 150}], {"max_tokens": 4},
                          stream=True)
        with pytest.raises(LlamaError, match="the context holds 100; shorten the prompt"):
            list(stream)  # type: ignore[arg-type]
