"""Several inference hosts (each a real `ggufops serve` + `ggufops agent`) on one machine,
and what their agents publish to S3. Every process is stopped by the `processes` fixture."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.runtime import MODEL, Proc, Processes, World, serving_version, wait_for
from testing.s3 import s3_client


@dataclass
class Host:
    """One host: its own store, state directory, server and agent."""

    name: str
    root: Path
    labels: dict[str, str]
    serve: Proc
    agent: Proc | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def version(self, name: str = MODEL) -> str | None:
        return serving_version(self.serve.url, name)


def agent_args(host: Host, heartbeat: float = 1.0) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items()))
    args = ["--store", str(host.store), "--state-dir", str(host.state_dir), "--host-name",
            host.name, "--heartbeat", str(heartbeat)]
    return args + (["--labels", labels] if labels else []) + host.extra


def start_host(world: World, processes: Processes, name: str,
               labels: dict[str, str] | None = None, *, extra: list[str] | None = None,
               interval: float = 0.2) -> Host:
    root = world.repo.parent / "hosts" / name
    root.mkdir(parents=True, exist_ok=True)
    serve = processes.serve(root / "store", world.token_file)
    host = Host(name, root, labels or {}, serve, extra=list(extra or []))
    start_agent(world, processes, host, interval=interval)
    return host


def start_agent(world: World, processes: Processes, host: Host, *,
                interval: float = 0.2) -> Proc:
    host.agent = processes.agent(world, host.serve.url, interval=interval,
                                 extra=agent_args(host))
    return host.agent


def fleet_object(world: World, host: str, env: str = "production") -> dict[str, Any] | None:
    """The status object `host` published, None while there is none."""
    client: Any = s3_client(world.s3)
    try:
        body = client.get_object(Bucket=world.s3.bucket,
                                 Key=f"{world.prefix}/fleet/{env}/{host}.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    data: dict[str, Any] = json.loads(body)
    return data


def wait_published(world: World, host: str, *, commit: str | None = None,
                   phase: str | None = None, timeout: float = 90.0) -> dict[str, Any]:
    """The host's object once it reports `commit` applied (and `phase`)."""
    def probe() -> dict[str, Any] | None:
        data = fleet_object(world, host)
        if data is None or (commit is not None and data.get("applied_commit") != commit):
            return None
        return data if phase is None or data.get("phase") == phase else None

    return wait_for(probe, timeout=timeout, interval=0.1,
                    what=f"{host} to publish {commit and commit[:12]} {phase or ''}")


def wait_serving(hosts: list[Host], version: str, timeout: float = 90.0) -> None:
    for host in hosts:
        wait_for(lambda h=host: h.version() == version, timeout=timeout,  # type: ignore[misc]
                 what=f"{host.name} to serve {version}")
