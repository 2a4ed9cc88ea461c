"""Hot standby: the replaced primary stays loaded when it fits, and a rollback to it is a
pointer swap (no hash, no load, no failed request), through real serve + agent processes,
a bare git remote and SeaweedFS; once with toys, once with the real SmolLM2."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from ggufops.artifacts.ggufparse import GgufFile
from ggufops.artifacts.store import ArtifactStore, file_sha256
from ggufops.serve import app as server
from ggufops.serve import standby
from testing.runtime import (
    MODEL,
    TOKEN,
    Proc,
    Processes,
    World,
    get,
    http,
    metrics,
    serving,
    serving_version,
    wait_for,
)

LOADS_OK = f'ggufops_model_loads_total{{model="{MODEL}",outcome="success"}}'
PROMOTIONS = f'ggufops_standby_promotions_total{{model="{MODEL}"}}'


def test_kv_cache_estimate_follows_the_header(smollm2: Path) -> None:
    # SmolLM2-135M: 30 layers, 9 heads of 64, 3 KV heads -> 2*30*64*3*2 bytes per token
    assert standby.kv_cache_bytes(smollm2, 2048) == 2 * 30 * 2048 * 64 * 3 * 2
    with GgufFile(smollm2) as reader:
        assert reader.value("llama.attention.head_count_kv") == 3


def test_kv_cache_of_a_file_without_the_keys_is_zero(tmp_path: Path) -> None:
    junk = tmp_path / "x.gguf"
    junk.write_bytes(b"not a gguf")
    assert standby.kv_cache_bytes(junk, 4096) == 0


@pytest.mark.parametrize(("mode", "available", "keep"), [
    ("auto", 2000, True), ("auto", 1999, False), ("off", 10**12, False)])
def test_fit_check_needs_twice_the_footprint(mode: str, available: int, keep: bool) -> None:
    check = standby.fit_check(mode, 600, 400, available=available)
    assert (check.needed_bytes, check.keep) == (1000, keep)
    assert ("off" in check.reason) == (mode == "off")


def test_available_memory_is_read_from_the_host() -> None:
    assert standby.available_bytes() > 0


# --- real processes ---------------------------------------------------------------------------


def _deploy_twice(world: World, processes: Processes, old: str, new: str,
                  extra: list[str] | None = None) -> tuple[Proc, Proc, str]:
    world.deploy(old)
    server = processes.serve(world.store, world.token_file, extra=extra)
    agent = processes.agent(world, server.url)
    wait_for(lambda: serving_version(server.url) == old, what=f"{old} served")
    deploy = world.deploy(new)
    wait_for(lambda: serving_version(server.url) == new
             and get(f"{agent.url}/status")["applied_commit"] == deploy, what=f"{new} applied")
    return server, agent, deploy


def _admin(server: Proc) -> dict[str, Any]:
    status, state = http("GET", f"{server.url}/admin/models", token=TOKEN)
    assert status == 200, state
    return dict(state)


def _rolled_back(server: Proc, agent: Proc, revert: str, version: str) -> bool:
    return serving_version(server.url) == version \
        and get(f"{agent.url}/status")["applied_commit"] == revert


@pytest.mark.slow
def test_rollback_to_the_standby_is_a_pointer_swap(world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent, deploy = _deploy_twice(world, processes, "2.0.0", "2.1.0")
    entry = serving(server.url)[MODEL]
    assert entry["standby"]["version"] == "2.0.0"
    assert entry["standby"]["sha256"] == world.sha256("2.0.0")
    first_load = _admin(server)["standbys"][0]
    assert first_load["version"] == "2.0.0"
    assert _admin(server)["standby_checks"][MODEL]["keep"] is True
    assert metrics(server.url)[LOADS_OK] == 2
    revert = world.revert(deploy)
    wait_for(lambda: _rolled_back(server, agent, revert, "2.0.0"), what="rollback")
    after = metrics(server.url)
    assert after[LOADS_OK] == 2 and after[PROMOTIONS] == 1  # no load: the same model object
    state = _admin(server)
    assert state["models"][0]["loaded_at"] == first_load["loaded_at"]
    assert [m["version"] for m in state["standbys"]] == ["2.1.0"]  # 2.1.0 waits in its place
    assert serving(server.url)[MODEL]["standby"]["version"] == "2.1.0"


@pytest.mark.slow
def test_without_standby_a_rollback_loads_again(world: World, processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    world.publish("2.1.0", "improved")
    server, agent, deploy = _deploy_twice(world, processes, "2.0.0", "2.1.0",
                                          extra=["--standby", "off"])
    assert "standby" not in serving(server.url)[MODEL]
    assert _admin(server)["standby_checks"][MODEL]["keep"] is False
    revert = world.revert(deploy)
    wait_for(lambda: _rolled_back(server, agent, revert, "2.0.0"), what="rollback")
    after = metrics(server.url)
    assert after[LOADS_OK] == 3 and after.get(PROMOTIONS, 0) == 0


@pytest.mark.slow
def test_smollm2_rollback_under_traffic_serves_from_standby(
        world: World, processes: Processes, smollm2: Path, smollm2_q4_0: Path) -> None:
    world.models.update(smollm2=smollm2, smollm2_q4_0=smollm2_q4_0)
    world.publish("2.0.0", "smollm2")
    world.publish("2.1.0", "smollm2_q4_0")
    server, agent, deploy = _deploy_twice(world, processes, "2.0.0", "2.1.0",
                                          extra=["--ctx", "512"])
    assert serving(server.url)[MODEL]["standby"]["version"] == "2.0.0"
    stop, statuses = threading.Event(), []

    def traffic() -> None:
        while not stop.is_set():
            body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 2}
            statuses.append(http("POST", f"{server.url}/v1/completions", body)[0])

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(statuses) >= 2, what="traffic")
        revert = world.revert(deploy)
        wait_for(lambda: _rolled_back(server, agent, revert, "2.0.0"), what="rollback")
        served = len(statuses)
        wait_for(lambda: len(statuses) >= served + 2, what="traffic after the rollback")
    finally:
        stop.set()
        sender.join()
    assert statuses and set(statuses) == {200}
    after = metrics(server.url)
    assert after[LOADS_OK] == 2 and after[PROMOTIONS] == 1


# --- the server in a thread -------------------------------------------------------------------


def test_a_primary_whose_file_left_the_store_is_not_kept(
        tmp_path: Path, runtime_models: dict[str, Path]) -> None:
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    app = server.App(server.ServeConfig(store=store.root, port=0, admin_token=TOKEN,
                                        n_threads=1))
    try:
        for version, toy in (("2.0.0", "baseline"), ("2.1.0", "improved")):
            digest = file_sha256(runtime_models[toy])
            shutil.copyfile(runtime_models[toy], store.path_for(digest))
            app.admin_load({"name": MODEL, "version": version, "sha256": digest})
            if version == "2.0.0":
                store.path_for(digest).unlink()  # e.g. removed by hand while it serves
        assert [m.request.version for m in app.table.active()] == ["2.1.0"]
        assert app.table.standbys() == []
        assert app.admin_state()["standby_checks"][MODEL]["reason"] == \
            "its file is no longer in the store"
    finally:
        app.close()


def test_replacing_the_canary_keeps_the_standby(tmp_path: Path,
                                                runtime_models: dict[str, Path]) -> None:
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    app = server.App(server.ServeConfig(store=store.root, port=0, admin_token=TOKEN,
                                        n_threads=1))
    try:
        for version, toy, role in (("2.0.0", "baseline", {}), ("2.1.0", "improved", {}),
                                   ("2.2.0", "degraded", {"role": "canary", "weight": 10}),
                                   ("2.3.0", "baseline", {"role": "canary", "weight": 20})):
            digest = file_sha256(runtime_models[toy])
            shutil.copyfile(runtime_models[toy], store.path_for(digest))
            app.admin_load({"name": MODEL, "version": version, "sha256": digest, **role})
        assert [m.request.version for m in app.table.standbys()] == ["2.0.0"]
        assert app.table.canaries()[MODEL][0].request.version == "2.3.0"
        assert app.table.draining() == []  # the replaced canary 2.2.0 was freed
    finally:
        app.close()
