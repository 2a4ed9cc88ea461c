"""`ggufops demo`: the whole story on embedded defaults, in a scratch directory.

Everything is real: SeaweedFS for S3, a bare git repository as the remote, DVC, llama.cpp
on toy models, `ggufops serve` and `ggufops agent` as processes. Every step runs the same
CLI command a person would, shows it, and is timed; the run ends with a table.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ggufops.artifacts import s3server
from ggufops.demo import fleet as demofleet
from ggufops.demo import triggerstep
from ggufops.errors import DemoFailed
from ggufops.httpjson import error_message, request_json
from ggufops.llama import toy
from ggufops.procs import free_port
from ggufops.registry.template import copy_template, project_root

MODEL = "llama3-instruct"
VERSIONS = {"2.0.0": "baseline", "2.1.0": "improved", "2.2.0": "degraded"}
PARENTS = {"2.0.0": None, "2.1.0": "2.0.0", "2.2.0": "2.1.0"}
NOTES = {
    "2.0.0": "baseline: bigram table from a slice of the training text",
    "2.1.0": "improved: more training text, better smoothing",
    "2.2.0": "degraded on purpose: noise added to the weights",
}
ROLLBACK_GOAL_S = 2.0
ROLLBACK_LIMIT_S = 30.0


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group is left (a leader's children, e.g. the agent's git
    processes, outlive it by a moment); SIGKILL what remains after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline + 5.0:  # a process stuck in the kernel: give up
        try:
            os.killpg(pgid, signal.SIGKILL if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _seconds_until(done: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `done()` held (polled every 50 ms); None if it did not within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if done():
            return time.monotonic() - began
        time.sleep(0.05)
    return None


@dataclass
class Step:
    title: str
    seconds: float = 0.0
    result: str = ""
    ok: bool = True


@dataclass
class Demo:
    workdir: Path
    out: TextIO
    steps: list[Step] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server_url: str = ""
    agent_url: str = ""
    pr_number: int = 0

    @property
    def repo(self) -> Path:
        return self.workdir / "registry"

    @property
    def remote(self) -> Path:
        return self.workdir / "remote.git"

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- running things ------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, quiet: bool = False,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command as a person would type it, show it, and show its output."""
        shown = " ".join(shlex.quote(a) for a in args)
        self.say(f"  $ {shown}")
        proc = subprocess.run(list(args), cwd=cwd or self.repo, env=self.env, text=True,
                              capture_output=True, check=False)
        output = (proc.stdout + proc.stderr).rstrip()
        if output and not quiet:
            self.say("\n".join(f"    {line}" for line in output.splitlines()))
        if check and proc.returncode != 0:
            raise DemoFailed(f"`{shown}` exited {proc.returncode}: {output.splitlines()[-1:]}")
        return proc

    def ggufops(self, *args: str, check: bool = True,
                quiet: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run(_ggufops_exe(), *args, check=check, quiet=quiet)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args, quiet=True)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        self.say(f"  $ {' '.join(shlex.quote(a) for a in args)} &   (log: {log.name})")
        proc = subprocess.Popen(list(args), cwd=self.workdir, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _wait_group_gone(proc.pid)
        self.procs.clear()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        step = Step(title)
        self.steps.append(step)
        self.say(f"\n== {len(self.steps)}. {title}")
        began = time.monotonic()
        try:
            yield step
        except KeyboardInterrupt:
            step.ok = False
            step.result = "interrupted"
            raise
        except BaseException:
            step.ok = False
            step.result = step.result or "FAILED"
            raise
        finally:
            step.seconds = time.monotonic() - began
            self.say(f"   -> {step.result or 'done'} ({step.seconds:.2f} s)")

    # -- the model-info endpoint ---------------------------------------------------------

    def serving(self) -> dict[str, Any] | None:
        try:
            reply = request_json("GET", f"{self.server_url}/v1/models", timeout=2)
        except OSError:
            return None
        entries = reply.data.get("data", []) if isinstance(reply.data, dict) else []
        for entry in entries:
            if entry.get("name") == MODEL:
                return dict(entry)
        return None

    def wait_serving(self, version: str, timeout: float) -> float:
        took = _seconds_until(lambda: (self.serving() or {}).get("version") == version, timeout)
        if took is None:
            raise DemoFailed(f"the server did not serve {MODEL}@{version} within {timeout:.0f} s "
                             f"(serving: {self.serving()}); see {self.workdir}/agent.log")
        return took

    def wait_canary(self, version: str, timeout: float) -> float:
        took = _seconds_until(
            lambda: ((self.serving() or {}).get("canary") or {}).get("version") == version,
            timeout)
        if took is None:
            raise DemoFailed(f"the server did not load canary {MODEL}@{version} within "
                             f"{timeout:.0f} s; see {self.workdir}/agent.log")
        return took

    def complete_as(self, user: str, prompt: str) -> str:
        """Which display id answered a request from `user` (canaries are sticky per user)."""
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "user": user}
        reply = request_json("POST", f"{self.server_url}/v1/completions", body, timeout=30)
        if reply.status != 200:
            raise DemoFailed(f"/v1/completions answered {error_message(reply)}")
        return str(reply.data["model"])

    def trigger_sync(self) -> None:
        """What a webhook on push would do: ask the agent to look at once."""
        with contextlib.suppress(OSError):
            request_json("POST", f"{self.agent_url}/sync", {}, timeout=2)

    def complete(self, prompt: str) -> str:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0.8,
                "seed": 7}
        reply = request_json("POST", f"{self.server_url}/v1/completions", body, timeout=30)
        if reply.status != 200:
            raise DemoFailed(f"/v1/completions answered {error_message(reply)}")
        return str(reply.data["choices"][0]["text"])


