"""Toy llama.cpp models for tests: built once (cached under .ggufops/toys), then shared."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ggufops.gates import bench
from ggufops.llama import toy
from ggufops.registry.registry import Registry
from ggufops.registry.template import project_root

TOY_DIR = project_root() / ".ggufops" / "toys"
EVAL_FILE = project_root() / "registry" / "evals" / f"{toy.EVAL_SET}.txt"


@pytest.fixture(scope="session")
def toy_models() -> dict[str, Path]:
    """name -> GGUF path for the whole toy set (baseline, improved, degraded, slow, quants)."""
    return toy.build_toy_set(TOY_DIR)


@pytest.fixture(scope="session")
def eval_set() -> bench.EvalSet:
    """The committed held-out eval set, as the gate reads it."""
    return bench.EvalSet.read(toy.EVAL_SET, EVAL_FILE)


FAST_GATES: dict[str, Any] = {
    "max_degradation": 0.05,
    "rounds": 3,
    "max_rounds": 6,
    # The budget is wall time: on a machine 10x oversubscribed it ran out before a 2x slower
    # toy was "clear" (a verdict that then depended on the load). Toy verdicts here are
    # bounded by max_rounds; the budget's own rules are tested in test_gate.py.
    "time_budget_s": 3600,
    "eval_tokens": 2048,
    "eval_ctx": 256,
    "threads": 1,
    "speed": {"pp_tokens": 256, "tg_tokens": 64, "repetitions": 4, "latency_prompts": 4,
              "latency_max_tokens": 8, "run_seconds": 0.02},
    "smoke_tokens": 8,
    "minimums": {"max_perplexity": 100},
}


def fast_policy(**overrides: Any) -> dict[str, Any]:
    """Gate settings small enough for tests (a merged `gates` entry, as gate_models takes)."""
    return {**FAST_GATES, **overrides}


def use_fast_gates(root: Path) -> None:
    """Rewrite `root`'s policy.yaml so its gates use FAST_GATES (tests stay quick)."""
    import yaml

    path = root / "registry" / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["gates"] = {"default": dict(FAST_GATES), "environments": {}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


@pytest.fixture
def toy_registry(s3_registry: Path, toy_models: dict[str, Path]) -> Path:
    """A registry on SeaweedFS, fast gates, toy@1.0.0 (baseline) in production, committed."""
    from testing.repos import git_commit, set_environment

    use_fast_gates(s3_registry)
    register_toy(s3_registry, toy_models["baseline"], "toy", "1.0.0")
    set_environment(s3_registry, "production", {"toy": "1.0.0"})
    git_commit(s3_registry, "toy 1.0.0 in production")
    return s3_registry


def register_toy(root: Path, path: Path, model: str, version: str, *,
                 parent: str | None = None) -> dict[str, Any]:
    """Register a toy GGUF as model@version (pushed to the repo's S3 remote)."""
    from ggufops.artifacts import register

    request = register.RegisterRequest(source=path, model=model, version=version, parent=parent)
    return register.register(Registry(root), request).doc


def nan_copy(src: Path, dst: Path) -> Path:
    """A copy of `src` whose output matrix starts with NaNs (a valid header, bad weights)."""
    import gguf

    tensor = next(t for t in gguf.GGUFReader(src).tensors if t.name == "output.weight")
    data = bytearray(src.read_bytes())
    data[tensor.data_offset:tensor.data_offset + 4096] = b"\xff" * 4096
    dst.write_bytes(bytes(data))
    return dst


def direct_perplexity(path: Path, tokens: list[int], n_ctx: int) -> float:
    """Independent reference: Llama.eval with logits_all, then numpy, llama-perplexity style."""
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                            verbose=False, n_threads=1)
    nll, count, first = 0.0, 0, n_ctx // 2
    for c in range(len(tokens) // n_ctx):
        chunk = [model.token_bos(), *tokens[c * n_ctx + 1:(c + 1) * n_ctx]]
        model.reset()
        model.eval(chunk)
        logits = np.asarray(model.scores[:n_ctx], dtype=np.float64)
        for j in range(first, n_ctx - 1):
            row = logits[j]
            top = row.max()
            nll += math.log(np.exp(row - top).sum()) + top - row[chunk[j + 1]]
            count += 1
    model.close()
    return math.exp(nll / count)
