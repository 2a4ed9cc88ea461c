"""deploy/kubernetes and the Dockerfile: every manifest validated offline against the
Kubernetes schemas (kubernetes-validate), the pod's shape checked against what ggufops
really accepts, and serve's separate admin listener and probes tested on a real process."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from ggufops.agent.webhook import read_secret
from ggufops.errors import ServeError, TrustError
from ggufops.serve.app import read_token
from testing.runtime import (
    TOKEN,
    Proc,
    Processes,
    World,
    http,
    serve_args,
    serving_version,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(kind: str) -> dict[str, Any]:
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _pod() -> dict[str, Any]:
    return dict(_kind("Deployment")["spec"]["template"])


def _containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _pod()["spec"]["containers"]}


def _config() -> dict[str, str]:
    return dict(_kind("ConfigMap")["data"])


def test_the_kustomization_lists_every_file_in_the_folder() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.iterdir() if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)


def test_every_manifest_validates_offline_against_the_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    kinds = set()
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            if doc["kind"] == "Kustomization":
                continue
            kubernetes_validate.validate(doc, version, strict=True)
            kinds.add(doc["kind"])
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "NetworkPolicy"}
    broken = _kind("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, version, strict=True)


def test_serve_and_the_agent_sidecar_share_the_store_and_run_unprivileged() -> None:
    pod = _pod()["spec"]
    containers = _containers()
    assert set(containers) == {"serve", "agent"}
    assert [c["args"] for c in containers.values()] == [["serve"], ["agent"]]
    store = _config()["GGUFOPS_STORE"]
    for container in containers.values():
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["store"] == store
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert resources["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["store"]
    assert {m["mountPath"] for c in containers.values() for m in c["volumeMounts"]} <= {
        store, _config()["GGUFOPS_STATE_DIR"], "/etc/ggufops/secrets", "/tmp"}


def _port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(ports[name])


def test_probes_point_at_readyz_and_healthz_on_declared_ports() -> None:
    serve, agent = _containers()["serve"], _containers()["agent"]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    config = _config()
    assert _port(serve, serve["readinessProbe"]["httpGet"]["port"]) == \
        int(config["GGUFOPS_SERVE_PORT"])
    assert _port(agent, agent["livenessProbe"]["httpGet"]["port"]) == \
        int(config["GGUFOPS_STATUS_PORT"])


def _envvars() -> set[str]:
    from ggufops.cli.runtime import agent, serve

    return {p.envvar for c in (agent, serve) for p in c.params
            if isinstance(p, click.Option) and isinstance(p.envvar, str)}


def test_the_configmap_holds_only_real_settings_and_keeps_admin_inside_the_pod() -> None:
    config = _config()
    unknown = {k for k in config if k.startswith("GGUFOPS_")} - _envvars()
    assert not unknown, f"not an option of serve or agent: {unknown}"
    assert set(config) - {k for k in config if k.startswith("GGUFOPS_")} == {
        "AWS_EC2_METADATA_DISABLED"}
    assert config["GGUFOPS_ADMIN_HOST"] == "127.0.0.1"
    admin = int(config["GGUFOPS_ADMIN_PORT"])
    assert config["GGUFOPS_SERVER"] == f"http://127.0.0.1:{admin}"  # the agent uses it
    policy = _kind("NetworkPolicy")["spec"]
    allowed = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert allowed == {int(config["GGUFOPS_SERVE_PORT"]), int(config["GGUFOPS_STATUS_PORT"])}
    assert admin not in allowed
    containers = _containers()
    declared = {p["containerPort"] for c in containers.values() for p in c["ports"]}
    assert admin not in declared
    service = _kind("Service")["spec"]
    names = {p["name"] for c in containers.values() for p in c["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= names
    labels = _pod()["metadata"]["labels"]
    for selector in (service["selector"], policy["podSelector"]["matchLabels"],
                     _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_the_secret_holds_placeholders_that_ggufops_refuses(tmp_path: Path) -> None:
    secret = _kind("Secret")["stringData"]
    referenced = {e["valueFrom"]["secretKeyRef"]["key"] for c in _containers().values()
                  for e in c.get("env", [])}
    volume = next(v for v in _pod()["spec"]["volumes"] if v["name"] == "secrets")
    referenced |= {i["key"] for i in volume["secret"]["items"]}
    assert referenced == set(secret)
    token = tmp_path / "admin-token"
    token.write_text(secret["admin-token"])
    with pytest.raises(ServeError, match="shorter than 16"):
        read_token(token)
    hook = tmp_path / "webhook-secret"
    hook.write_text(secret["webhook-secret"])
    with pytest.raises(TrustError, match="shorter than 16"):
        read_secret(hook)
    files = {i["path"]: f"/etc/ggufops/secrets/{i['path']}" for i in volume["secret"]["items"]}
    assert _config()["GGUFOPS_ADMIN_TOKEN_FILE"] == files["admin-token"]
    assert _config()["GGUFOPS_WEBHOOK_SECRET_FILE"] == files["webhook-secret"]


def _stages(dockerfile: str) -> list[tuple[str, list[str]]]:
    """(FROM line, the stage's instructions) per stage; continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: list[tuple[str, list[str]]] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def test_the_dockerfile_builds_llama_cpp_in_a_builder_stage_and_runs_unprivileged() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert len(stages) >= 2
    builder = next(s for s in stages if s[0].lower().endswith(" as builder"))
    final = stages[-1]
    assert final is not builder
    assert any("llama-cpp-python" in i and "pip install" in i for i in builder[1])
    assert any(i.startswith(("RUN", "ENV")) and "cmake" in i.lower() for i in builder[1])
    assert not any("llama-cpp-python" in i for i in final[1])  # only built once, in builder
    assert any(i.startswith("COPY --from=builder") for i in final[1])
    users = [i.split()[1] for i in final[1] if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = int(users[-1].split(":")[0])
    assert uid == _pod()["spec"]["securityContext"]["runAsUser"]
    assert final[1][-1].startswith("CMD") or final[1][-2].startswith("ENTRYPOINT")


# --- serve: the admin API on its own loopback listener, the probes ----------------------------


def test_serve_keeps_the_admin_api_off_the_public_port_and_probes_tell_readiness(
        world: World, processes: Processes) -> None:
    world.publish("1.0.0", "baseline")
    world.deploy("1.0.0")
    args = [*serve_args(world.store, world.token_file), "--admin-port", "0"]
    serve = Proc(args, world.store.parent / "serve-admin.log")
    processes.started.append(serve)
    found = re.search(r"admin API on (http://\S+)/admin\)", serve.banner)
    assert found, serve.banner
    admin = found.group(1)
    assert admin != serve.url and admin.startswith("http://127.0.0.1:")
    assert http("GET", f"{serve.url}/readyz")[0] == 503  # no model yet: not ready
    assert http("GET", f"{serve.url}/healthz")[0] == 200
    status, body = http("GET", f"{serve.url}/admin/models", token=TOKEN)
    assert status == 404 and "--admin-port" in body["error"]["message"]
    for method, path in (("GET", "/admin/shadow?model=m"), ("GET", "/admin/requests?model=m"),
                         ("POST", "/admin/groups"), ("DELETE", "/admin/models/m")):
        status, body = http(method, f"{serve.url}{path}", {} if method != "GET" else None,
                            token=TOKEN)
        assert status == 404 and "--admin-port" in body["error"]["message"], (path, body)
    assert http("GET", f"{admin}/admin/models", token=TOKEN)[0] == 200
    assert http("GET", f"{admin}/admin/models")[0] == 401  # the token is still required
    processes.agent(world, admin)  # the sidecar talks to the admin listener only
    wait_for(lambda: serving_version(serve.url) == "1.0.0", what="the model through admin")
    assert http("GET", f"{serve.url}/readyz")[0] == 200
