"""Real `ggufops serve` and `ggufops agent` processes for tests, a TCP proxy in front of S3
that can throttle or drop it, and a registry "world" that publishes, deploys and reverts
through a bare git remote. Every process started here is stopped by a finalizer."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from ggufops.artifacts.ggufheader import read_header
from ggufops.artifacts.s3server import ServerInfo
from ggufops.llama import toy
from ggufops.procs import free_port
from testing.repos import (
    git,
    git_commit,
    make_registry,
    make_remote,
    set_environment,
    write_version,
)
from testing.s3 import s3_client
from testing.toys import TOY_DIR

GGUFOPS = Path(sys.executable).parent / "ggufops"
TOKEN = "test-admin-token-0123456789abcdef"  # noqa: S105 - a test token
MODEL = "llama3-instruct"
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError) as e:
            last = e
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


# --- HTTP helpers --------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, *, token: str | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get(url: str) -> Any:
    status, body = http("GET", url)
    assert status == 200, (url, status, body)
    return body


def serving(server_url: str) -> dict[str, dict[str, Any]]:
    """name -> /v1/models entry."""
    return {m["name"]: m for m in get(f"{server_url}/v1/models")["data"]}


def serving_version(server_url: str, name: str = MODEL) -> str | None:
    entry = serving(server_url).get(name)
    return entry["version"] if entry else None


def canonical(series: str) -> str:
    """A series with its labels in name order (their order in the text has no meaning)."""
    name, brace, rest = series.partition("{")
    if not brace:
        return series
    labels = sorted(re.findall(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"', rest))
    return f"{name}{{{','.join(labels)}}}"


def prometheus_series(text: str) -> dict[str, float]:
    """Prometheus text as {canonical series: value}."""
    pairs = (line.rsplit(" ", 1) for line in text.splitlines()
             if line and not line.startswith("#"))
    return {canonical(series): float(value) for series, value in pairs}


def metrics(url: str) -> dict[str, float]:
    """Prometheus text from url/metrics as {canonical series: value}."""
    status, text = http("GET", f"{url}/metrics")
    assert status == 200, text
    return prometheus_series(text)


# --- processes -------------------------------------------------------------------------------


class Proc:
    """A ggufops subprocess whose first stdout line names its URL (`... http://host:port ...`)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.url = self._read_url(startup_timeout)

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()
            found.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        line = found[0] if found else ""
        self.banner = line  # what the process printed first (its URL)
        words = [w for w in line.split() if w.startswith("http://") and "@" not in w]
        if not words:
            self.kill()
            raise AssertionError(f"{self.args[:2]} did not start: {line!r}; log: "
                                 f"{self.log_tail()}")
        return words[0].rstrip(";,").removesuffix("/status")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close()

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return int(self.proc.returncode)

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def serve_args(store: Path, token_file: Path | None, port: int = 0) -> list[str]:
    args = [str(GGUFOPS), "serve", "--store", str(store), "--port", str(port), "--threads", "1"]
    return args + (["--admin-token-file", str(token_file)] if token_file else [])


@dataclass
class Processes:
    """Starts serve/agent processes and stops every one of them at teardown."""

    tmp: Path
    started: list[Proc] = field(default_factory=list)

    def serve(self, store: Path, token_file: Path | None, port: int = 0,
              extra: list[str] | None = None) -> Proc:
        proc = Proc([*serve_args(store, token_file, port), *(extra or [])],
                    self.tmp / f"serve-{len(self.started)}.log")
        self.started.append(proc)
        return proc

    def agent(self, world: World, server_url: str, *, s3_endpoint: str | None = None,
              interval: float = 0.2, extra: list[str] | None = None, repo_url: str | None = None,
              env: dict[str, str] | None = None) -> Proc:
        args = [str(GGUFOPS), "agent", "--repo", repo_url or str(world.remote), "--env",
                "production",
                "--store", str(world.store), "--server", server_url,
                "--interval", str(interval), "--status-port", "0",
                "--admin-token-file", str(world.token_file), "--state-dir",
                str(world.state_dir), "--s3-endpoint", s3_endpoint or world.s3.endpoint,
                "--backoff-max", "1", "--timeout", "60", *(extra or [])]
        proc = Proc(args, self.tmp / f"agent-{len(self.started)}.log",
                    env={**world.s3.env(), **(env or {})})
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


# --- a TCP proxy in front of S3 ------------------------------------------------------------


