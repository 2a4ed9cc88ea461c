"""Config-only changes: inference overrides change without a model load, and so does their
rollback; validate names the file and line of a bad override; history says `config`."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ggufops.artifacts.store import ArtifactStore
from ggufops.errors import UsageError
from ggufops.gitops import configchange
from ggufops.hashing import file_sha256
from ggufops.registry import overrides
from testing.repos import git, git_commit, write_version
from testing.runtime import (
    GGUFOPS,
    MODEL,
    TOKEN,
    Proc,
    Processes,
    World,
    free_port,
    get,
    http,
    metrics,
    serve_args,
    serving,
    wait_for,
)

ENV_FILE = Path("environments") / "production.yaml"


def write_env(repo: Path, entry: dict[str, Any], model: str = MODEL) -> None:
    body = {"environment": "production", "models": {model: entry}}
    (repo / ENV_FILE).write_text("# production\n" + yaml.safe_dump(body, sort_keys=False))


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(GGUFOPS), *args], cwd=repo, capture_output=True, text=True,
                          check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


# --- schema and validate ---------------------------------------------------------------------


def test_bad_overrides_are_refused_with_file_and_line(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")  # context length 256, no GGUF chat template
    write_env(registry_repo, {"version": "1.0.0", "overrides": {
        "max_tokens": 1000, "prompt_template": "gguf", "system_prompt": "Be brief."}}, "m")
    proc = run(registry_repo, "validate", check=False)
    assert proc.returncode == 1
    assert "environments/production.yaml:7:" in proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "overrides.max_tokens 1000 is more than m@1.0.0's context length 256" in out
    assert "overrides.prompt_template gguf names the file's own chat template" in out
    write_env(registry_repo, {"version": "1.0.0", "overrides": {"temprature": 0.1}}, "m")
    proc = run(registry_repo, "validate", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "environments/production.yaml:7:7:" in out and "temprature: unknown field" in out
    assert "system_prompt" in out  # the allowed keys are listed


def test_changes_are_described_and_settings_typed() -> None:
    assert configchange.describe({"max_tokens": 16, "top_p": 0.9},
                                 {"max_tokens": 8, "system_prompt": "x" * 40}) == (
        'max_tokens 16 -> 8, system_prompt set to "' + "x" * 21 + '…", top_p unset')
    assert configchange.parse_setting("max_tokens=8") == ("max_tokens", 8)
    assert configchange.parse_setting("temperature=0.25") == ("temperature", 0.25)
    assert configchange.parse_setting("system_prompt=a=b") == ("system_prompt", "a=b")
    with pytest.raises(UsageError, match="max_tokens must be an integer"):
        configchange.parse_setting("max_tokens=many")
    with pytest.raises(UsageError, match="KEY one of temperature"):
        configchange.parse_setting("seed=1")
    assert overrides.config_digest({"a": 1, "b": 2}) == overrides.config_digest({"b": 2, "a": 1})


# --- commits: `ggufops config`, history, rollback ---------------------------------------------


def test_config_command_history_and_rollback(registry_with_remote: tuple[Path, Path]) -> None:
    repo, _ = registry_with_remote
    write_version(repo, "m", "1.0.0")
    write_env(repo, {"version": "1.0.0", "overrides": {"temperature": 0.2}}, "m")
    git_commit(repo, "deploy m 1.0.0")
    git(repo, "push", "-q", "origin", "main")
    proc = run(repo, "config", "--env", "production", "--model", "m", "--set", "max_tokens=64",
               "--set", "system_prompt=Answer in French.", "--direct", "--push", "--json")
    plan = json.loads(proc.stdout)
    assert plan["action"] == "config" and plan["result"]["pushed"] is True
    assert plan["config_change"] == 'max_tokens set to 64, system_prompt set to "Answer in French."'
    entry = yaml.safe_load((repo / ENV_FILE).read_text())["models"]["m"]
    assert entry == {"version": "1.0.0", "overrides": {
        "temperature": 0.2, "max_tokens": 64, "system_prompt": "Answer in French."}}
    bad = run(repo, "config", "--env", "production", "--model", "m", "--set",
              "max_tokens=999", "--direct", check=False)
    assert bad.returncode == 2 and "context length 256" in bad.stderr
    rolled = json.loads(run(repo, "rollback", "--env", "production", "--model", "m", "--push",
                            "--json").stdout)
    assert rolled["strategy"] == "revert" and rolled["artifact_check"] == "not needed"
    assert rolled["config_change"] == "max_tokens unset, system_prompt unset"
    git(repo, "pull", "-q", "--ff-only", "origin", "main")
    entry = yaml.safe_load((repo / ENV_FILE).read_text())["models"]["m"]
    assert entry == {"version": "1.0.0", "overrides": {"temperature": 0.2}}
    events = json.loads(run(repo, "history", "--env", "production", "--json").stdout)
    events = events["deployments"] if isinstance(events, dict) else events
    assert [e["kind"] for e in events][-2:] == ["config", "rollback"]
    config, rollback = events[-2:]
    assert config["rolled_back"] is True and rollback["rollback_of"] == config["commit"]
    assert (config["from_version"], config["to_version"]) == ("1.0.0", "1.0.0")


def test_a_hand_edit_of_overrides_is_a_config_event(registry_repo: Path) -> None:
    write_version(registry_repo, "m", "1.0.0")
    write_env(registry_repo, {"version": "1.0.0"}, "m")
    git_commit(registry_repo, "deploy by hand")
    write_env(registry_repo, {"version": "1.0.0", "overrides": {"top_p": 0.5}}, "m")
    edit = git_commit(registry_repo, "lower top_p by hand")
    git(registry_repo, "revert", "--no-edit", edit)
    events = json.loads(run(registry_repo, "history", "--env", "production", "--json").stdout)
    events = events["deployments"] if isinstance(events, dict) else events
    assert [(e["kind"], e["config_change"]) for e in events] == [
        ("edit", None), ("config", "top_p set to 0.5"), ("rollback", "top_p unset")]


# --- real processes ---------------------------------------------------------------------------


def config_changes(server: Proc) -> float:
    return sum(v for k, v in metrics(server.url).items()
               if k.startswith("ggufops_config_changes_total"))


def loads(server: Proc) -> float:
    return sum(v for k, v in metrics(server.url).items()
               if k.startswith("ggufops_model_loads_total") and 'outcome="success"' in k)


def completion_tokens(url: str, model: str = MODEL) -> int:
    status, reply = http("POST", f"{url}/v1/completions",
                         {"model": model, "prompt": "The ", "temperature": 0.0})
    assert status == 200, reply
    return int(reply["usage"]["completion_tokens"])


class Traffic:
    """Completions in a loop on a thread, every status and token count recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, reply = http("POST", f"{self.url}/v1/completions",
                                 {"model": MODEL, "prompt": "The ", "temperature": 0.0})
            tokens = reply["usage"]["completion_tokens"] if status == 200 else -1
            self.results.append((status, tokens))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def agent_applied(agent: Proc, commit: str) -> bool:
    s = get(f"{agent.url}/status")
    return bool(s["phase"] == "healthy" and s["applied_commit"] == commit)