def _ggufops_exe() -> str:
    exe = Path(sys.executable).parent / "ggufops"
    return str(exe) if exe.exists() else "ggufops"


# --- the story ------------------------------------------------------------------------------


def run_demo(workdir: Path | None = None, *, keep: bool = False,
             out: TextIO = sys.stdout) -> list[Step]:
    """Run the whole story; raise DemoFailed if any step fails. Always stops what it started."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    scratch = workdir or Path(tempfile.mkdtemp(prefix="ggufops-demo-"))
    scratch.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir=scratch, out=out)
    demo.say(f"ggufops demo in {scratch}")
    s3 = s3server.S3Server(scratch / "s3")
    try:
        _story(demo, s3)
    finally:
        demo.stop_all()
        s3.stop()
        _print_table(demo)
        if not keep and workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return demo.steps


def _story(demo: Demo, s3: s3server.S3Server) -> None:
    _start_s3(demo, s3)
    _make_registry(demo, s3)
    paths = _build_models(demo)
    _register(demo, paths)
    _start_host(demo)
    _first_deploy(demo)
    _upgrade(demo)
    _rollback(demo)
    _blocked(demo)
    _auto_rollback(demo)
    _canary(demo)
    _archived(demo)
    _history(demo)
    _fleet(demo)


def _start_s3(demo: Demo, s3: s3server.S3Server) -> None:
    with demo.step("start the embedded S3 server (SeaweedFS on 127.0.0.1)") as step:
        s3.start()
        info = s3.info()
        demo.env = {**os.environ, **info.env(), "GIT_TERMINAL_PROMPT": "0",
                    "DVC_NO_ANALYTICS": "1", "CI": "true"}
        demo.env.setdefault("GIT_AUTHOR_NAME", "ggufops demo")
        demo.env.setdefault("GIT_AUTHOR_EMAIL", "demo@ggufops.invalid")
        demo.env.setdefault("GIT_COMMITTER_NAME", "ggufops demo")
        demo.env.setdefault("GIT_COMMITTER_EMAIL", "demo@ggufops.invalid")
        step.result = f"{info.endpoint}, bucket {info.bucket}, up in {s3.startup_seconds:.1f} s"


def _make_registry(demo: Demo, s3: s3server.S3Server) -> None:
    with demo.step("create the registry from the template, with a bare git remote") as step:
        demo.repo.mkdir()
        demo.git("init", "-q", "-b", "main")
        copy_template(project_root(), demo.repo)
        _write_dvc_local(demo.repo, s3.info().dvc_local_values())
        demo.git("add", "-A")
        demo.git("commit", "-q", "-m", "Start the model registry from the ggufops template")
        demo.run("git", "init", "-q", "--bare", "-b", "main", str(demo.remote), cwd=demo.workdir)
        demo.git("remote", "add", "origin", str(demo.remote))
        demo.git("push", "-q", "-u", "origin", "main")
        demo.ggufops("validate")
        step.result = f"{demo.remote} (credentials only in .dvc/config.local)"


def _write_dvc_local(repo: Path, values: dict[str, str]) -> None:
    lines = ["['remote \"models\"']"] + [f"    {k} = {v}" for k, v in values.items()]
    path = repo / ".dvc" / "config.local"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def _build_models(demo: Demo) -> dict[str, Path]:
    with demo.step("build the toy llama.cpp models (deterministic, cached)") as step:
        cache = project_root() / ".ggufops" / "toys"
        paths = toy.build_toy_set(cache, names=set(VERSIONS.values()))
        sizes = ", ".join(f"{n} {p.stat().st_size // 1024} KiB" for n, p in sorted(paths.items()))
        step.result = sizes
        return paths


def _register(demo: Demo, paths: dict[str, Path]) -> None:
    with demo.step(f"register {MODEL} 2.0.0, 2.1.0 and 2.2.0 (artifacts to S3 via DVC)") as step:
        for version, toy_name in VERSIONS.items():
            args = ["register", str(paths[toy_name]), "--model", MODEL, "--version", version,
                    "--base-model", "llama3", "--notes", NOTES[version]]
            parent = PARENTS[version]
            if parent:
                args += ["--parent", parent]
            demo.ggufops(*args)
            demo.ggufops("bench", f"{MODEL}@{version}", "--record", quiet=True)
        demo.git("add", "-A")
        demo.git("commit", "-q", "-m", f"Register {MODEL} 2.0.0, 2.1.0, 2.2.0")
        demo.git("push", "-q", "origin", "main")
        demo.ggufops("list")
        step.result = "3 versions registered and benchmarked; artifacts in S3, files in git"


def _start_host(demo: Demo) -> None:
    with demo.step("start an inference host: `ggufops serve` + `ggufops agent`") as step:
        token_file = demo.workdir / "admin-token"
        token_file.write_text(secrets.token_urlsafe(32))
        token_file.chmod(0o600)
        server_port, agent_port = free_port(), free_port()
        demo.server_url = f"http://127.0.0.1:{server_port}"
        demo.agent_url = f"http://127.0.0.1:{agent_port}"
        exe = _ggufops_exe()
        demo.start("serve", exe, "serve", "--store", str(demo.workdir / "host" / "store"),
                   "--port", str(server_port), "--admin-token-file", str(token_file))
        demo.start("agent", exe, "agent", "--repo", str(demo.remote), "--env", "production",
                   "--store", str(demo.workdir / "host" / "store"),
                   "--server", demo.server_url, "--admin-token-file", str(token_file),
                   "--s3-endpoint", demo.env["AWS_ENDPOINT_URL_S3"],
                   "--interval", "1", "--status-port", str(agent_port),
                   "--state-dir", str(demo.workdir / "host" / "agent"),
                   "--host-name", "host-1", "--heartbeat", "5")
        _wait_http(f"{demo.server_url}/healthz", 60, demo)
        _wait_http(f"{demo.agent_url}/status", 60, demo)
        step.result = f"server {demo.server_url}, agent {demo.agent_url} (polls every 1 s)"


def _wait_http(url: str, timeout: float, demo: Demo) -> None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            request_json("GET", url, timeout=2)
            return  # it answers (maybe 503 while no model is loaded): it is up
        except OSError:
            time.sleep(0.1)
    raise DemoFailed(f"{url} did not answer within {timeout:.0f} s; see logs in {demo.workdir}")


def _promote(demo: Demo, version: str, env: str,
             canary: int | None = None) -> subprocess.CompletedProcess[str]:
    """A deploy PR: branch + commit, the CI checks on it, then merge if they pass."""
    extra = ["--canary", str(canary)] if canary else []
    demo.ggufops("deploy", f"{MODEL}@{version}", "--env", env, "--push", *extra)
    branch = f"deploy/{env}/{MODEL}-{version}" + (f"-canary-{canary}" if canary else "")
    demo.pr_number += 1
    demo.say(f"  (pull request #{demo.pr_number}: {branch} -> main; CI runs validate and gate)")
    demo.git("checkout", "-q", branch)
    demo.ggufops("validate", "--base", "origin/main", "--check-artifacts")
    report = demo.workdir / f"gate-{env}-{version}{'-canary' if canary else ''}.md"
    gate = demo.ggufops("gate", "--base", "origin/main", "--env", env, "--report", str(report),
                        check=False, quiet=True)
    _show_report(demo, report, gate)
    demo.git("checkout", "-q", "main")
    if gate.returncode == 0:
        demo.git("merge", "-q", "--no-ff", "-m",
                 f"Merge pull request #{demo.pr_number} from demo/{branch}", branch)
        demo.git("push", "-q", "origin", "main")
        demo.say(f"  (pull request #{demo.pr_number} merged)")
    return gate


def _show_report(demo: Demo, report: Path, gate: subprocess.CompletedProcess[str]) -> None:
    """The gate's verdict and its table, as the PR comment shows them."""
    lines = report.read_text().splitlines() if report.is_file() else []
    keep = [ln for ln in lines if ln.startswith(("## ", "### ", "| ", "- quality reference"))
            and not ln.startswith("|---")]
    if gate.returncode not in (0, 1) or not keep:
        keep = (gate.stdout + gate.stderr).strip().splitlines()[-3:]
    demo.say("\n".join(f"    {line}" for line in keep))
    failure = [ln for ln in gate.stderr.splitlines() if ln.startswith("error:")]
    if failure:
        demo.say(f"    {failure[-1]}")