class ThrottledProxy:
    """127.0.0.1:port -> target; `rate` limits bytes/s towards the client; `hold_after(n)`
    lets n more bytes through and then holds every response until `resume()` (a download
    that is certainly in progress and certainly unfinished, whatever the machine's speed);
    `down()` refuses connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.rate: float | None = None
        self.forwarded = 0  # bytes sent towards clients
        self._budget: int | None = None
        self._flow = threading.Condition()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def hold_after(self, n: int) -> None:
        with self._flow:
            self._budget = n

    def resume(self) -> None:
        with self._flow:
            self._budget = None
            self._flow.notify_all()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Close the port and cut every open connection: S3 is unreachable."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                rate = self.rate if throttled else None
                data = src.recv(8192 if rate else 65536)
                if not data:
                    break
                if not throttled:
                    dst.sendall(data)
                    continue
                self._forward(dst, data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


    def _forward(self, dst: socket.socket, data: bytes) -> None:
        """Send `data` towards the client within the budget; hold while it is spent."""
        while data:
            with self._flow:
                while self._budget == 0:
                    self._flow.wait(0.5)
                    if dst.fileno() < 0:
                        return
                n = len(data) if self._budget is None else min(len(data), self._budget)
                if self._budget is not None:
                    self._budget -= n
                self.forwarded += n
            dst.sendall(data[:n])
            data = data[n:]


@pytest.fixture
def s3_proxy(s3_server: ServerInfo) -> Iterator[ThrottledProxy]:
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    proxy = ThrottledProxy(host, int(port))
    proxy.up()
    try:
        yield proxy
    finally:
        proxy.down()


# --- the registry world ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def runtime_models() -> dict[str, Path]:
    """Three real toy models (llama.cpp loads them): baseline, improved, degraded."""
    return toy.build_toy_set(TOY_DIR, names=["baseline", "improved", "degraded"])


@dataclass
class World:
    """A registry checkout pushed to a bare remote; artifacts in S3 under a private prefix."""

    repo: Path
    remote: Path
    store: Path
    state_dir: Path
    token_file: Path
    s3: ServerInfo
    prefix: str
    models: dict[str, Path]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def key(self, md5: str) -> str:
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}"

    def publish(self, version: str, toy_name: str, name: str = MODEL,
                content: bytes | None = None) -> dict[str, Any]:
        """Upload a toy model's bytes (or `content`) to S3 and commit its version file."""
        quant = read_header(self.models[toy_name]).quantization
        content = content if content is not None else self.models[toy_name].read_bytes()
        write_version(self.repo, name, version, content=content, quantization=quant)
        path = self.repo / "registry" / name / f"{version}.yaml"
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        s3_client(self.s3).put_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                      Key=self.key(doc["artifact"]["dvc_md5"]), Body=content)
        self.docs[f"{name}@{version}"] = doc
        return doc

    def corrupt(self, version: str, name: str = MODEL, *, shorter: bool = False) -> None:
        """Replace the object in S3 with other bytes of the same size (or 1 KiB fewer)."""
        doc = self.docs[f"{name}@{version}"]
        size = doc["artifact"]["size"] - (1024 if shorter else 0)
        data = bytearray(self.models["degraded"].read_bytes()[:size])
        data[-1] ^= 0xFF
        s3_client(self.s3).put_object(Bucket=self.s3.bucket,  # type: ignore[attr-defined]
                                      Key=self.key(doc["artifact"]["dvc_md5"]), Body=bytes(data))

    def deploy(self, version: str, name: str = MODEL, message: str | None = None) -> str:
        """Point production at name@version, commit and push; the new commit."""
        set_environment(self.repo, "production", {name: version})
        return self.push(message or f"deploy {name}@{version} to production")

    def deploy_canary(self, version: str, canary: tuple[str, int] | None,
                      name: str = MODEL) -> str:
        """Point production at name@version with `canary` (version, weight) or none; push."""
        entry: dict[str, Any] = {"version": version}
        if canary is not None:
            entry["canary"] = {"version": canary[0], "weight": canary[1]}
        body = {"environment": "production", "models": {name: entry}}
        path = self.repo / "environments" / "production.yaml"
        path.write_text("# production\n" + yaml.safe_dump(body, sort_keys=False))
        what = f"canary {canary[0]} at {canary[1]}%" if canary else "no canary"
        return self.push(f"deploy {name}@{version} with {what} to production")

    def push(self, message: str) -> str:
        sha = git_commit(self.repo, message)
        git(self.repo, "push", "-q", "origin", "main")
        return sha

    def revert(self, commit: str) -> str:
        git(self.repo, "revert", "--no-edit", commit)
        git(self.repo, "push", "-q", "origin", "main")
        return git(self.repo, "rev-parse", "HEAD")

    def sha256(self, version: str, name: str = MODEL) -> str:
        return str(self.docs[f"{name}@{version}"]["artifact"]["sha256"])

    def stored(self) -> set[str]:
        """sha256 of every object in the local store."""
        objects = self.store / "sha256"
        return {p.name.removesuffix(".gguf") for p in objects.glob("*.gguf")}

    def store_temp_files(self) -> list[Path]:
        return [p for p in (self.store / "tmp").glob("*") if p.is_file()] \
            if (self.store / "tmp").is_dir() else []


def make_world(tmp: Path, s3: ServerInfo, models: dict[str, Path]) -> World:
    repo = make_registry(tmp / "registry")
    remote = make_remote(tmp, repo)
    prefix = f"rt-{uuid.uuid4().hex[:12]}"
    config = repo / ".dvc" / "config"
    config.write_text(config.read_text().replace("url = s3://models", f"url = s3://models/{prefix}")
                      .replace("endpointurl = http://127.0.0.1:8333",
                               f"endpointurl = {s3.endpoint}"))
    git_commit(repo, "use a private prefix of the test S3")
    git(repo, "push", "-q", "origin", "main")
    token_file = tmp / "admin-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return World(repo=repo, remote=remote, store=tmp / "store", state_dir=tmp / "agent-state",
                 token_file=token_file, s3=s3, prefix=prefix, models=models)


@pytest.fixture
def world(tmp_path: Path, s3_server: ServerInfo, runtime_models: dict[str, Path]) -> World:
    return make_world(tmp_path, s3_server, runtime_models)


# --- outside pytest (benchmarks, manual runs) --------------------------------------------------


@contextlib.contextmanager
def standalone_world(tmp: Path) -> Iterator[tuple[World, Processes]]:
    """The `world` fixture without pytest: SeaweedFS, registry, bare remote; stops it all."""
    from ggufops.artifacts.s3server import S3Server
    from testing.repos import GIT_TEST_ENV

    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    os.environ.update({**GIT_TEST_ENV, "HOME": str(home),
                       "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")})
    models = toy.build_toy_set(TOY_DIR, names=["baseline", "improved", "degraded"])
    with S3Server(tmp / "s3") as s3:
        procs = Processes(tmp)
        try:
            yield make_world(tmp / "world", s3.info(), models), procs
        finally:
            procs.stop_all()
