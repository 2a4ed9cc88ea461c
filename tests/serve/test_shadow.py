"""Shadow traffic: a share of requests mirrored to a shadow version in the background; its
answers never reach a client, the primary never waits, a full queue drops and counts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ggufops.artifacts.store import ArtifactStore
from ggufops.hashing import file_sha256
from ggufops.serve import app as server
from ggufops.serve import protocol, shadow
from ggufops.serve.modeltable import ModelTable
from ggufops.serve.shadow import ShadowMirror, ShadowStats
from testing.runtime import (
    MODEL,
    TOKEN,
    Processes,
    World,
    get,
    http,
    metrics,
    serving,
    wait_for,
)


def test_token_overlap_and_answer_text() -> None:
    assert shadow.token_overlap("a b c", "a b c") == 1.0
    assert shadow.token_overlap("a b c d", "a b") == 0.5
    assert shadow.token_overlap("a a b", "a b b") == pytest.approx(2 / 3)
    assert shadow.token_overlap("", "") == 1.0
    assert shadow.answer_text({"choices": [{"text": "x"}]}) == "x"
    assert shadow.answer_text({"choices": [{"message": {"content": "y"}}]}) == "y"


# --- in process: the bounded queue ---------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, runtime_models: dict[str, Path]) -> Iterator[server.App]:
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    for path in runtime_models.values():
        shutil.copyfile(path, store.path_for(file_sha256(path)))
    application = server.App(server.ServeConfig(store=store.root, admin_token=TOKEN,
                                                n_threads=1))
    try:
        yield application
    finally:
        application.close()


def load(app: server.App, path: Path, version: str, role: str = "primary",
         weight: int = 0) -> None:
    body: dict[str, Any] = {"name": MODEL, "version": version, "sha256": file_sha256(path),
                            "inference": {"temperature": 0.0, "max_tokens": 4,
                                          "prompt_template": "chatml"}}
    if role != "primary":
        body.update(role=role, weight=weight)
    status, _ = app.admin_load(body)
    assert status == 201


def test_a_full_queue_drops_and_counts(app: server.App, runtime_models: dict[str, Path]) -> None:
    load(app, runtime_models["baseline"], "2.0.0")
    load(app, runtime_models["degraded"], "2.1.0", role="shadow", weight=100)
    primary = app.table.get(MODEL)
    mirror = app.table.shadow(MODEL)
    assert primary is not None and mirror is not None
    request = protocol.parse("completions", {"model": MODEL, "prompt": "def "})
    reply = {"choices": [{"text": "x"}]}
    offers = 20
    with mirror.lock:  # the shadow is busy: the worker takes one job at most, then waits
        for _ in range(offers):
            app.generator.shadow.offer(request, {"max_tokens": 2}, primary, reply, 0.01)
        dropped = app.generator.shadow.report(MODEL)["dropped"]
        assert offers - shadow.QUEUE_SIZE - 1 <= dropped <= offers - shadow.QUEUE_SIZE
    assert metrics_text(app, f'ggufops_shadow_dropped_total{{model="{MODEL}"}}') == dropped
    report = wait_for(lambda: _mirrored(app, offers - dropped), what="the queue drained")
    assert report["stats"]["errors"] == 0 and report["shadow"]["version"] == "2.1.0"


def _mirrored(app: server.App, count: int) -> dict[str, Any] | None:
    report = app.generator.shadow.report(MODEL)
    stats = report["stats"]
    return report if stats is not None and stats["mirrored"] == count else None


def metrics_text(app: server.App, series: str) -> float:
    for line in app.render_metrics().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- real processes: agent, git, S3, serve -----------------------------------------------------


def write_env(repo: Path, entry: dict[str, Any]) -> None:
    body = {"environment": "production", "models": {MODEL: entry}}
    (repo / "environments" / "production.yaml").write_text(
        "# production\n" + yaml.safe_dump(body, sort_keys=False))


def applied(agent_url: str, commit: str) -> bool:
    s = get(f"{agent_url}/status")
    return bool(s["phase"] == "healthy" and s["applied_commit"] == commit)


def shadow_report(url: str) -> dict[str, Any]:
    status, body = http("GET", f"{url}/admin/shadow?model={MODEL}", token=TOKEN)
    assert status == 200, body
    return dict(body)


@pytest.mark.slow
def test_the_agent_loads_a_shadow_whose_answers_never_reach_clients(
        world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "degraded")
    write_env(world.repo, {"version": "2.0.0"})
    first = world.push("deploy 2.0.0")
    server_proc = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server_proc.url)
    wait_for(lambda: applied(agent.url, first), what="2.0.0 applied")
    body = {"model": MODEL, "prompt": "def ", "max_tokens": 6, "temperature": 0.0}
    alone = [http("POST", f"{server_proc.url}/v1/completions", body)[1] for _ in range(3)]

    write_env(world.repo, {"version": "2.0.0", "shadow": {"version": "2.1.0", "percent": 100}})
    shadowed = world.push("shadow 2.1.0 at 100%")
    wait_for(lambda: applied(agent.url, shadowed), what="the shadow loaded")
    entry = serving(server_proc.url)[MODEL]
    assert (entry["shadow"]["version"], entry["shadow"]["weight"]) == ("2.1.0", 100)
    answers = [http("POST", f"{server_proc.url}/v1/completions", body) for _ in range(6)]
    assert {status for status, _ in answers} == {200}
    assert {r["model"] for _, r in answers} == {alone[0]["model"]}  # the primary answered
    assert {r["choices"][0]["text"] for _, r in answers} == {alone[0]["choices"][0]["text"]}
    # back to back, each request preempts the shadow run of the one before (the last never)
    report = wait_for(lambda: _report_with(server_proc.url, 6), what="6 mirrored requests")
    stats = report["stats"]
    assert stats["version"] == "2.1.0" and stats["errors"] == 0 and report["dropped"] == 0
    assert stats["mirrored"] >= 1
    assert 0.0 <= stats["token_overlap_mean"] <= 1.0
    assert stats["shadow_latency_p95_s"] > 0 and stats["primary_latency_p95_s"] > 0
    # labels come in canonical (sorted) order: model, outcome, version; only completed
    # shadow answers are counted (preempted ones are not)
    wait_for(lambda: _shadow_outcomes(server_proc.url) == stats["mirrored"],
             what="the completed shadow answers counted")
    shadow_text = http("POST", f"{server_proc.url}/v1/completions",
                       {**body, "model": f"{MODEL}@2.1.0"})
    assert shadow_text[0] == 404  # a client cannot even ask the shadow by name

    write_env(world.repo, {"version": "2.0.0"})
    dropped = world.push("stop shadowing")
    wait_for(lambda: applied(agent.url, dropped), what="the shadow unloaded")
    assert "shadow" not in serving(server_proc.url)[MODEL]


def _report_with(url: str, count: int) -> dict[str, Any] | None:
    report = shadow_report(url)
    stats = report["stats"]
    done = (stats["mirrored"] if stats else 0) + report["preempted"]
    return report if stats is not None and done >= count else None


def _shadow_outcomes(url: str) -> float:
    """ggufops_shadow_requests_total of MODEL's shadow 2.1.0, over every outcome."""
    return sum(v for k, v in metrics(url).items()
               if k.startswith(f'ggufops_shadow_requests_total{{model="{MODEL}",')
               and k.endswith(',version="2.1.0"}'))


def test_a_late_shadow_error_counts_for_its_own_version_only() -> None:
    """An error of a job that ran on 2.1.0, reported after 2.2.0 became the shadow, goes to
    2.1.0's metric; 2.2.0's stats block neither gains it nor is reset by it."""
    counters = server.server_metrics()
    table = ModelTable(lambda _: None)
    mirror = ShadowMirror(table, counters)
    current = SimpleNamespace(request=SimpleNamespace(version="2.2.0"))
    table.shadow = lambda name: current  # type: ignore[method-assign]
    mirror._stats["m"] = ShadowStats("2.2.0", errors=0)
    mirror._error("m", "2.1.0", "boom")
    assert mirror._stats["m"].version == "2.2.0" and mirror._stats["m"].errors == 0
    assert counters.value("ggufops_shadow_requests_total", ("m", "2.1.0", "error")) == 1
    mirror._error("m", "2.2.0", "boom")
    assert mirror._stats["m"].errors == 1
