"""GitOps test fixtures: a scratch registry with a bare remote, and a fake GitHub REST API.

GitHub's API is the one thing no test can reach for real; `FakeGitHub` is a small
http.server on 127.0.0.1 that answers the few endpoints ggufops calls, with GitHub's own
status codes and messages (401 Bad credentials, 422 "A pull request already exists").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from click.testing import CliRunner, Result

from testing.repos import git, git_commit, make_registry, make_remote, write_version

MODEL = "llama3-instruct"
OTHER = "phi-mini"
VERSIONS = ("1.0.0", "2.0.0", "2.1.0", "3.0.0")
REPO = "acme/models"
TOKEN = "ghp_test_token"  # noqa: S105 - the fake accepts only this


# --- scratch registry ---------------------------------------------------------------------

@dataclass
class Scratch:
    """A registry checkout on main whose `origin` is a local bare repository."""

    root: Path
    remote: Path
    tmp: Path

    def register(self, name: str, version: str, *, parent: str | None = None,
                 metrics: dict[str, float] | None = None, push: bool = True) -> str:
        path = write_version(self.root, name, version, parent=parent)
        if metrics is not None:
            add_metrics(path, metrics)
        sha = git_commit(self.root, f"register {name}@{version}")
        if push:
            git(self.root, "push", "-q", "origin", "main")
        return sha

    def head(self, ref: str = "main", where: Path | None = None) -> str:
        return git(where or self.root, "rev-parse", ref)

    def remote_head(self) -> str:
        return git(self.remote, "rev-parse", "main")

    def clone(self, name: str) -> Path:
        dest = self.tmp / name
        git(self.tmp, "clone", "-q", str(self.remote), str(dest))
        return dest

    def env_text(self, env: str, ref: str = "main", where: Path | None = None) -> str:
        return git(where or self.root, "show", f"{ref}:environments/{env}.yaml") + "\n"

    def running(self, env: str, ref: str = "main", where: Path | None = None) -> dict[str, str]:
        data = yaml.safe_load(self.env_text(env, ref, where)) or {}
        return {m: str(e["version"]) for m, e in (data.get("models") or {}).items()}

    def canaries(self, env: str, ref: str = "main") -> dict[str, dict[str, Any]]:
        """model -> its `canary:` block ({version, weight}), for models that have one."""
        data = yaml.safe_load(self.env_text(env, ref)) or {}
        return {m: e["canary"] for m, e in (data.get("models") or {}).items() if "canary" in e}


def add_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Record gate results in a version file, as `ggufops bench --record` would."""
    doc = yaml.safe_load(path.read_text())
    doc["benchmarks"] = {"eval_sha256": doc["eval"]["sha256"], "llama_cpp_python": "0.3.36",
                         "metrics": metrics}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def make_scratch(tmp: Path) -> Scratch:
    """Template registry + llama3-instruct 1.0.0..3.0.0 and phi-mini 1.0.0, pushed."""
    root = make_registry(tmp / "registry")
    for i, version in enumerate(VERSIONS):
        path = write_version(root, MODEL, version, parent=VERSIONS[i - 1] if i else None)
        add_metrics(path, {"perplexity": 6.0 - i / 2, "tg_tokens_per_s": 100.0 + i})
    write_version(root, OTHER, "1.0.0")
    production = root / "environments" / "production.yaml"
    production.write_text(production.read_text().replace(
        "models: {}", "models: {}  # model -> the version serving traffic"))
    git_commit(root, "register models")
    remote = make_remote(tmp, root)
    git(root, "branch", "-q", "--set-upstream-to=origin/main", "main")
    return Scratch(root, remote, tmp)


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    return make_scratch(tmp_path)


@dataclass
class ScratchS3(Scratch):
    """A scratch registry whose DVC remote is a fresh prefix on the session's SeaweedFS."""

    s3: Any = None  # ggufops.s3server.ServerInfo
    prefix: str = ""

    def clone(self, name: str) -> Path:
        """A colleague's clone, its DVC remote pointed at the same S3 prefix."""
        from testing.s3 import configure_s3

        dest = super().clone(name)
        configure_s3(dest, self.s3, prefix=self.prefix)
        return dest

    def object_key(self, name: str, version: str) -> str:
        md5 = hashlib.md5(f"{name}@{version}".encode()).hexdigest()
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}"

    def upload(self, name: str, version: str) -> None:
        """Put the artifact write_version describes (its default content) into S3."""
        from testing.s3 import s3_client

        s3_client(self.s3).put_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                      Key=self.object_key(name, version),
                                      Body=f"{name}@{version}".encode())

    def delete(self, name: str, version: str) -> None:
        from testing.s3 import s3_client

        s3_client(self.s3).delete_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                         Key=self.object_key(name, version))


@pytest.fixture
def scratch_s3(tmp_path: Path, s3_server: Any) -> ScratchS3:
    """`scratch` with every registered version's artifact in a real S3 (SeaweedFS)."""
    from testing.s3 import configure_s3

    base = make_scratch(tmp_path)
    prefix = f"gitops-{uuid.uuid4().hex[:12]}"
    configure_s3(base.root, s3_server, prefix=prefix)
    scratch = ScratchS3(base.root, base.remote, base.tmp, s3_server, prefix)
    for version in VERSIONS:
        scratch.upload(MODEL, version)
    scratch.upload(OTHER, "1.0.0")
    return scratch


