"""Claims the docs make about host settings, made true: the GPU layer count reaches
llama.cpp, and AWS_EC2_METADATA_DISABLED is a default the user can override."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufops.llama import llm
from ggufops.serve import app as server

EC2_PROBE = """
import os
from ggufops.artifacts import dvc as artifacts
from ggufops.cli import main
key = "AWS_EC2_METADATA_DISABLED"
print(os.environ[key], artifacts.dvc_child_env()[key])
"""


def test_n_gpu_layers_reaches_llama_cpp(toy_models: dict[str, Path]) -> None:
    model = llm.serve_load(toy_models["baseline"], n_ctx=256, n_gpu_layers=3)
    try:
        assert model.llama.model_params.n_gpu_layers == 3
    finally:
        model.close()
    default = llm.serve_load(toy_models["baseline"], n_ctx=256)
    try:
        assert default.llama.model_params.n_gpu_layers == 0
    finally:
        default.close()


def test_the_server_passes_its_gpu_setting_to_every_load(tmp_path: Path) -> None:
    app = server.App(server.ServeConfig(store=tmp_path, n_gpu_layers=-1))
    assert app.loader.n_gpu_layers == -1


@pytest.mark.parametrize(("given", "seen"), [(None, "true true"), ("false", "false false"),
                                              ("true", "true true")])
def test_ec2_metadata_is_a_default_not_a_rule(given: str | None, seen: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_EC2_METADATA_DISABLED"}
    if given is not None:
        env["AWS_EC2_METADATA_DISABLED"] = given
    proc = subprocess.run([sys.executable, "-c", EC2_PROBE], env=env, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == seen