def _first_deploy(demo: Demo) -> None:
    with demo.step(f"deploy {MODEL}@2.0.0: staging, then production (PRs, gated)") as step:
        for env in ("staging", "production"):
            if _promote(demo, "2.0.0", env).returncode != 0:
                raise DemoFailed(f"the gate refused 2.0.0 for {env}")
        demo.trigger_sync()
        waited = demo.wait_serving("2.0.0", 120)
        entry = demo.serving() or {}
        demo.say(f"    /v1/models: {json.dumps(entry)}")
        demo.say(f"    /v1/completions 'The ' -> {demo.complete('The ')!r}")
        step.result = f"serving {entry.get('display_id', '2.0.0')} ({waited:.1f} s after merge)"


def _upgrade(demo: Demo) -> None:
    with demo.step(f"deploy {MODEL}@2.1.0 (improved): the gate passes, the host switches") as step:
        for env in ("staging", "production"):
            if _promote(demo, "2.1.0", env).returncode != 0:
                raise DemoFailed(f"the gate refused the improved model 2.1.0 for {env}")
        demo.trigger_sync()
        waited = demo.wait_serving("2.1.0", 120)
        step.result = f"serving 2.1.0, switched {waited:.1f} s after the merge"


def _rollback(demo: Demo) -> None:
    with demo.step("roll production back: a generated revert commit, pushed") as step:
        began = time.monotonic()
        demo.ggufops("rollback", "--env", "production", "--model", MODEL,
                     "--reason", "demo: practice the break-glass path", "--push")
        pushed = time.monotonic()
        demo.trigger_sync()
        demo.wait_serving("2.0.0", ROLLBACK_LIMIT_S)
        seconds = time.monotonic() - pushed
        demo.git("pull", "-q", "--ff-only", "origin", "main")
        verdict = "goal met" if seconds < ROLLBACK_GOAL_S else f"goal {ROLLBACK_GOAL_S:.0f} s"
        step.result = (f"serving 2.0.0 again {seconds:.2f} s after the push "
                       f"({pushed - began:.2f} s to make and push the commit; {verdict})")