@pytest.mark.slow
def test_config_change_and_revert_apply_without_a_reload(world: World,
                                                         processes: Processes) -> None:
    world.publish("2.0.0", "baseline")
    write_env(world.repo, {"version": "2.0.0", "overrides": {"max_tokens": 3}})
    deployed = world.push("deploy 2.0.0, max_tokens 3")
    server = processes.serve(world.store, world.token_file)
    agent = processes.agent(world, server.url)
    wait_for(lambda: agent_applied(agent, deployed), what="2.0.0 applied")
    before = serving(server.url)[MODEL]
    assert loads(server) == 1 and completion_tokens(server.url) == 3
    with Traffic(server.url) as traffic:
        wait_for(lambda: len(traffic.results) >= 3, what="traffic flowing")
        write_env(world.repo, {"version": "2.0.0", "overrides": {"max_tokens": 9}})
        changed = world.push("config: max_tokens 3 -> 9")
        wait_for(lambda: agent_applied(agent, changed), what="the config change applied")
        assert completion_tokens(server.url) == 9
        middle = len(traffic.results)
        wait_for(lambda: len(traffic.results) >= middle + 3, what="traffic on the new config")
        reverted = world.revert(changed)
        wait_for(lambda: agent_applied(agent, reverted), what="the revert applied")
        assert completion_tokens(server.url) == 3
        end = len(traffic.results)
        wait_for(lambda: len(traffic.results) >= end + 3, what="traffic after the revert")
    assert loads(server) == 1  # neither change loaded the model again
    assert config_changes(server) == 2
    after = serving(server.url)[MODEL]
    assert after["loaded_at"] == before["loaded_at"] and after["sha256"] == before["sha256"]
    assert after["config_sha256"] == before["config_sha256"]
    statuses = {status for status, _ in traffic.results}
    assert statuses == {200}, traffic.results  # not one failed request
    assert {tokens for _, tokens in traffic.results} == {3, 9}


