"""Running a workflow's `run:` steps locally, the way a GitHub runner would (see below).

The expression evaluator, `if:` conditions, `needs` and the environment are tested in
tests/helpers/test_workflow_runner.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testing.fakegithub import REPO
from testing.repos import git

# --- running a workflow's `run:` steps locally -----------------------------------------------
#
# GitHub runs each `run:` step as `bash --noprofile --norc -eo pipefail FILE` in the
# checkout, with ${{ }} expressions substituted first and GITHUB_* variables set. This
# runner does the same for the expressions our workflows use, and stands in for the three
# actions they use: actions/checkout (a clone of the local bare remote at the event's
# commit), actions/setup-python and actions/cache (the test's own interpreter and venv
# already provide what they would). Anything else it does not know makes it fail.

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|"
                    r"(?P<op>==|!=|&&|\|\||[!().\[\],])|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))")
_STATUS_FUNCTIONS = ("success", "failure", "cancelled", "always")
_EMBEDDED = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


class ExpressionError(Exception):
    pass


class Expression:
    """A GitHub Actions expression: literals, contexts, !, ==, !=, &&, ||, status functions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if not match:
                raise ExpressionError(f"cannot parse {text[pos:]!r} in {text!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            pos = match.end()
        return tokens

    def uses_status_function(self) -> bool:
        return any(k == "name" and v in _STATUS_FUNCTIONS for k, v in self.tokens)

    def evaluate(self, contexts: dict[str, Any], status: dict[str, bool]) -> Any:
        self.pos, self.contexts, self.status = 0, contexts, status
        value = self._or()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.pos][1]!r} in {self.text!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ExpressionError(f"unexpected end of {self.text!r}")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise ExpressionError(f"expected {expected!r}, got {token[1]!r} in {self.text!r}")
        self.pos += 1
        return token

    def _or(self) -> Any:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = value if truthy(value) else right
        return value

    def _and(self) -> Any:
        value = self._compare()
        while self._peek() == "&&":
            self._take()
            right = self._compare()
            value = right if truthy(value) else value
        return value

    def _compare(self) -> Any:
        value = self._unary()
        if self._peek() in ("==", "!="):
            op = self._take()[1]
            equal = loose_equal(value, self._unary())
            return equal if op == "==" else not equal
        return value

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not truthy(self._unary())
        return self._primary()

    def _primary(self) -> Any:
        kind, text = self._take()
        if text == "(" and kind == "op":
            value = self._or()
            self._take(")")
            return value
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind != "name":
            raise ExpressionError(f"unexpected {text!r} in {self.text!r}")
        if text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text]
        if self._peek() == "(":
            return self._call(text)
        found: Any = self.contexts.get(text)
        while self._peek() in (".", "["):
            if self._take()[1] == ".":
                key: Any = self._take()[1]
            else:
                key = self._or()
                self._take("]")
            found = found.get(str(key)) if isinstance(found, dict) else None
        return found

    def _call(self, name: str) -> Any:
        if name not in _STATUS_FUNCTIONS:
            raise ExpressionError(f"function {name}() is not supported by the test runner")
        self._take("(")
        self._take(")")
        return {"success": not self.status["failed"], "failure": self.status["failed"],
                "cancelled": False, "always": True}[name]


def truthy(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "")


def loose_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()  # GitHub compares strings ignoring case
    return bool(a == b)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def substitute(text: str, contexts: dict[str, Any], status: dict[str, bool]) -> str:
    """`text` with every ${{ expression }} replaced by its value."""
    return _EMBEDDED.sub(lambda m: as_text(Expression(m.group(1)).evaluate(contexts, status)),
                         text)


def step_condition(condition: Any, contexts: dict[str, Any], status: dict[str, bool]) -> bool:
    if condition is None:
        return not status["failed"]
    text = str(condition).strip()
    match = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.DOTALL)
    expression = Expression(match.group(1) if match else text)
    value = truthy(expression.evaluate(contexts, status))
    return value if expression.uses_status_function() else value and not status["failed"]


@dataclass
class StepRun:
    name: str
    status: str  # success | failure | skipped | emulated | not-run
    note: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass
