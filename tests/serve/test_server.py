"""`ggufops serve`: the OpenAI API, model info, the admin API and swaps without failed requests.

Real llama.cpp on the toy models; the server runs in a thread of the test process (and once
as a real `ggufops serve` subprocess)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import openai
import pytest

from ggufops.artifacts.store import ArtifactStore
from ggufops.errors import ServeError
from ggufops.hashing import file_sha256
from ggufops.httpjson import HttpError
from ggufops.llama import llm
from ggufops.serve import app as server
from testing.runtime import (
    TOKEN,
    Proc,
    canonical,
    free_port,
    get,
    http,
    prometheus_series,
    serve_args,
    wait_for,
)


@pytest.fixture
def store(tmp_path: Path, runtime_models: dict[str, Path]) -> Path:
    """A store holding the three toy models under their sha256."""
    root = tmp_path / "store"
    ArtifactStore(root).prepare()
    for path in runtime_models.values():
        shutil.copyfile(path, ArtifactStore(root).path_for(sha(path)))
    return root


def sha(path: Path) -> str:
    return file_sha256(path)


class Running:
    def __init__(self, app: server.App, url: str) -> None:
        self.app = app
        self.url = url

    def load(self, path: Path, version: str, *, token: str | None = TOKEN,
             name: str = "llama3-instruct", digest: str | None = None,
             canary_weight: int | None = None) -> tuple[int, Any]:
        body: dict[str, Any] = {
            "name": name, "version": version, "sha256": digest or sha(path),
            "display_id": f"{name}-v{version}-f32",
            "inference": {"temperature": 0.0, "max_tokens": 8, "prompt_template": "chatml"}}
        if canary_weight is not None:
            body.update(role="canary", weight=canary_weight)
        return http("POST", f"{self.url}/admin/models", body, token=token)

    def complete(self, **body: Any) -> tuple[int, Any]:
        return http("POST", f"{self.url}/v1/completions", {"prompt": "def ", **body})

    def models(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = get(f"{self.url}/v1/models")["data"]
        return data


@pytest.fixture
def running(store: Path) -> Iterator[Running]:
    config = server.ServeConfig(store=store, port=0, admin_token=TOKEN, n_threads=1,
                                standby="off")  # draining; test_standby.py: the standby
    app = server.App(config)
    stop = threading.Event()
    urls: list[str] = []
    thread = threading.Thread(target=server.serve_until, args=(app, stop, urls.append),
                              daemon=True)
    thread.start()
    wait_for(lambda: urls, what="the server to listen")
    try:
        yield Running(app, urls[0])
    finally:
        stop.set()
        thread.join(timeout=30)


def test_model_info_endpoint_reports_the_loaded_version(running: Running,
                                                        runtime_models: dict[str, Path]) -> None:
    assert running.models() == []
    assert http("GET", f"{running.url}/readyz")[0] == 503
    status, reply = running.load(runtime_models["baseline"], "2.0.0")
    assert status == 201 and reply["loaded"] is True
    [entry] = running.models()
    assert entry["id"] == "llama3-instruct"
    assert entry["name"] == "llama3-instruct"
    assert entry["version"] == "2.0.0"
    assert entry["display_id"] == "llama3-instruct-v2.0.0-f32"
    assert entry["sha256"] == sha(runtime_models["baseline"])
    assert entry["load_seconds"] > 0 and entry["loaded_at"].endswith("Z")
    assert get(f"{running.url}/v1/models/llama3-instruct@2.0.0")["version"] == "2.0.0"
    health = get(f"{running.url}/healthz")
    assert health["status"] == "ok" and health["models"] == 1
    assert http("GET", f"{running.url}/readyz")[0] == 200
    again = running.load(runtime_models["baseline"], "2.0.0")
    assert again[0] == 200 and again[1]["loaded"] is False


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", TOKEN + "x", ""])
def test_admin_api_refuses_missing_or_wrong_token(running: Running, token: str | None,
                                                  runtime_models: dict[str, Path]) -> None:
    status, reply = running.load(runtime_models["baseline"], "2.0.0", token=token)
    assert status == 401
    assert "admin token" in reply["error"]["message"]
    assert running.models() == []
    assert running.app.admin_state()["last_errors"] == {}
    assert http("GET", f"{running.url}/admin/models", token=token)[0] == 401
    assert http("DELETE", f"{running.url}/admin/models/llama3-instruct", token=token)[0] == 401


def test_admin_api_is_off_without_a_token_file(store: Path) -> None:
    app = server.App(server.ServeConfig(store=store, admin_token=None))
    with pytest.raises(HttpError) as info:
        app.authorize("Bearer anything")
    assert info.value.status == 403


def test_read_token_refuses_short_or_missing_tokens(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ServeError, match="shorter than 16"):
        server.read_token(tmp_path / "short")
    with pytest.raises(ServeError, match="cannot read"):
        server.read_token(tmp_path / "missing")
    (tmp_path / "ok").write_text(f"  {TOKEN}\n")
    assert server.read_token(tmp_path / "ok") == TOKEN


def test_a_file_that_fails_verification_is_refused_and_the_old_model_serves(
        running: Running, runtime_models: dict[str, Path], store: Path) -> None:
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    improved = sha(runtime_models["improved"])
    target = ArtifactStore(store).path_for(improved)
    target.write_bytes(runtime_models["degraded"].read_bytes())  # wrong bytes under the name
    status, reply = running.load(runtime_models["improved"], "2.1.0")
    assert status == 422
    assert "sha256" in reply["error"]["message"] and "refusing to load" in reply["error"]["message"]
    [entry] = running.models()
    assert entry["version"] == "2.0.0"
    assert running.complete()[0] == 200
    errors = running.app.admin_state()["last_errors"]
    assert errors["llama3-instruct"]["version"] == "2.1.0"


def test_a_missing_file_is_404_and_a_non_gguf_is_422(running: Running, store: Path,
                                                     runtime_models: dict[str, Path]) -> None:
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    status, reply = running.load(runtime_models["baseline"], "9.0.0", digest="0" * 64)
    assert status == 404 and "not in the store" in reply["error"]["message"]
    junk = b"not a model at all" * 100
    digest = hashlib.sha256(junk).hexdigest()
    ArtifactStore(store).path_for(digest).write_bytes(junk)
    status, reply = running.load(runtime_models["baseline"], "9.0.1", digest=digest)
    assert status == 422 and "GGUF" in reply["error"]["message"]
    assert [m["version"] for m in running.models()] == ["2.0.0"]


def test_admin_load_validates_its_body(running: Running) -> None:
    for body, field in [({"name": "Bad Name", "version": "1.0.0", "sha256": "0" * 64}, "name"),
                        ({"name": "m", "version": "1.0", "sha256": "0" * 64}, "version"),
                        ({"name": "m", "version": "1.0.0", "sha256": "xyz"}, "sha256"),
                        ([], "JSON object")]:
        status, reply = http("POST", f"{running.url}/admin/models", body, token=TOKEN)
        assert status == 400 and field in reply["error"]["message"]


def test_completions_and_chat_answer_in_openai_format(running: Running,
                                                      runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0")
    status, reply = running.complete(max_tokens=5)
    assert status == 200
    assert reply["object"] == "text_completion"
    assert reply["model"] == "llama3-instruct-v2.0.0-f32"
    assert reply["usage"]["completion_tokens"] == 5
    assert isinstance(reply["choices"][0]["text"], str)
    deterministic = running.complete(max_tokens=5)[1]["choices"][0]["text"]
    assert deterministic == reply["choices"][0]["text"]  # temperature 0 from the version
    status, chat = http("POST", f"{running.url}/v1/chat/completions",
                        {"model": "llama3-instruct", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "Hello"}]})
    assert status == 200
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 4


def read_events(url: str, path: str, body: dict[str, Any]) -> list[Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/event-stream"
    events = []
    for raw in resp.read().decode().split("\n\n"):
        if raw.startswith("data: "):
            data = raw[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    conn.close()
    return events


def test_streaming_answers_as_server_sent_events(running: Running,
                                                 runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0")
    events = read_events(running.url, "/v1/completions",
                         {"prompt": "import ", "max_tokens": 6, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["model"] == "llama3-instruct-v2.0.0-f32" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = running.complete(prompt="import ", max_tokens=6)[1]["choices"][0]["text"]
    assert text == whole
    chat = read_events(running.url, "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                        "stream": True})
    assert chat[-1] == "[DONE]"
    assert chat[0]["object"] == "chat.completion.chunk"


def test_bad_requests_are_refused_with_json_errors(running: Running,
                                                   runtime_models: dict[str, Path]) -> None:
    assert running.complete()[0] == 503  # nothing loaded yet
    running.load(runtime_models["baseline"], "2.0.0")
    assert running.complete(model="other")[0] == 404
    assert running.complete(max_tokens=10**6)[0] == 400
    assert running.complete(max_tokens="many")[0] == 400
    assert running.complete(n=2)[0] == 400
    assert running.complete(prompt=["a", "b"])[0] == 400
    assert http("POST", f"{running.url}/v1/chat/completions", {"messages": []})[0] == 400
    assert http("GET", f"{running.url}/nope")[0] == 404
    status, reply = running.complete(prompt="x" * 5000, max_tokens=4)  # over the 2048 context
    assert status == 400 and "context" in reply["error"]["message"].lower()
    assert running.complete()[0] == 200


def test_several_models_by_name(running: Running, runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0", name="alpha")
    running.load(runtime_models["improved"], "1.0.0", name="beta")
    assert sorted(m["name"] for m in running.models()) == ["alpha", "beta"]
    assert running.complete()[0] == 400  # which one?
    assert running.complete(model="beta")[1]["model"] == "beta-v1.0.0-f32"
    assert running.complete(model="alpha-v2.0.0-f32")[1]["model"] == "alpha-v2.0.0-f32"
    status, _ = http("DELETE", f"{running.url}/admin/models/beta", token=TOKEN)
    assert status == 200
    assert [m["name"] for m in running.models()] == ["alpha"]


def test_a_request_in_flight_finishes_on_the_old_model(running: Running,
                                                       runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0")
    with running.app.table.use(None) as held:  # what a request in flight holds
        assert running.load(runtime_models["improved"], "2.1.0")[0] == 201
        assert running.complete()[1]["model"] == "llama3-instruct-v2.1.0-f32"  # new requests
        state = get_admin(running)
        assert [m["version"] for m in state["models"]] == ["2.1.0"]
        assert [m["version"] for m in state["draining"]] == ["2.0.0"]
        assert state["draining"][0]["in_flight"] == 1
        with held.lock:  # the old model still answers its request
            result = llm.complete(held.model, "x", {"max_tokens": 2}, stream=False)
        assert isinstance(result, dict) and result["usage"]["completion_tokens"] == 2
    assert get_admin(running)["draining"] == []  # freed when its last request ended


def get_admin(running: Running) -> dict[str, Any]:
    status, body = http("GET", f"{running.url}/admin/models", token=TOKEN)
    assert status == 200
    return dict(body)


def more_than(results: list[Any], extra: int) -> Callable[[], bool]:
    """A probe: have `extra` more results arrived since now?"""
    target = len(results) + extra
    return lambda: len(results) >= target


@pytest.mark.slow
def test_no_request_fails_while_models_swap(running: Running,
                                            runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0")
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, reply = running.complete(max_tokens=4)
            results.append((status, reply.get("model", "") if isinstance(reply, dict) else ""))

    def streamer() -> None:
        while not stop.is_set():
            events = read_events(running.url, "/v1/completions",
                                 {"prompt": "a", "max_tokens": 16, "stream": True})
            models = {e["model"] for e in events if isinstance(e, dict)}
            results.append((200 if events[-1] == "[DONE]" and len(models) == 1 else 0,
                            models.pop()))

    clients = [threading.Thread(target=client) for _ in range(2)]
    clients.append(threading.Thread(target=streamer))
    for c in clients:
        c.start()
    versions = ["2.1.0", "2.0.0"] * 3
    for i, version in enumerate(versions):
        wait_for(more_than(results, 3), what="requests between swaps")
        toy = runtime_models["improved" if version == "2.1.0" else "baseline"]
        status, _ = running.load(toy, version)
        assert status == 201, (i, version)
    wait_for(more_than(results, 3), what="requests after the swaps")
    stop.set()
    for c in clients:
        c.join(timeout=60)
    assert [r for r in results if r[0] != 200] == []
    served = {model for _, model in results}
    assert served == {"llama3-instruct-v2.0.0-f32", "llama3-instruct-v2.1.0-f32"}
    metrics = prometheus_series(running.app.render_metrics())
    assert metrics['ggufops_model_loads_total{model="llama3-instruct",outcome="success"}'] == 7
    wait_for(lambda: get_admin(running)["draining"] == [], what="old models freed")


def test_metrics_are_prometheus_text_labelled_by_version(running: Running,
                                                         runtime_models: dict[str, Path]) -> None:
    running.load(runtime_models["baseline"], "2.0.0")
    running.complete(max_tokens=3)
    running.complete(model="nope")
    status, text = http("GET", f"{running.url}/metrics")
    assert status == 200
    lines = text.splitlines()
    found = prometheus_series(text)

    def series(key: str) -> float:
        return found[canonical(key)]

    v2 = 'model="llama3-instruct",version="2.0.0"'
    assert series(f'ggufops_requests_total{{{v2},endpoint="completions",code="200"}}') == 1
    assert series('ggufops_requests_total{model="",version="",endpoint="completions",'
                  'code="404"}') == 1
    assert series(f'ggufops_tokens_total{{{v2},kind="completion"}}') == 3
    assert series(f'ggufops_request_duration_seconds_count{{{v2},endpoint="completions"}}') == 1
    digest = sha(runtime_models["baseline"])
    info = (f'ggufops_model_info{{model="llama3-instruct",version="2.0.0",'
            f'display_id="llama3-instruct-v2.0.0-f32",sha256="{digest}"}}')
    assert series(info) == 1
    assert "# TYPE ggufops_request_duration_seconds histogram" in lines


class CountingWriter:
    """A Writer that reads the request counter at the moment the answer is written."""

    def __init__(self, app: server.App, labels: tuple[str, ...]) -> None:
        self.app = app
        self.labels = labels
        self.counted_when_answered: list[float] = []

    def _snapshot(self) -> None:
        self.counted_when_answered.append(
            self.app.metrics.value("ggufops_requests_total", self.labels))

    def send_json(self, status: int, body: Any) -> None:
        self._snapshot()

    def start_events(self) -> None:
        pass

    def send_event(self, data: str) -> None:
        if data == "[DONE]":
            self._snapshot()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_is_counted_before_its_answer_is_written(
        running: Running, runtime_models: dict[str, Path], stream: bool) -> None:
    """The root of the flaky metrics test: the counter was incremented after the reply."""
    running.load(runtime_models["baseline"], "2.0.0")
    ok = ("llama3-instruct", "2.0.0", "completions", "200")
    writer = CountingWriter(running.app, ok)
    running.app.generator.handle(writer, "completions",
                                 {"prompt": "a", "max_tokens": 2, "stream": stream})
    assert writer.counted_when_answered == [1]
    missing = CountingWriter(running.app, ("", "", "completions", "404"))
    running.app.generator.handle(missing, "completions", {"prompt": "a", "model": "nope"})
    assert missing.counted_when_answered == [1]
    too_long = CountingWriter(running.app, ("llama3-instruct", "2.0.0", "completions", "400"))
    running.app.generator.handle(too_long, "completions", {"prompt": "a", "max_tokens": 10**6})
    assert too_long.counted_when_answered == [1]  # an error of a model: its labels, its code
    assert running.app.metrics.value("ggufops_requests_total", ok) == 1
    assert running.app.metrics.value("ggufops_in_flight_requests", ok[:2]) == 0


@pytest.mark.slow
def test_serve_command_runs_and_stops_on_sigterm(tmp_path: Path, store: Path,
                                                 runtime_models: dict[str, Path]) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    proc = Proc(serve_args(store, token, port=free_port()), tmp_path / "serve.log")
    try:
        assert get(f"{proc.url}/healthz")["status"] == "ok"
        body = {"name": "m", "version": "1.0.0", "sha256": sha(runtime_models["baseline"])}
        assert http("POST", f"{proc.url}/admin/models", body, token=TOKEN)[0] == 201
        assert http("POST", f"{proc.url}/v1/completions", {"prompt": "a", "max_tokens": 2})[0] \
            == 200
    finally:
        code = proc.stop()
    assert code == 0
    assert "serving m-v1.0.0" in proc.log_path.read_text()


# --- canaries -----------------------------------------------------------------------------

PRIMARY, CANARY = "llama3-instruct-v2.0.0-f32", "llama3-instruct-v2.1.0-f32"
USERS = [f"user-{i}" for i in range(24)]


def answered_by(running: Running, user: str | None = None, **body: Any) -> str:
    """The display id that answered one completion (for `user`, if given)."""
    extra = {"user": user} if user is not None else {}
    status, reply = running.complete(max_tokens=1, **extra, **body)
    assert status == 200, reply
    return str(reply["model"])


def with_canary(running: Running, runtime_models: dict[str, Path], weight: int) -> None:
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    status, reply = running.load(runtime_models["improved"], "2.1.0", canary_weight=weight)
    assert status == 201, reply
    assert (reply["model"]["role"], reply["model"]["weight"]) == ("canary", weight)


def test_a_canary_at_weight_100_answers_every_request(running: Running,
                                                      runtime_models: dict[str, Path]) -> None:
    with_canary(running, runtime_models, 100)
    assert {answered_by(running) for _ in range(8)} == {CANARY}
    assert {answered_by(running, user) for user in USERS[:8]} == {CANARY}
    [entry] = running.models()  # the primary's entry, every field kept, plus `canary`
    assert (entry["id"], entry["version"], entry["display_id"]) == ("llama3-instruct", "2.0.0",
                                                                     PRIMARY)
    assert entry["sha256"] == sha(runtime_models["baseline"])
    canary = entry["canary"]
    assert set(canary) == {"version", "sha256", "display_id", "weight", "loaded_at",
                           "config_sha256"}
    assert (canary["version"], canary["display_id"], canary["weight"]) == ("2.1.0", CANARY, 100)
    assert canary["sha256"] == sha(runtime_models["improved"])
    assert answered_by(running, model=PRIMARY) == PRIMARY  # a display id names one model
    found = prometheus_series(running.app.render_metrics())
    assert found[canonical('ggufops_requests_total{model="llama3-instruct",version="2.1.0",'
                           'endpoint="completions",code="200"}')] == 16
    assert [k for k in found if k.startswith("ggufops_canary_weight{")
            and 'model="llama3-instruct"' in k and 'version="2.1.0"' in k] != []


def test_a_canary_at_weight_0_answers_none(running: Running,
                                           runtime_models: dict[str, Path]) -> None:
    with_canary(running, runtime_models, 0)
    assert {answered_by(running) for _ in range(8)} == {PRIMARY}
    assert {answered_by(running, user) for user in USERS[:8]} == {PRIMARY}
    assert running.models()[0]["canary"]["weight"] == 0


def test_a_canary_at_weight_50_splits_users_and_each_user_sticks(
        running: Running, runtime_models: dict[str, Path]) -> None:
    with_canary(running, runtime_models, 50)
    first = {user: answered_by(running, user) for user in USERS}
    assert set(first.values()) == {PRIMARY, CANARY}
    for user in USERS:
        assert answered_by(running, user) == first[user]
    chat = http("POST", f"{running.url}/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                 "user": USERS[0]})[1]
    assert chat["model"] == first[USERS[0]]
    assert running.complete(user=5)[0] == 400


def test_a_new_weight_needs_no_reload_and_deleting_the_canary_restores_the_primary(
        running: Running, runtime_models: dict[str, Path]) -> None:
    with_canary(running, runtime_models, 100)
    loaded_at = running.models()[0]["canary"]["loaded_at"]
    status, reply = running.load(runtime_models["improved"], "2.1.0", canary_weight=0)
    assert status == 200 and reply["loaded"] is False
    assert running.models()[0]["canary"] == {**running.models()[0]["canary"], "weight": 0,
                                             "loaded_at": loaded_at}
    assert running.load(runtime_models["improved"], "2.1.0", canary_weight=100)[0] == 200
    with running.app.table.use(None) as held:  # a request in flight on the canary
        assert held.request.display_id == CANARY
        status, reply = http("DELETE", f"{running.url}/admin/models/llama3-instruct/canary",
                             token=TOKEN)
        assert status == 200 and reply["unloaded"]["version"] == "2.1.0"
        assert "canary" not in running.models()[0]
        assert {answered_by(running, user) for user in USERS[:8]} == {PRIMARY}
        assert [m["version"] for m in get_admin(running)["draining"]] == ["2.1.0"]
    assert get_admin(running)["draining"] == []  # freed when its last request ended
    again = http("DELETE", f"{running.url}/admin/models/llama3-instruct/canary", token=TOKEN)
    assert again[0] == 404


def test_loading_a_primary_keeps_the_canary(running: Running,
                                            runtime_models: dict[str, Path]) -> None:
    with_canary(running, runtime_models, 100)
    assert running.load(runtime_models["degraded"], "2.2.0")[0] == 201
    [entry] = running.models()
    assert (entry["version"], entry["canary"]["version"]) == ("2.2.0", "2.1.0")
    assert http("DELETE", f"{running.url}/admin/models/llama3-instruct", token=TOKEN)[0] == 200
    assert running.models() == [] and get_admin(running)["canaries"] == []


def test_a_canary_that_fails_to_load_leaves_the_primary_alone(
        running: Running, runtime_models: dict[str, Path], store: Path) -> None:
    status, reply = running.load(runtime_models["improved"], "2.1.0", canary_weight=50)
    assert status == 409 and "no primary" in reply["error"]["message"]
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    junk = b"not a model at all" * 100
    digest = hashlib.sha256(junk).hexdigest()
    ArtifactStore(store).path_for(digest).write_bytes(junk)
    status, reply = running.load(runtime_models["baseline"], "2.1.0", digest=digest,
                                 canary_weight=100)
    assert status == 422 and "GGUF" in reply["error"]["message"]
    [entry] = running.models()
    assert entry["version"] == "2.0.0" and "canary" not in entry
    assert {answered_by(running, user) for user in USERS[:4]} == {PRIMARY}
    state = get_admin(running)
    assert state["canaries"] == []
    assert state["last_errors"]["llama3-instruct/canary"]["version"] == "2.1.0"
    assert "llama3-instruct" not in state["last_errors"]
    for weight in (101, -1, "50", True):
        status, reply = running.load(runtime_models["improved"], "2.1.0",
                                     canary_weight=weight)  # type: ignore[arg-type]
        assert status == 400 and "weight" in reply["error"]["message"]
    bad_role = {"name": "llama3-instruct", "version": "2.1.0",
                "sha256": sha(runtime_models["improved"]), "role": "shadow"}
    assert http("POST", f"{running.url}/admin/models", bad_role, token=TOKEN)[0] == 400


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
def test_canary_admin_routes_refuse_a_missing_or_wrong_token(
        running: Running, runtime_models: dict[str, Path], token: str | None) -> None:
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    status, _ = running.load(runtime_models["improved"], "2.1.0", canary_weight=100,
                             token=token)
    assert status == 401
    assert "canary" not in running.models()[0]
    assert running.app.admin_state()["loading"] == {}
    with_token = running.load(runtime_models["improved"], "2.1.0", canary_weight=100)
    assert with_token[0] == 201
    url = f"{running.url}/admin/models/llama3-instruct/canary"
    assert http("DELETE", url, token=token)[0] == 401
    assert running.models()[0]["canary"]["version"] == "2.1.0"


# --- the official openai SDK against the toy models ----------------------------------------


def sdk(running: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def chatty(running: Running, runtime_models: dict[str, Path]) -> openai.OpenAI:
    """The baseline toy with the chatml format, at temperature 0 by default."""
    assert running.load(runtime_models["baseline"], "2.0.0")[0] == 201
    return sdk(running)


HELLO: list[Any] = [{"role": "user", "content": "Hello"}]


def test_sdk_content_parts_answer_like_the_same_text(chatty: openai.OpenAI) -> None:
    parts = chatty.chat.completions.create(model="llama3-instruct", max_tokens=6, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hel"},
                                     {"type": "text", "text": "lo"}]}])
    text = chatty.chat.completions.create(model="llama3-instruct", max_tokens=6, messages=[
        {"role": "user", "content": "Hel\nlo"}])
    assert parts.choices[0].message.content == text.choices[0].message.content
    assert parts.usage is not None and parts.usage.completion_tokens == 6


def test_sdk_image_parts_tools_and_n_are_refused_in_openais_envelope(
        chatty: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as info:
        chatty.chat.completions.create(model="llama3-instruct", messages=[
            {"role": "user", "content": [{"type": "text", "text": "what?"}, image]}])
    assert info.value.status_code == 400
    assert info.value.body == {  # type: ignore[comparison-overlap]
        "message": "messages[0].content[1]: image_url parts are not supported: the models "
                   "ggufops serves read text only; send text parts",
        "type": "invalid_request_error", "param": "messages", "code": "unsupported_content"}
    tool = {"type": "function", "function": {"name": "now", "parameters": {}}}
    with pytest.raises(openai.BadRequestError, match="tools"):
        chatty.chat.completions.create(model="llama3-instruct", messages=HELLO, tools=[tool])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        chatty.chat.completions.create(model="llama3-instruct", messages=HELLO, n=2)
    answer = chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                            max_tokens=2, extra_body={"not_an_openai_field": 1})
    assert answer.choices[0].finish_reason == "length"  # unknown fields are ignored


def test_sdk_streaming_reports_the_same_usage_as_a_whole_answer(chatty: openai.OpenAI) -> None:
    whole = chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                           max_completion_tokens=7)
    chunks = list(chatty.chat.completions.create(
        model="llama3-instruct", messages=HELLO, max_completion_tokens=7, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert whole.usage is not None and whole.usage.completion_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert text == whole.choices[0].message.content
    assert {c.model for c in chunks} == {"llama3-instruct-v2.0.0-f32"}
    plain = list(chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                                max_tokens=3, stream=True))
    assert all(c.usage is None and c.choices for c in plain)  # no usage chunk unless asked


def test_sdk_completions_stream_usage_and_max_tokens(chatty: openai.OpenAI) -> None:
    whole = chatty.completions.create(model="llama3-instruct", prompt="def ", max_tokens=5)
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    assert whole.choices[0].finish_reason == "length"
    chunks = list(chatty.completions.create(model="llama3-instruct", prompt="def ",
                                            max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage == whole.usage
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


def test_sdk_stop_sequences_cut_the_answer(chatty: openai.OpenAI) -> None:
    free = chatty.completions.create(model="llama3-instruct", prompt="import ", max_tokens=24)
    text = free.choices[0].text
    cut = text[len(text) // 2:][:1]  # a character the answer contains
    stopped = chatty.completions.create(model="llama3-instruct", prompt="import ",
                                        max_tokens=24, stop=[cut])
    assert stopped.choices[0].text == text[:text.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"


def test_sdk_seed_makes_sampling_repeatable(chatty: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        answer = chatty.completions.create(model="llama3-instruct", prompt="The ",
                                           max_tokens=24, temperature=1.0, seed=seed)
        return answer.choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert len({sample(seed) for seed in range(8, 12)} | {first}) > 1


def test_sdk_json_schema_answers_parse_and_match(chatty: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    answer = chatty.chat.completions.create(
        model="llama3-instruct", messages=HELLO, max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert answer.choices[0].finish_reason == "stop"
    parsed = json.loads(answer.choices[0].message.content or "")
    assert set(parsed) == {"ok"} and isinstance(parsed["ok"], bool)
    anything = chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                              max_tokens=200,
                                              response_format={"type": "json_object"})
    content = anything.choices[0].message.content or ""
    assert content.lstrip().startswith("{")  # the grammar allows nothing else first


def test_sdk_logprobs_are_the_sampled_tokens_and_their_alternatives(
        chatty: openai.OpenAI) -> None:
    answer = chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                            max_tokens=5, logprobs=True, top_logprobs=3)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 5
    assert "".join(t.token for t in logprobs.content) == answer.choices[0].message.content
    for entry in logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: argmax
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True)
        assert bytes(entry.bytes or []) == entry.token.encode()
    legacy = chatty.completions.create(model="llama3-instruct", prompt="def ", max_tokens=4,
                                       logprobs=2)
    assert legacy.choices[0].logprobs is not None
    assert len(legacy.choices[0].logprobs.tokens or []) == 4
    assert all(len(top) == 2 for top in legacy.choices[0].logprobs.top_logprobs or [])
    streamed = list(chatty.chat.completions.create(model="llama3-instruct", messages=HELLO,
                                                   max_tokens=5, logprobs=True, stream=True))
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs
              for t in c.choices[0].logprobs.content or []]
    assert tokens == [t.token for t in logprobs.content]


def test_a_version_without_chat_refuses_chat_and_completes(
        running: Running, runtime_models: dict[str, Path]) -> None:
    body = {"name": "base", "version": "1.0.0", "sha256": sha(runtime_models["baseline"]),
            "display_id": "base-v1.0.0-f32", "inference": {"prompt_template": "none"}}
    assert http("POST", f"{running.url}/admin/models", body, token=TOKEN)[0] == 201
    assert running.models()[0]["chat_template"] == "none"
    client = sdk(running)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="base", messages=HELLO)
    assert info.value.code == "model_has_no_chat_template"
    assert "base-v1.0.0-f32 has no chat template" in info.value.message
    assert client.completions.create(model="base", prompt="a", max_tokens=2).usage is not None
    unset = {**body, "name": "plain", "inference": {}}  # no template in the file: no chat
    assert http("POST", f"{running.url}/admin/models", unset, token=TOKEN)[0] == 201
    assert {m["name"]: m["chat_template"] for m in running.models()}["plain"] == "none"


@pytest.mark.parametrize(("template", "message"), [
    ("llama3", "did you mean llama-3?"), ("gguf", "has no tokenizer.chat_template")])
def test_a_load_with_an_unusable_template_is_refused(
        running: Running, runtime_models: dict[str, Path], template: str, message: str) -> None:
    body = {"name": "m", "version": "1.0.0", "sha256": sha(runtime_models["baseline"]),
            "inference": {"prompt_template": template}}
    status, reply = http("POST", f"{running.url}/admin/models", body, token=TOKEN)
    assert status in (400, 422) and message in reply["error"]["message"]
    assert running.models() == []
