"""1,000 simulated agents: load on the git host and how fast the fleet sees a change.

Three ways for agents to notice a new commit, each against local servers (asyncio, one
process for the agents; the git host and the webhook receiver in their own processes):

  git-poll   every agent GETs /info/refs?service=git-upload-pack (what `git ls-remote`
             sends over smart HTTP) every 1, 5 or 30 s (jitter +-10%, random phase); the
             server answers the real advertisement of a real repository (`git upload-pack
             --advertise-refs`), and after the change the new one
  s3-pointer every agent GETs fleet/<env>/HEAD from the real SeaweedFS with
             If-None-Match (presigned URL; 304 while unchanged), every 5 s
  webhook    the git host POSTs one webhook per agent (64 at a time) at the change; agents
             also poll git every 300 s as a safety net

After seeing the change, each agent fetches (one more /info/refs and one POST
/git-upload-pack to the git host). Convergence = time from the change until the agent's
fetch is answered (download and load of the model come on top, the same in every mode).
Printed per mode: requests per second on the git host in steady state (before the change),
the same over the whole run, S3 requests per second, and convergence p50/p95/max.

    .venv/bin/python bench/bench_fleet_sim.py [--agents 1000] [--modes git-poll,s3-pointer,webhook]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ggufops.artifacts.dvc import _client
from ggufops.artifacts.s3server import S3Server
from ggufops.gitops.headpointer import render
from ggufops.procs import free_port

JITTER = 0.1
FETCH_CONCURRENCY = 64  # webhook sender's parallel deliveries


# --- HTTP over asyncio streams (Connection: close, like a fresh `git ls-remote`) ---------------


async def request(host: str, port: int, method: str, path: str,
                  headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, payload


# --- the git host (its own process) --------------------------------------------------------------


def advertisement(repo: Path) -> bytes:
    """What GitHub answers to /info/refs?service=git-upload-pack (protocol v0)."""
    refs = subprocess.run(["git", "upload-pack", "--stateless-rpc", "--advertise-refs",
                           str(repo)], capture_output=True, check=True).stdout
    service = b"# service=git-upload-pack\n"
    return f"{len(service) + 4:04x}".encode() + service + b"0000" + refs


def git_host(port: multiprocessing.Value, old: bytes, new: bytes,  # type: ignore[valid-type]
             hook_port: int) -> None:
    asyncio.run(_git_host(port, old, new, hook_port))


async def _git_host(port_out: multiprocessing.Value, old: bytes, new: bytes,  # type: ignore[valid-type]
                    hook_port: int) -> None:
    state: dict[str, Any] = {"refs": old, "count": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1].decode() if line else ""
        body = b""
        if path.startswith("/stats"):
            body = str(state["count"]).encode()
        elif path.startswith("/flip"):
            state["refs"] = new
            agents = int(path.split("=")[1])
            if agents:
                task = asyncio.get_running_loop().create_task(_fan_out(hook_port, agents))
                state["fan_out"] = task  # a strong reference: asyncio keeps only weak ones
        else:
            state["count"] += 1
            body = state["refs"] if "info/refs" in path else b"0008NAK\n"
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    port_out.value = server.sockets[0].getsockname()[1]
    async with server:
        await server.serve_forever()


async def _fan_out(hook_port: int, agents: int) -> None:
    """The git host's webhook deliveries: one POST per agent, FETCH_CONCURRENCY at a time."""
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            with contextlib.suppress(OSError):
                await request("127.0.0.1", hook_port, "POST", f"/sync/{i}", body=b"{}")

    await asyncio.gather(*(one(i) for i in range(agents)))


