"""Linux network namespaces for multi-host tests: one namespace per host, joined by veth
pairs to a bridge in the test's own namespace, where S3 and the git remote are reached.

Names are unique per run and carry the creating process id (`gf<pid>x<i>`): a finalizer
deletes what a run created, and `sweep()` deletes what a killed run left behind (its pid
is gone). Where namespaces cannot be made (not root, no `ip`), `unavailable()` says why and
the tests run the same hosts on loopback ports instead, recording that reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from ggufops.procs import free_port
from testing.runtime import ThrottledProxy

_PREFIX = "gf"
_OWNER = re.compile(rf"^{_PREFIX}(\d+)[a-z]")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_SYS_ADMIN"
    probe = f"{_PREFIX}{os.getpid()}probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def sweep() -> list[str]:
    """Delete namespaces and links left by runs whose process is gone; what was removed."""
    namespaces = [line.split()[0] for line in ip("netns", "list", check=False).stdout
                  .splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0] for line in
             ip("-o", "link", "show", check=False).stdout.splitlines() if line.count(":") > 1]
    removed = []
    for kind, name in [("netns", n) for n in namespaces] + [("link", n) for n in links]:
        owner = _OWNER.match(name)
        if owner and not _alive(int(owner.group(1))):
            ip(kind, "del", name, check=False)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Namespace:
    """One host's namespace: `address` on its veth end, `veth` the end in the test's
    namespace (set it down to cut the host off)."""

    name: str
    address: str
    veth: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        ip("link", "set", self.veth, "up")


@dataclass
class Network:
    """A bridge at `gateway` (the test's side) and one Namespace per host."""

    tag: str
    subnet: str  # e.g. 10.123.45
    bridge: str
    namespaces: list[Namespace] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @classmethod
    def create(cls) -> Network:
        tag = f"{_PREFIX}{os.getpid()}"
        subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        net = cls(tag, subnet, f"{tag}b{random.randint(0, 99)}")
        try:
            ip("link", "add", net.bridge, "type", "bridge")
            ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
        except BaseException:
            net.destroy()
            raise
        return net

    def add_host(self) -> Namespace:
        i = len(self.namespaces)
        name = f"{self.tag}x{i}{random.randint(0, 9999)}"[:15]
        ns = Namespace(name, f"{self.subnet}.{i + 2}", f"{self.tag}v{i}"[:15])
        self.namespaces.append(ns)  # before creating: destroy() removes half-made ones too
        inner = f"{self.tag}i{i}"[:15]
        ip("netns", "add", name)
        ip("link", "add", ns.veth, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        ip("link", "set", ns.veth, "master", self.bridge)
        ip("link", "set", ns.veth, "up")
        inside = ["netns", "exec", name, "ip"]
        ip(*inside, "addr", "add", f"{ns.address}/24", "dev", inner)
        ip(*inside, "link", "set", inner, "up")
        ip(*inside, "link", "set", "lo", "up")
        return ns

    def destroy(self) -> None:
        """Delete every namespace (its veth pair goes with it) and the bridge."""
        for ns in self.namespaces:
            ip("netns", "del", ns.name, check=False)
            ip("link", "del", ns.veth, check=False)
        ip("link", "del", self.bridge, check=False)


class BoundProxy(ThrottledProxy):
    """ThrottledProxy listening on `host` (e.g. the bridge's address) instead of loopback."""

    def __init__(self, host: str, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.host = host
        self.port = free_port(host)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> None:
        listener = socket.create_server((self.host, self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A Network for the block; destroyed afterwards, whatever happens."""
    sweep()
    net = Network.create()
    try:
        yield net
    finally:
        net.destroy()
