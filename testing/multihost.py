"""A fleet of real hosts for tests and benchmarks: each `ggufops serve` + `ggufops agent` in
its own network namespace (testing/netns.py), reaching S3 and the git remote (over HTTP)
through the bridge, or, where namespaces are unavailable, on loopback ports.

Each host reaches S3 and git through proxies of its own (ThrottledProxy), so a test can
stall one host's downloads or cut only its git; `Link.cut()` takes the host's veth link
down (namespaces) or closes both of its proxies (loopback).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.fleet import Host, agent_args
from testing.githttp import GitHttpServer
from testing.netns import BoundProxy, Namespace, Network, network, unavailable
from testing.runtime import GGUFOPS, Proc, Processes, ThrottledProxy, World, get, serve_args


class NamespacesUnavailable(UserWarning):
    """The multi-host test runs on loopback ports: network namespaces cannot be made here."""


@dataclass
class Link:
    s3: ThrottledProxy
    git: ThrottledProxy
    ns: Namespace | None

    def cut(self) -> None:
        if self.ns is not None:
            self.ns.cut()
        else:
            self.s3.down()
            self.git.down()

    def restore(self) -> None:
        if self.ns is not None:
            self.ns.restore()
        else:
            self.s3.up()
            self.git.up()


@dataclass
class NetHost(Host):
    link: Link | None = None
    git_url: str = ""

    def status(self) -> dict[str, Any]:
        assert self.agent is not None
        data: dict[str, Any] = get(f"{self.agent.url}/status")
        return data


@dataclass
class Fleet:
    world: World
    processes: Processes
    git_server: GitHttpServer
    net: Network | None
    reason: str | None  # why loopback is used; None with namespaces
    hosts: list[NetHost] = field(default_factory=list)
    proxies: list[ThrottledProxy] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "netns" if self.net is not None else "loopback"

    @property
    def bind(self) -> str:
        return self.net.gateway if self.net is not None else "127.0.0.1"

    def _proxy(self, port: int) -> ThrottledProxy:
        proxy: ThrottledProxy = BoundProxy(self.bind, "127.0.0.1", port) \
            if self.net is not None else ThrottledProxy("127.0.0.1", port)
        proxy.up()
        self.proxies.append(proxy)
        return proxy

    def add_host(self, name: str, labels: dict[str, str] | None = None,
                 interval: float = 0.2, extra: list[str] | None = None) -> NetHost:
        ns = self.net.add_host() if self.net is not None else None
        s3_port = int(self.world.s3.endpoint.rsplit(":", 1)[1])
        link = Link(self._proxy(s3_port), self._proxy(self.git_server.port), ns)
        root = self.world.repo.parent / "hosts" / name
        root.mkdir(parents=True, exist_ok=True)
        serve = self._start(["--host", ns.address] if ns else [], serve_args(
            root / "store", self.world.token_file), ns, f"serve-{name}", link)
        user, token = self.git_server.user, self.git_server.token
        git_url = f"http://{user}:{token}@{link.git.endpoint.removeprefix('http://')}/" \
            f"{self.world.remote.name}"
        host = NetHost(name, root, labels or {}, serve, extra=list(extra or []), link=link,
                       git_url=git_url)
        self.start_agent(host, interval)
        self.hosts.append(host)
        return host

    def start_agent(self, host: NetHost, interval: float = 0.2) -> Proc:
        assert host.link is not None
        ns = host.link.ns
        args = [str(GGUFOPS), "agent", "--repo", host.git_url, "--env", "production",
                "--server", host.serve.url, "--interval", str(interval),
                "--status-host", ns.address if ns else "127.0.0.1", "--status-port", "0",
                "--admin-token-file", str(self.world.token_file),
                "--s3-endpoint", host.link.s3.endpoint, "--backoff-max", "1",
                "--timeout", "60", *agent_args(host)]
        host.agent = self._start([], args, ns, f"agent-{host.name}", host.link)
        return host.agent

    def _start(self, more: list[str], args: list[str], ns: Namespace | None,
               log: str, link: Link) -> Proc:
        prefix = ns.exec_prefix() if ns else []
        env = {**self.world.s3.env(), "AWS_ENDPOINT_URL_S3": link.s3.endpoint,
               "GIT_ALLOW_PROTOCOL": "file:http"}  # git over HTTP, through the link
        proc = Proc(prefix + args + more, self.processes.tmp / f"{log}.log", env=env)
        self.processes.started.append(proc)
        return proc

    def stop(self) -> None:
        self.processes.stop_all()
        for proxy in self.proxies:
            with contextlib.suppress(OSError):
                proxy.down()


@contextlib.contextmanager
def fleet(world: World, processes: Processes) -> Iterator[Fleet]:
    """A Fleet in namespaces when they can be made, else on loopback (with a warning that
    names the reason: never a silent skip). GGUFOPS_TEST_NO_NETNS=1 forces loopback."""
    reason = unavailable()
    if os.environ.get("GGUFOPS_TEST_NO_NETNS"):
        reason = "GGUFOPS_TEST_NO_NETNS is set"
    if reason is not None:
        warnings.warn(NamespacesUnavailable(f"multi-host test on loopback ports: {reason}"),
                      stacklevel=2)
    server = GitHttpServer(world.remote.parent).start()
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        net = stack.enter_context(network()) if reason is None else None
        f = Fleet(world, processes, server, net, reason)
        stack.callback(f.stop)  # processes die before their namespaces
        yield f


def store_temp_files(host: Host) -> list[Path]:
    tmp = host.store / "tmp"
    return [p for p in tmp.iterdir() if p.is_file()] if tmp.is_dir() else []


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