class WorkflowRun:
    steps: list[StepRun]
    summary: str
    workspace: Path

    @property
    def ok(self) -> bool:
        return all(s.status != "failure" for s in self.steps)

    def step(self, name: str) -> StepRun:
        return next(s for s in self.steps if s.name == name)

    def log(self) -> str:
        return "\n".join(f"--- {s.name}: {s.status} {s.note}\n{s.stdout}{s.stderr}"
                         for s in self.steps)


def load_workflow(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return dict(data)


@dataclass
class Event:
    """What GitHub would tell a job about the event that started it."""

    name: str  # pull_request | workflow_dispatch
    remote: Path
    repository: str = REPO
    base_ref: str = ""
    head_ref: str = ""
    pr_number: int | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    actor: str = "octo-operator"
    actor_id: str = "4242"

    def payload(self) -> dict[str, Any]:
        repo = {"full_name": self.repository, "default_branch": "main"}
        if self.name == "pull_request":
            return {"number": self.pr_number, "repository": repo, "pull_request": {
                "number": self.pr_number, "base": {"ref": self.base_ref},
                "head": {"ref": self.head_ref, "repo": {"full_name": self.repository}}}}
        return {"inputs": self.inputs, "repository": repo, "ref": "refs/heads/main"}


def run_workflow(path: Path, event: Event, tmp: Path, *, skip_ids: dict[str, str],
                 extra_env: dict[str, str] | None = None,
                 skip_outputs: dict[str, dict[str, str]] | None = None) -> WorkflowRun:
    """Run every job's steps of the workflow at `path` for `event`, in order.
    `skip_outputs`: the outputs a skipped step (by id) would have written."""
    workflow = load_workflow(path)
    runner = _Runner(event, tmp / "workspace", tmp / "runner-temp", skip_ids,
                     skip_outputs=dict(skip_outputs or {}))
    runner.temp.mkdir(parents=True)
    event_path = runner.temp / "event.json"
    event_path.write_text(json.dumps(event.payload()))
    summary = runner.temp / "step-summary.md"
    summary.touch()
    runner.contexts = {
        "github": {
            "event_name": event.name, "event": event.payload(), "repository": event.repository,
            "base_ref": event.base_ref, "head_ref": event.head_ref, "actor": event.actor,
            "actor_id": event.actor_id, "token": event.secrets.get("GITHUB_TOKEN", ""),
            "workflow": workflow.get("name", path.stem), "ref": _github_ref(event)},
        "inputs": event.inputs, "secrets": event.secrets, "vars": event.vars,
        "runner": {"os": "Linux", "arch": "X64", "temp": str(runner.temp)},
        "steps": {}, "env": {},
    }
    runner.env = _runner_env(event, runner.workspace, event_path, summary, extra_env)
    steps: list[StepRun] = []
    failed_jobs: set[str] = set()
    for name in job_order(workflow["jobs"]):
        job = workflow["jobs"][name]
        blocked = sorted(set(_needs(job)) & failed_jobs)
        if blocked:  # GitHub skips a job whose `needs` failed
            steps.append(StepRun(f"job {name}", "not-run", f"needs {', '.join(blocked)}"))
            failed_jobs.add(name)
            continue
        runner.status = {"failed": False}
        job_env = {**(workflow.get("env") or {}), **(job.get("env") or {})}
        for key, value in job_env.items():
            runner.env[key] = runner.substitute(value)
        runner.contexts["env"] = dict(job_env)
        for index, step in enumerate(job["steps"]):
            run = runner.run_step(step, index)
            steps.append(run)
            if run.status == "failure":
                runner.status["failed"] = True
        if runner.status["failed"]:
            failed_jobs.add(name)
    return WorkflowRun(steps, summary.read_text(), runner.workspace)


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


def job_order(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """The jobs in an order that runs each after every job it `needs` (file order otherwise)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError(f"jobs need each other in a cycle: {' -> '.join((*path, name))}")
        if name not in jobs:
            raise AssertionError(f"job {path[-1]} needs {name!r}, which the workflow lacks")
        if name in order:
            return
        for needed in _needs(jobs[name]):
            visit(needed, (*path, name))
        order.append(name)

    for name in jobs:
        visit(name, ())
    return order


def _github_ref(event: Event) -> str:
    return f"refs/pull/{event.pr_number}/merge" if event.pr_number else "refs/heads/main"


def _runner_env(event: Event, workspace: Path, event_path: Path, summary: Path,
                extra_env: dict[str, str] | None) -> dict[str, str]:
    import os
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_", "GITHUB_", "AWS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({
        "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": event.name,
        "GITHUB_EVENT_PATH": str(event_path), "GITHUB_REPOSITORY": event.repository,
        "GITHUB_BASE_REF": event.base_ref, "GITHUB_HEAD_REF": event.head_ref,
        "GITHUB_WORKSPACE": str(workspace), "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_ACTOR": event.actor, "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REF": _github_ref(event), "RUNNER_TEMP": str(event_path.parent),
    })
    env.update(extra_env or {})
    return env


@dataclass
class _Runner:
    event: Event
    workspace: Path
    temp: Path
    skip_ids: dict[str, str]
    skip_outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    contexts: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    status: dict[str, bool] = field(default_factory=lambda: {"failed": False})

    def substitute(self, value: Any) -> str:
        return substitute(str(value), self.contexts, self.status)

    def run_step(self, step: dict[str, Any], index: int) -> StepRun:
        name = str(step.get("name") or step.get("uses") or step.get("id") or f"step {index}")
        if not step_condition(step.get("if"), self.contexts, self.status):
            return StepRun(name, "not-run", "its `if:` is false")
        if step.get("id") in self.skip_ids:
            outputs = self.skip_outputs.get(step["id"], {})
            self.contexts["steps"][step["id"]] = {"outputs": outputs, "outcome": "skipped"}
            return StepRun(name, "skipped", self.skip_ids[step["id"]])
        if "uses" in step:
            return self.emulate(step, name)
        step_env = {k: self.substitute(v) for k, v in (step.get("env") or {}).items()}
        outputs = self.temp / f"output-{index}"
        outputs.touch()
        script = self.temp / f"step-{index}.sh"
        script.write_text(self.substitute(step["run"]))
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=self.workspace, capture_output=True, text=True, check=False,
                              env={**self.env, **step_env, "GITHUB_OUTPUT": str(outputs)})
        if step.get("id"):
            self.contexts["steps"][step["id"]] = {
                "outputs": dict(line.split("=", 1) for line in outputs.read_text().splitlines()
                                if "=" in line),
                "outcome": "success" if proc.returncode == 0 else "failure"}
        return StepRun(name, "success" if proc.returncode == 0 else "failure",
                       f"exit {proc.returncode}", proc.stdout, proc.stderr)

    def emulate(self, step: dict[str, Any], name: str) -> StepRun:
        action = str(step["uses"]).split("@")[0]
        if action == "actions/checkout":
            options = {k: self.substitute(v) for k, v in (step.get("with") or {}).items()}
            _checkout(self.event, self.workspace, options)
            return StepRun(name, "emulated", f"cloned {self.event.remote} ({options})")
        if action in ("actions/setup-python", "actions/cache"):
            return StepRun(name, "emulated", "the test's interpreter and venv provide this")
        raise AssertionError(f"the test runner does not know action {step['uses']}")


def _checkout(event: Event, workspace: Path, options: dict[str, str]) -> None:
    if not (workspace / ".git").exists():  # a later job of the run reuses the clone
        git(workspace.parent, "clone", "-q", "--no-checkout", str(event.remote), str(workspace))
    if event.name == "pull_request":
        merge_ref = f"refs/pull/{event.pr_number}/merge"
        git(workspace, "fetch", "-q", "origin", f"+{merge_ref}:refs/remotes/pull/merge")
        git(workspace, "checkout", "-q", "--detach", "refs/remotes/pull/merge")
    else:
        branch = options.get("ref") or "main"
        git(workspace, "checkout", "-q", "-B", branch, f"origin/{branch}")


def open_pull_request(remote: Path, tmp: Path, head: str, number: int,
                      base: str = "main") -> str:
    """Make refs/pull/N/merge in `remote`, as GitHub does: `head` merged into `base`."""
    work = tmp / f"pr-{number}"
    git(tmp, "clone", "-q", str(remote), str(work))
    git(work, "checkout", "-q", "--detach", f"origin/{base}")
    git(work, "merge", "-q", "--no-ff", "-m", f"Merge {head} into {base}", f"origin/{head}")
    git(work, "push", "-q", "origin", f"HEAD:refs/pull/{number}/merge")
    return git(work, "rev-parse", "HEAD")
