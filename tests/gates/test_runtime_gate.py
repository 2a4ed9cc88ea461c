"""The runtime gate: the same artifact under two runtimes, judged like a model change.

No second llama-cpp-python is built here (a 6-minute compile): the candidate runtime is a
stand-in, this same interpreter with llama.cpp settings passed to its child
($GGUFOPS_RUNTIME_LLAMA_ARGS): the RMS-norm epsilon overridden to 0.5 (kv_overrides)
really shifts the numbers llama.cpp computes from the same weights, as a runtime bug
would (a q4_0 KV cache, which shifts real SmolLM2, changes nothing in a toy: its attention
does not matter). The same interpreter without settings is a runtime identical to the
baseline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ggufops.cli import main
from ggufops.errors import LlamaError
from ggufops.gates import bench, runtimegate
from ggufops.gates.result import FAIL, PASS, ModelGate, Row, Subject
from testing.toys import fast_policy

ROOT = Path(__file__).resolve().parents[2]
SHIFT = {"kv_overrides": {"llama.attention.layer_norm_rms_epsilon": 0.5}}
SAME = runtimegate.Runtime(sys.executable)
SHIFTED = runtimegate.Runtime(sys.executable, SHIFT)


def gate_of(path: Path, eval_set: bench.EvalSet, candidate: runtimegate.Runtime,
            policy: dict[str, Any]) -> ModelGate:
    runtimes = [SAME, candidate]
    infos = [runtimegate.describe(r) for r in runtimes]
    subject = Subject.from_file("m@1.0.0", path)
    measured = runtimegate.measure_model(subject, eval_set, runtimes, infos, policy)
    return runtimegate.judge_model("production", "m@1.0.0", measured, eval_set, policy)


def rows(result: ModelGate) -> dict[str, Row]:
    return {r.metric: r for r in result.rows}


def test_a_runtime_is_named_by_its_own_child() -> None:
    info = runtimegate.describe(SHIFTED)
    import llama_cpp

    assert info["llama_cpp_python"] == llama_cpp.__version__
    assert info["python"] == sys.executable and info["llama_args"] == SHIFT
    assert "(ggml " in info["llama_cpp"] and info["system_info"]
    assert 'llama settings {"kv_overrides": {' in runtimegate.runtime_text(info)


def test_an_identical_runtime_passes(toy_models: dict[str, Path],
                                     eval_set: bench.EvalSet) -> None:
    result = gate_of(toy_models["baseline"], eval_set, SAME, fast_policy())
    got = rows(result)
    assert result.verdict == PASS, result.failures
    assert result.rule == "runtime change" and result.per == "token"
    assert got["perplexity"].change == 0.0
    assert got["kl_divergence"].candidate == 0.0 and got["top1_agreement"].candidate == 1.0
    assert {"pp_tokens_per_s", "tg_tokens_per_s", "latency_ms"} <= set(got)
    assert any(n.startswith("candidate runtime: ") for n in result.notes)


def test_a_runtime_that_shifts_numerics_is_blocked(toy_models: dict[str, Path],
                                                   eval_set: bench.EvalSet) -> None:
    result = gate_of(toy_models["baseline"], eval_set, SHIFTED, fast_policy())
    got = rows(result)
    ppl, kl = got["perplexity"], got["kl_divergence"]
    assert result.verdict == FAIL and result.rule == "runtime change"
    assert ppl.verdict == FAIL and ppl.change is not None and ppl.change > 0.05
    assert kl.candidate is not None and kl.candidate > 0.01 and kl.rule == "max_kl_divergence"
    assert result.failures[0].startswith("m@1.0.0 on the candidate runtime in production: "
                                         "perplexity ")
    assert "pp_tokens_per_s" not in got  # quality blocks: no time spent on speed


def test_runtime_rule_keys_fall_back_to_the_model_rules() -> None:
    rule = runtimegate.runtime_rule({"max_degradation": 0.05, "max_kl_divergence": 0.2})
    assert (rule.allowed, rule.max_kl, rule.kl_key) == (0.05, 0.2, "max_kl_divergence")
    assert rule.top1_key == "min_top1_agreement"
    own = runtimegate.runtime_rule({"max_degradation": 0.05,
                                    "runtime": {"max_degradation": 0.01}})
    assert own.allowed == 0.01 and own.allowed_text == "runtime.max_degradation 1%"


def test_a_runtime_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"cannot run .*venv with llama-cpp-python"):
        runtimegate.describe(runtimegate.Runtime(str(tmp_path / "nope" / "python")))
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\nexec /usr/bin/env -i /bin/sh -c 'echo no llama >&2; exit 3'\n")
    bare.chmod(0o755)
    with pytest.raises(LlamaError, match="stopped during info: no llama"):
        runtimegate.describe(runtimegate.Runtime(str(bare)))


def test_gate_command_blocks_a_shifting_runtime(toy_registry: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [
        "--repo", str(toy_registry), "gate", "--runtime", sys.executable,
        "--against-runtime", sys.executable, "--against-llama-args", json.dumps(SHIFT),
        "--json", str(report)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "runtime llama-cpp-python" in result.output and "perplexity" in result.output
    data = json.loads(report.read_text())
    assert not data["passed"] and data["gates"][0]["model"] == "toy"
    assert data["provenance"]["runtimes"][1]["llama_args"] == SHIFT


def test_gate_command_refuses_half_a_runtime_pair(toy_registry: Path) -> None:
    result = CliRunner().invoke(main, ["--repo", str(toy_registry), "gate", "--runtime",
                                       sys.executable])
    assert result.exit_code != 0 and "--against-runtime" in result.output
    result = CliRunner().invoke(main, ["--repo", str(toy_registry), "gate", "--runtime",
                                       sys.executable, "--against-runtime", sys.executable,
                                       "--against-llama-args", "{type_k"])
    assert result.exit_code != 0 and "--against-llama-args '{type_k' is not JSON" in result.output


KV_Q4_0 = {"type_k": 2, "type_v": 2, "flash_attn": True}


@pytest.mark.slow
def test_a_runtime_that_shifts_real_smollm2_is_blocked(smollm2: Path,
                                                       eval_set: bench.EvalSet) -> None:
    """The promise on a real published model: a q4_0 KV cache with flash attention (what a
    runtime that changed its attention kernels does to the numbers) shifts SmolLM2-135M's
    perplexity beyond the repository's production policy; quality blocks it, so no time is
    spent on speed. Quality is deterministic on one machine: no statistics needed."""
    policy = yaml.safe_load((ROOT / "registry" / "policy.yaml").read_text())
    result = gate_of(smollm2, eval_set, runtimegate.Runtime(sys.executable, KV_Q4_0),
                     bench.gate_policy(policy, "production"))
    got = rows(result)
    ppl = got["perplexity"]
    assert result.verdict == FAIL and result.rule == "runtime change", result.failures
    assert ppl.baseline is not None and 12.0 < ppl.baseline < 14.0  # SmolLM2 Q4_1's own
    assert ppl.change is not None and ppl.change > 0.05 and ppl.verdict == FAIL
    assert got["kl_divergence"].candidate is not None and got["kl_divergence"].candidate > 0
    assert "pp_tokens_per_s" not in got  # quality blocks: no time spent on speed
