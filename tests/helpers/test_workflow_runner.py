"""The local workflow runner (testing/workflows.py) that test_workflows.py trusts.

Expressions, `if:` conditions, job `needs` and the environment a step sees are checked here
against what GitHub Actions documents, so a wrong runner cannot make a workflow test pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.repos import git, git_commit
from testing.workflows import (
    Event,
    Expression,
    ExpressionError,
    job_order,
    run_workflow,
    step_condition,
    substitute,
)

CONTEXTS: dict[str, Any] = {
    "github": {"event_name": "pull_request", "repository": "acme/models",
               "event": {"pull_request": {"head": {"repo": {"full_name": "acme/models"}}}}},
    "inputs": {"env": "production", "count": 3, "empty": ""},
    "steps": {"gate": {"outputs": {"verdict": "pass"}, "outcome": "failure"}},
}
OK = {"failed": False}
FAILED = {"failed": True}


def evaluate(text: str, status: dict[str, bool] = OK) -> Any:
    return Expression(text).evaluate(CONTEXTS, status)


@pytest.mark.parametrize(("text", "value"), [
    ("'it''s'", "it's"),
    ("42", 42),
    ("1.5", 1.5),
    ("true && null", None),
    ("inputs.env", "production"),
    ("inputs['env']", "production"),
    ("steps.gate.outputs.verdict", "pass"),
    ("inputs.missing", None),
    ("inputs.missing.deeper", None),
    ("inputs.env == 'PRODUCTION'", True),  # strings compare ignoring case
    ("inputs.env != 'staging'", True),
    ("!inputs.empty", True),
    ("inputs.empty || 'fallback'", "fallback"),
    ("inputs.count && inputs.env", "production"),
    ("github.event.pull_request.head.repo.full_name == github.repository", True),
    ("!(inputs.env == 'production' && steps.gate.outcome == 'success')", True),
])
def test_expressions(text: str, value: Any) -> None:
    assert evaluate(text) == value


@pytest.mark.parametrize(("text", "ok", "failed"), [
    ("success()", True, False),
    ("failure()", False, True),
    ("always()", True, True),
    ("cancelled()", False, False),
    ("!cancelled()", True, True),
])
def test_status_functions(text: str, ok: bool, failed: bool) -> None:
    assert (evaluate(text, OK), evaluate(text, FAILED)) == (ok, failed)


@pytest.mark.parametrize("text", ["toJSON(inputs)", "inputs.env ==", "a b", "'open"])
def test_what_the_runner_cannot_read_is_an_error(text: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_if_conditions_follow_the_job_status() -> None:
    assert step_condition(None, CONTEXTS, OK) is True
    assert step_condition(None, CONTEXTS, FAILED) is False  # an earlier step failed
    assert step_condition("${{ inputs.env == 'production' }}", CONTEXTS, OK) is True
    assert step_condition("inputs.env == 'production'", CONTEXTS, FAILED) is False
    assert step_condition("${{ failure() }}", CONTEXTS, FAILED) is True
    assert step_condition("${{ !cancelled() && inputs.count }}", CONTEXTS, FAILED) is True


def test_substitute_writes_values_as_github_does() -> None:
    text = "env=${{ inputs.env }} n=${{ inputs.count }} yes=${{ true }} none=[${{ null }}]"
    assert substitute(text, CONTEXTS, OK) == "env=production n=3 yes=true none=[]"


def test_jobs_run_after_what_they_need() -> None:
    jobs = {"deploy": {"needs": ["gate", "validate"]}, "gate": {"needs": "validate"},
            "validate": {}, "notify": {}}
    assert job_order(jobs) == ["validate", "gate", "deploy", "notify"]
    with pytest.raises(AssertionError, match="cycle"):
        job_order({"a": {"needs": "b"}, "b": {"needs": "a"}})
    with pytest.raises(AssertionError, match="lacks"):
        job_order({"a": {"needs": "ghost"}})


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    work = tmp_path / "src"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "hello.txt").write_text("from the checkout\n")
    git_commit(work, "initial", "hello.txt")
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare


WORKFLOW: dict[str, Any] = {
    "name": "runner-check",
    "on": {"workflow_dispatch": {}},
    "env": {"LEVEL": "workflow", "SHARED": "workflow"},
    "jobs": {
        "second": {"needs": "first", "runs-on": "ubuntu-latest", "steps": [
            {"uses": "actions/checkout@v4"},
            {"name": "runs after first", "run": "echo second"}]},
        "first": {"runs-on": "ubuntu-latest", "env": {"SHARED": "job"}, "steps": [
            {"uses": "actions/checkout@v4"},
            {"name": "env", "id": "env", "env": {"STEP": "${{ inputs.env }}"},
             "run": 'echo "$LEVEL $SHARED $STEP $(cat hello.txt)"; '
                    'echo "seen=$SHARED" >> "$GITHUB_OUTPUT"'},
            {"name": "uses an output", "run": "test '${{ steps.env.outputs.seen }}' = job"},
            {"name": "fails", "run": "exit 4"},
            {"name": "skipped after a failure", "run": "echo never"},
            {"name": "runs on failure", "if": "${{ failure() }}", "run": "echo cleanup"}]},
        "third": {"needs": ["second"], "runs-on": "ubuntu-latest", "steps": [
            {"name": "never", "run": "echo never"}]},
    },
}


def test_a_workflow_runs_in_order_with_env_outputs_and_needs(tmp_path: Path,
                                                              remote: Path) -> None:
    path = tmp_path / "wf.yml"
    path.write_text(yaml.safe_dump(WORKFLOW, sort_keys=False))
    event = Event("workflow_dispatch", remote, inputs={"env": "staging"})
    run = run_workflow(path, event, tmp_path / "run", skip_ids={})
    statuses = [(s.name, s.status) for s in run.steps]
    assert statuses == [
        ("actions/checkout@v4", "emulated"),
        ("env", "success"),
        ("uses an output", "success"),
        ("fails", "failure"),
        ("skipped after a failure", "not-run"),
        ("runs on failure", "success"),
        ("job second", "not-run"),
        ("job third", "not-run"),
    ]
    assert run.step("env").stdout == "workflow job staging from the checkout\n"
    assert run.step("fails").note == "exit 4"
    assert run.step("runs on failure").stdout == "cleanup\n"
    assert not run.ok
