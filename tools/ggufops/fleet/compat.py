"""What `validate --check-fleet` needs from the fleet: each host's llama-cpp-python.

The hosts' status objects (`fleet/<env>/<host>.json`, written by each agent, docs/fleet.md)
are read with the fleet status reader and reduced to the runtime facts the registry's
compatibility check (registry/compat.py) compares with each version's `requires:`.
"""

from __future__ import annotations

from pathlib import Path

from ggufops.artifacts import s3config
from ggufops.artifacts.s3config import S3Settings
from ggufops.fleet.status import status_key
from ggufops.fleet.view import read_reports
from ggufops.registry.compat import HostRuntime, HostRuntimes


def host_runtimes(settings: S3Settings, env: str) -> list[HostRuntime]:
    """Every host reporting in `env`, with the llama-cpp-python version it runs."""
    return [HostRuntime(host=seen.report.host, labels=dict(seen.report.labels),
                        llama_cpp_python=seen.report.llama_cpp_python,
                        where=settings.url_of(status_key(settings, env, seen.report.host)))
            for seen in read_reports(settings, env)]


def host_runtimes_reader(root: Path) -> HostRuntimes:
    """A reader bound to the registry's S3 remote (resolved once, on first use)."""
    settings: list[S3Settings] = []

    def read(env: str) -> list[HostRuntime]:
        if not settings:
            settings.append(s3config.resolve(root))
        return host_runtimes(settings[0], env)

    return read