def cli(root: Path, *args: str) -> Result:
    """Run `ggufops -C root ARGS` in-process; stdout and stderr kept apart."""
    from ggufops.cli import main

    return CliRunner().invoke(main, ["-C", str(root), *args], catch_exceptions=False)


def ship(root: Path, ref: str, *envs: str) -> None:
    """Deploy `ref` straight to each env in turn (committed on main and pushed)."""
    for env in envs or ("staging", "production"):
        result = cli(root, "deploy", ref, "--env", env, "--direct", "--push")
        assert result.exit_code == 0, result.output + result.stderr


def ship_canary(root: Path, ref: str, env: str, weight: int) -> None:
    """Start or ramp a canary of `ref` in `env` (committed on main and pushed)."""
    result = cli(root, "deploy", ref, "--env", env, "--canary", str(weight), "--direct",
                 "--push")
    assert result.exit_code == 0, result.output + result.stderr


# --- fake GitHub --------------------------------------------------------------------------

@dataclass
class FakeGitHub:
    """State of the fake: what was created, and every request it saw."""

    url: str = ""
    token: str = TOKEN
    repo: str = REPO
    pulls: list[dict[str, Any]] = field(default_factory=list)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # commit statuses, in order
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, path: str, query: dict[str, str], auth: str,
               body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, body))
            if auth != f"Bearer {self.token}":
                return 401, {"message": "Bad credentials",
                             "documentation_url": "https://docs.github.com/rest"}
            prefix = f"/repos/{self.repo}/"
            if not path.startswith(prefix):
                return 404, {"message": "Not Found"}
            return self._route(method, path[len(prefix):], query, body)

    def _route(self, method: str, rest: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        if rest == "pulls" and method == "POST":
            return self._create_pull(body)
        if rest == "pulls" and method == "GET":
            owner_head = query.get("head", "")
            found = [p for p in self.pulls if f"{self.repo.split('/')[0]}:{p['head']['ref']}"
                     == owner_head and p["state"] == query.get("state", "open")]
            return 200, found
        match = re.fullmatch(r"statuses/([0-9a-f]{40})", rest)
        if match and method == "POST":
            if body.get("state") not in ("error", "failure", "pending", "success"):
                return 422, {"message": "Validation Failed"}
            self.statuses.append({"sha": match.group(1), **body})
            return 201, {"id": len(self.statuses), **body}
        match = re.fullmatch(r"issues/(\d+)/comments", rest)
        if match and method == "GET":
            issue = int(match.group(1))
            mine = [c for c in self.comments.values() if c["issue"] == issue]
            per_page, page = int(query.get("per_page", 30)), int(query.get("page", 1))
            return 200, mine[(page - 1) * per_page: page * per_page]
        if match and method == "POST":
            new_id = 1000 + len(self.comments)
            self.comments[new_id] = {"id": new_id, "issue": int(match.group(1)),
                                     "body": body["body"],
                                     "html_url": f"https://github.test/c/{new_id}"}
            return 201, self.comments[new_id]
        match = re.fullmatch(r"issues/comments/(\d+)", rest)
        if match and method == "PATCH" and int(match.group(1)) in self.comments:
            comment = self.comments[int(match.group(1))]
            comment["body"] = body["body"]
            return 200, comment
        return 404, {"message": "Not Found"}

    def _create_pull(self, body: dict[str, Any]) -> tuple[int, Any]:
        if any(p["head"]["ref"] == body["head"] and p["state"] == "open" for p in self.pulls):
            owner = self.repo.split("/")[0]
            return 422, {"message": "Validation Failed", "errors": [{
                "resource": "PullRequest", "code": "custom",
                "message": f"A pull request already exists for {owner}:{body['head']}."}]}
        number = len(self.pulls) + 1
        pull = {"number": number, "state": "open", "title": body["title"],
                "body": body.get("body", ""), "head": {"ref": body["head"]},
                "base": {"ref": body["base"]},
                "html_url": f"https://github.test/{self.repo}/pull/{number}"}
        self.pulls.append(pull)
        return 201, pull


def _handler(state: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, data = state.handle(self.command, url.path, query,
                                        self.headers.get("Authorization", ""), body)
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """A fake GitHub API on 127.0.0.1; GITHUB_API_URL/TOKEN/REPOSITORY point at it."""
    state = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GITHUB_API_URL", state.url)
    monkeypatch.setenv("GITHUB_TOKEN", state.token)
    monkeypatch.setenv("GITHUB_REPOSITORY", state.repo)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


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
                 extra_env: dict[str, str] | None = None) -> WorkflowRun:
    """Run every job's steps of the workflow at `path` for `event`, in order."""
    workflow = load_workflow(path)
    runner = _Runner(event, tmp / "workspace", tmp / "runner-temp", skip_ids)
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
    for job in workflow["jobs"].values():
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
    return WorkflowRun(steps, summary.read_text(), runner.workspace)


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
