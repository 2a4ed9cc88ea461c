"""gate.yml's `runtime` job: a pull request that changes the llama-cpp-python pin is gated.

Run with the local workflow runner (testing/workflows.py) against a scratch registry on
SeaweedFS with toy@1.0.0 in production. The steps that install packages are skipped (pip
needs the network; no second llama-cpp-python is built in the suite): the skipped
`runtimes` step hands over the base runtime (this interpreter) and, as the pull request's
runtime, a stand-in: this interpreter behind a script that overrides the RMS-norm epsilon
for its children ($GGUFOPS_RUNTIME_LLAMA_ARGS), which shifts the numerics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ggufops.artifacts import s3config
from testing.repos import git, git_commit, make_remote
from testing.scratch import ScratchS3
from testing.workflows import Event, load_workflow, open_pull_request, run_workflow

ROOT = Path(__file__).resolve().parents[2]
GATE_YML = ROOT / ".github" / "workflows" / "gate.yml"
SHIFTED = {"kv_overrides": {"llama.attention.layer_norm_rms_epsilon": 0.5}}
PYPROJECT = """[project]
name = "models"
version = "0"
dependencies = []
[project.optional-dependencies]
llama = ["{pin}", "numpy"]
"""


def stand_in_runtime(tmp: Path) -> Path:
    script = tmp / "shifted-python"
    script.write_text(f"#!/bin/sh\nexport GGUFOPS_RUNTIME_LLAMA_ARGS='{json.dumps(SHIFTED)}'"
                      f"\nexec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def pin_pr(toy_registry: Path, tmp_path: Path) -> ScratchS3:
    """main pins llama-cpp-python 0.3.35; PR #3 pins 0.3.36."""
    root = toy_registry
    (root / "pyproject.toml").write_text(PYPROJECT.format(pin="llama-cpp-python==0.3.35"))
    git_commit(root, "pin llama-cpp-python 0.3.35")
    remote = make_remote(tmp_path, root)
    git(root, "checkout", "-q", "-b", "llama-0.3.36")
    (root / "pyproject.toml").write_text(PYPROJECT.format(pin="llama-cpp-python==0.3.36"))
    git_commit(root, "upgrade llama-cpp-python to 0.3.36")
    git(root, "push", "-q", "origin", "llama-0.3.36")
    open_pull_request(remote, tmp_path, "llama-0.3.36", 3)
    return ScratchS3(root, remote, tmp_path, s3config.resolve(root), "")


def test_runtime_job_runs_on_a_pin_change_and_blocks_a_shifting_runtime(
        pin_pr: ScratchS3, tmp_path: Path) -> None:
    settings = pin_pr.s3
    event = Event("pull_request", pin_pr.remote, base_ref="main", head_ref="llama-0.3.36",
                  pr_number=3, repository="acme/models",
                  vars={"S3_ENDPOINT_URL": settings.endpoint_url, "S3_URL": settings.url},
                  secrets={"AWS_ACCESS_KEY_ID": settings.access_key_id,
                           "AWS_SECRET_ACCESS_KEY": settings.secret_access_key})
    payload = event.payload()
    payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/models"  # no comment
    event.payload = lambda: payload  # type: ignore[method-assign]
    skipped = {"install": "the test's venv has ggufops", "runtimes": "no build in the suite"}
    run = run_workflow(GATE_YML, event, tmp_path / "run", skip_ids=skipped, skip_outputs={
        "runtimes": {"base-python": sys.executable,
                     "head-python": str(stand_in_runtime(tmp_path))}})
    kinds = {s.name: s.status for s in run.steps}
    pins = run.step("Compare the llama-cpp-python pins of the base and the pull request")
    assert "llama-cpp-python==0.3.35 -> llama-cpp-python==0.3.36" in pins.stdout
    assert kinds["Build the base's and the pull request's runtimes"] == "skipped"
    assert kinds["Run the llama.cpp gates"] == "success", run.log()  # no model changed
    gate_step = run.step("Run the runtime gate")
    assert gate_step.status == "failure", run.log()
    assert "error: gate failed: toy@1.0.0 on the candidate runtime in production: " \
        "perplexity " in gate_step.stderr
    report = json.loads((run.workspace / "runtime-gate.json").read_text())
    assert report["provenance"]["runtimes"][1]["llama_args"] == SHIFTED
    assert "❌ ggufops gate FAILED" in run.summary and "candidate runtime: " in run.summary


def test_runtime_job_is_wired_to_the_pin() -> None:
    workflow = load_workflow(GATE_YML)
    assert "pyproject.toml" in workflow["on"]["pull_request"]["paths"]
    steps = workflow["jobs"]["runtime"]["steps"]
    gated = [s for s in steps if (s.get("id") != "pins" and "uses" not in s)
             or s.get("uses", "").startswith(("actions/setup-python", "actions/cache"))]
    assert all("steps.pins.outputs.changed == 'true'" in s.get("if", "") for s in gated)
    caches = [s["with"] for s in steps if s.get("uses", "").startswith("actions/cache")]
    assert any(c["path"] == "~/.cache/ggufops-runtimes" and "steps.pins.outputs.base" in c["key"]
               and "steps.pins.outputs.head" in c["key"] for c in caches)