def _blocked(demo: Demo) -> None:
    with demo.step(f"try {MODEL}@2.2.0 (degraded): the gate blocks the PR") as step:
        gate = _promote(demo, "2.2.0", "staging")
        if gate.returncode == 0:
            raise DemoFailed("the gate let the degraded model 2.2.0 through")
        entry = demo.serving() or {}
        if entry.get("version") != "2.0.0":
            raise DemoFailed(f"production changed although nothing was merged: {entry}")
        step.result = "gate failed on perplexity; not merged; production still serves 2.0.0"


def _auto_rollback(demo: Demo) -> None:
    with demo.step(f"users rate {MODEL}@2.1.0 low: a rollback trigger reverts it, no person "
                   "acting") as step:
        triggerstep.set_policy(demo)
        if _promote(demo, "2.1.0", "production").returncode != 0:
            raise DemoFailed("the gate refused 2.1.0 for production")
        demo.trigger_sync()
        demo.wait_serving("2.1.0", 120)
        seconds, ratings = triggerstep.rate_until_rolled_back(demo, "2.1.0", "2.0.0")
        trailer = triggerstep.trigger_commit(demo)
        step.result = (f"rolled back by the agent {seconds:.2f} s after 2.1.0 began serving "
                       f"({ratings} ratings of 1); {trailer.split(': ', 1)[1]}")