# --- the fleet ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    git_port: int
    new_sha: bytes
    agents: int
    changed_at: float = 0.0
    converged: dict[int, float] = field(default_factory=dict)
    s3_requests: int = 0
    wake: dict[int, asyncio.Event] = field(default_factory=dict)
    running: set[asyncio.Task[None]] = field(default_factory=set)  # asyncio keeps weak refs

    def start_fetch(self, i: int) -> None:
        task = asyncio.get_running_loop().create_task(self.fetch(i))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def fetch(self, i: int) -> None:
        """The agent saw the change: `git fetch` = /info/refs + POST /git-upload-pack."""
        if i in self.converged:
            return
        await request("127.0.0.1", self.git_port, "GET",
                      "/r.git/info/refs?service=git-upload-pack")
        await request("127.0.0.1", self.git_port, "POST", "/r.git/git-upload-pack", body=b"0000")
        self.converged.setdefault(i, time.monotonic() - self.changed_at)

    async def sleep(self, i: int, interval: float) -> None:
        delay = interval * random.uniform(1 - JITTER, 1 + JITTER)
        event = self.wake.setdefault(i, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), delay)
        event.clear()

    async def git_poller(self, i: int, interval: float, stop: asyncio.Event) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while not stop.is_set() and i not in self.converged:
            _, body = await request("127.0.0.1", self.git_port, "GET",
                                    "/r.git/info/refs?service=git-upload-pack")
            if self.changed_at and self.new_sha in body:
                await self.fetch(i)
                return
            await self.sleep(i, interval)


# --- scenarios ------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    offered: float  # git requests/s the agents would send if every request were answered at once
    steady_rps: float
    total_rps: float
    s3_rps: float
    p50: float
    p95: float
    worst: float
    converged: int


async def _stats(port: int) -> int:
    return int((await request("127.0.0.1", port, "GET", "/stats"))[1])


async def run_scenario(mode: str, interval: float, agents: int, git_port: int, new_sha: bytes,
                       hook_port: int | None, pointer: PointerSetup | None) -> Result:
    fleet = Fleet(git_port, new_sha, agents)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_agent_task(fleet, mode, i, interval, stop, pointer))
             for i in range(agents)]
    hook = None
    if mode == "webhook":
        hook = await asyncio.start_server(_hook_handler(fleet), "127.0.0.1", hook_port,
                                          backlog=4096)
    start, count0 = time.monotonic(), await _stats(git_port)
    await asyncio.sleep(interval * 1.5 if mode != "webhook" else 3.0)  # steady state
    steady = (await _stats(git_port) - count0) / (time.monotonic() - start)
    s3_steady = fleet.s3_requests / (time.monotonic() - start)
    fleet.changed_at = time.monotonic()
    if pointer is not None:
        pointer.publish(new_sha.decode())
    await request("127.0.0.1", git_port, "GET", f"/flip?agents={agents if hook else 0}")
    deadline = fleet.changed_at + (interval * 2 if mode != "webhook" else 0) + 60
    while len(fleet.converged) < agents and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    total = (await _stats(git_port) - count0) / (time.monotonic() - start)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if hook is not None:
        hook.close()
    times = sorted(fleet.converged.values())
    p95 = times[max(0, int(len(times) * 0.95) - 1)] if times else float("nan")
    offered = agents / interval if mode == "git-poll" else agents / 300 if mode == "webhook" else 0
    return Result(f"{mode} {interval:g}s", offered, steady, total, s3_steady,
                  statistics.median(times) if times else float("nan"), p95,
                  times[-1] if times else float("nan"), len(times))


async def _agent_task(fleet: Fleet, mode: str, i: int, interval: float, stop: asyncio.Event,
                      pointer: PointerSetup | None) -> None:
    if mode == "git-poll" or mode == "webhook":
        await fleet.git_poller(i, interval, stop)
    else:
        assert pointer is not None
        await _pointer_agent(fleet, i, pointer, interval, stop)


async def _pointer_agent(fleet: Fleet, i: int, pointer: PointerSetup, interval: float,
                         stop: asyncio.Event) -> None:
    parts = urlsplit(pointer.url)
    path = f"{parts.path}?{parts.query}"
    await asyncio.sleep(random.uniform(0, interval))
    etag: str | None = None
    while not stop.is_set() and i not in fleet.converged:
        headers = {"If-None-Match": etag} if etag else {}
        status, head, body = await _get_with_headers(parts.hostname or "", parts.port or 80,
                                                     path, headers)
        fleet.s3_requests += 1
        if status == 200:
            etag = head.get("etag")
            if fleet.changed_at and fleet.new_sha in body:
                await fleet.fetch(i)
                return
        await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))


