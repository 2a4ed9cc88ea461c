"""`validate --check-fleet`: versions an environment runs against the llama-cpp-python each of
its hosts reports in fleet/<env>/<host>.json, published by the agent's real publisher to a real
SeaweedFS."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from ggufops.artifacts import s3config
from ggufops.cli import main
from ggufops.fleet import status as fleetstatus
from testing.repos import git_commit, line_of, set_environment, write_version

INSTALLED = metadata.version("llama_cpp_python")


def publish(root: Path, host: str, labels: dict[str, str], env: str = "production") -> None:
    """What a host's agent puts in S3, through the agent's own publisher."""
    config = fleetstatus.PublisherConfig(host=host, environment=env, labels=labels)
    snapshot = {"environment": env, "phase": "healthy", "models": {}}
    publisher = fleetstatus.Publisher(config, lambda: snapshot,
                                      lambda: s3config.resolve(root))
    assert publisher.publish_if_due(force=True), publisher.state


def needs(path: Path, minimum: str) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["requires"] = {"llama_cpp_python": minimum}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def check_fleet(root: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["--repo", str(root), "validate", "--check-fleet",
                                       "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_a_version_needing_a_newer_runtime_than_a_host_reports_is_refused(
        s3_registry: Path) -> None:
    root = s3_registry
    needs(write_version(root, "m", "1.0.0"), ">=0.1.79")
    future = write_version(root, "m", "2.0.0", parent="1.0.0")
    needs(future, ">=99.0.0")  # a file only a runtime from the future can load
    env = set_environment(root, "production", {"m": "1.0.0"})
    doc = yaml.safe_load(env.read_text())
    doc["models"]["m"]["segments"] = [{"selector": {"zone": "eu"}, "version": "2.0.0"}]
    env.write_text(yaml.safe_dump(doc, sort_keys=False))
    git_commit(root, "m 1.0.0 everywhere, 2.0.0 on eu")
    publish(root, "h-us", {"zone": "us"})
    assert check_fleet(root) == (0, {"valid": True, "problems": [], "warnings": []})

    publish(root, "h-eu", {"zone": "eu"})
    code, answer = check_fleet(root)
    assert code != 0
    (problem,) = answer["problems"]
    line = line_of(env, "2.0.0")
    assert (problem["file"], problem["line"], problem["code"]) == (
        "environments/production.yaml", line, "runtime")
    message = problem["message"]
    assert message.startswith("models.m.segments.0.version: production runs m@2.0.0, which "
                              "needs llama-cpp-python >=99.0.0 (requires.llama_cpp_python at "
                              "registry/m/2.0.0.yaml:")
    assert f"but host h-eu reports {INSTALLED} (s3://" in message
    assert "/fleet/production/h-eu.json)" in message

    plain = CliRunner().invoke(main, ["--repo", str(root), "validate"])
    assert plain.exit_code == 0, plain.output  # without --check-fleet hosts are not read