def _canary(demo: Demo) -> None:
    with demo.step(f"canary: {MODEL}@2.1.0 on 25% of production traffic (PR, gated)") as step:
        if _promote(demo, "2.1.0", "production", canary=25).returncode != 0:
            raise DemoFailed("the gate refused the canary 2.1.0 for production")
        demo.trigger_sync()
        waited = demo.wait_canary("2.1.0", 120)
        answered: dict[str, int] = {}
        for i in range(40):
            display = demo.complete_as(f"user-{i}", "The ")
            answered[display] = answered.get(display, 0) + 1
        demo.say(f"    40 users, one request each, answered by: {answered}")
        if len(answered) != 2:
            raise DemoFailed(f"expected both versions to answer, got {answered}")
        step.result = (f"primary 2.0.0 + canary 2.1.0 (25%), live {waited:.1f} s after merge; "
                       f"{answered.get(f'{MODEL}-v2.1.0-f32', 0)} of 40 users on the canary")


def _archived(demo: Demo) -> None:
    with demo.step(f"deprecate and archive {MODEL}@2.2.0: a deploy of it is refused") as step:
        demo.ggufops("deprecate", f"{MODEL}@2.2.0", "--reason", "perplexity regression",
                     "--direct", "--push")
        demo.ggufops("archive", f"{MODEL}@2.2.0", "--direct", "--push")
        refused = demo.ggufops("deploy", f"{MODEL}@2.2.0", "--env", "staging", check=False,
                               quiet=True)
        if refused.returncode != 1 or "is archived" not in refused.stderr:
            raise DemoFailed(f"deploying an archived version was not refused: {refused.stderr}")
        demo.say(f"    {refused.stderr.strip().splitlines()[-1]}")
        step.result = f"2.2.0 archived (registry/{MODEL}/lifecycle.yaml); its deploy refused"


def _history(demo: Demo) -> None:
    with demo.step("deployment history of production, from git") as step:
        proc = demo.ggufops("history", "--env", "production")
        step.result = f"{max(len(proc.stdout.splitlines()) - 1, 0)} events"


def _fleet(demo: Demo) -> None:
    with demo.step("a second host held back: `fleet status` shows drift, then it converges") \
            as step:
        step.result = demofleet.held_back_host(demo, free_port, _ggufops_exe())


def _print_table(demo: Demo) -> None:
    if not demo.steps:
        return
    width = max(len(s.title) for s in demo.steps)
    demo.say("\n" + "=" * (width + 30))
    demo.say(f"{'#':>2}  {'step':<{width}}  {'time':>8}  result")
    for i, s in enumerate(demo.steps, 1):
        mark = "ok" if s.ok else "FAILED"
        demo.say(f"{i:>2}  {s.title:<{width}}  {s.seconds:>7.2f}s  {mark}: {s.result}")
    total = sum(s.seconds for s in demo.steps)
    demo.say(f"    {'total':<{width}}  {total:>7.2f}s")