async def _get_with_headers(host: str, port: int, path: str,
                            headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *rest = head.decode(errors="replace").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
    return int(first.split()[1]), fields, body


def _hook_handler(fleet: Fleet):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.read(2)
        writer.write(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()
        agent = int(line.split()[1].rsplit(b"/", 1)[1])
        fleet.start_fetch(agent)

    return handle


@dataclass
class PointerSetup:
    url: str  # presigned GET of the pointer
    client: object
    bucket: str
    key: str

    def publish(self, commit: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key,  # type: ignore[attr-defined]
                               Body=render(commit, "main", "production"))


# --- main ---------------------------------------------------------------------------------------


def make_repo(tmp: Path) -> tuple[bytes, bytes, bytes]:
    """A real repository (main and 40 deploy branches, as a registry grows): the new commit's
    sha and the advertisements before and after it."""
    repo = tmp / "registry.git"
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x.invalid", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x.invalid", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True,
                              env=env).stdout.strip()

    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    git("commit", "-q", "--allow-empty", "-m", "one")
    for n in range(40):
        git("branch", f"deploy/production/m-{n}")
    before = advertisement(repo)
    git("commit", "-q", "--allow-empty", "-m", "two")
    return git("rev-parse", "HEAD"), before, advertisement(repo)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--modes", default="git-poll,s3-pointer,webhook")
    parser.add_argument("--intervals", default="1,5,30", help="git-poll intervals (s)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        new_sha, old_refs, new_refs = make_repo(Path(tmp))
        hook_port = free_port()

        def run(mode: str, interval: float, pointer: PointerSetup | None = None) -> None:
            results.append(_run(mode, interval, args.agents, new_sha, old_refs, new_refs,
                                hook_port, pointer))

        if "git-poll" in modes:
            for interval in (float(x) for x in args.intervals.split(",")):
                run("git-poll", interval)
        if "s3-pointer" in modes:
            with _pointer(Path(tmp)) as pointer:
                run("s3-pointer", 5.0, pointer)
        if "webhook" in modes:
            run("webhook", 300.0)
    _print(results, args.agents)
    return 0


def _run(mode: str, interval: float, agents: int, new_sha: bytes, old_refs: bytes,
         new_refs: bytes, hook_port: int,
         pointer: PointerSetup | None) -> Result:
    """One scenario on a fresh git host (so each starts from the old refs)."""
    fresh = multiprocessing.Value("i", 0)
    host = multiprocessing.Process(target=git_host, args=(fresh, old_refs, new_refs, hook_port),
                                   daemon=True)
    host.start()
    while fresh.value == 0:
        time.sleep(0.01)
    try:
        print(f"running {mode} at {interval:g} s with {agents} agents ...", file=sys.stderr)
        return asyncio.run(run_scenario(mode, interval, agents, fresh.value, new_sha,
                                        hook_port, pointer))
    finally:
        host.terminate()
        host.join()


@contextlib.contextmanager
def _pointer(tmp: Path):  # type: ignore[no-untyped-def]
    with S3Server(tmp / "s3") as server:
        info = server.info()
        client = _client(info.endpoint, info.access_key_id, info.secret_access_key)
        key = "fleet/production/HEAD"
        client.put_object(Bucket=info.bucket, Key=key, Body=render("0" * 40, "main", "production"))
        url = client.generate_presigned_url("get_object", Params={"Bucket": info.bucket,
                                                                  "Key": key}, ExpiresIn=3600)
        yield PointerSetup(url, client, info.bucket, key)


def _print(results: list[Result], agents: int) -> None:
    print(f"{agents} simulated agents; convergence = change -> the agent's fetch answered; "
          "offered = git req/s the polling schedule asks for, steady = what the host served")
    print(f"{'mode':<16}{'offered':>9}{'git req/s steady':>18}{'git req/s run':>15}{'S3 req/s':>10}"
          f"{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'converged':>11}")
    for r in results:
        print(f"{r.mode:<16}{r.offered:>9.1f}{r.steady_rps:>18.1f}{r.total_rps:>15.1f}{r.s3_rps:>10.1f}"
              f"{r.p50:>8.2f}{r.p95:>8.2f}{r.worst:>8.2f}{r.converged:>11}")


if __name__ == "__main__":
    raise SystemExit(main())