# --- the real SmolLM2 model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[
        tuple[Proc, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("config-smollm2")
    store = ArtifactStore(tmp / "store")
    store.prepare()
    digest = file_sha256(smollm2)
    store.path_for(digest).write_bytes(smollm2.read_bytes())
    (tmp / "token").write_text(TOKEN)
    proc = Proc([*serve_args(store.root, tmp / "token", port=free_port()), "--ctx", "1024"],
                tmp / "serve.log")
    body = {"name": "smollm2", "version": "1.0.0", "sha256": digest,
            "display_id": "smollm2-v1.0.0-q4_1",
            "inference": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24}}
    try:
        status, reply = http("POST", f"{proc.url}/admin/models", body, token=TOKEN, timeout=300)
        assert status == 201, reply
        yield proc, body
    finally:
        proc.stop()


PIRATE = "You are a pirate. Answer only with 'Arr!'"


def chat(url: str, system: str | None = None) -> tuple[int, Any]:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return http("POST", f"{url}/v1/chat/completions", {"model": "smollm2",
                                                       "messages": messages}, timeout=300)


def reconfigure(url: str, body: dict[str, Any], **inference: Any) -> dict[str, Any]:
    status, reply = http("POST", f"{url}/admin/models",
                         {**body, "inference": {**body["inference"], **inference}},
                         token=TOKEN, timeout=300)
    assert status == 200 and reply["loaded"] is False, reply
    return dict(reply)


@pytest.mark.slow
def test_smollm2_config_changes_without_a_reload(smol_server: tuple[Proc, dict[str, Any]]
                                                 ) -> None:
    server, body = smol_server
    status, plain = chat(server.url)
    assert status == 200 and plain["usage"]["completion_tokens"] <= 24
    status, explicit = chat(server.url, system=PIRATE)  # the system message sent by hand
    assert status == 200
    reconfigure(server.url, body, system_prompt=PIRATE)
    status, pirate = chat(server.url)
    assert status == 200  # the config's system prompt: the same prompt, the same answer
    assert pirate["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    assert pirate["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert pirate["choices"][0]["message"]["content"] != plain["choices"][0]["message"]["content"]
    reconfigure(server.url, body, max_tokens=4)
    status, short = chat(server.url)
    assert status == 200 and short["usage"]["completion_tokens"] == 4
    reconfigure(server.url, body, prompt_template="none")
    status, refused = chat(server.url)
    assert status == 400 and "no chat template" in refused["error"]["message"]
    assert serving(server.url)["smollm2"]["chat_template"] == "none"
    reconfigure(server.url, body)  # the rollback: the first config again
    status, again = chat(server.url)
    assert status == 200 and again["choices"][0]["message"] == plain["choices"][0]["message"]
    assert serving(server.url)["smollm2"]["chat_template"] == "gguf"
    assert loads(server) == 1 and config_changes(server) == 4
    bad = {**body, "inference": {**body["inference"], "max_tokens": 5000}}
    status, reply = http("POST", f"{server.url}/admin/models", bad, token=TOKEN)
    assert status == 422 and "max_tokens 5000" in reply["error"]["message"]
