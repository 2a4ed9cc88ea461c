"""The shadow yields to clients: it starts only while no client request is in flight, a
client request arriving aborts its generation at the next token (counted as preempted,
never retried), and streamed answers are mirrored by their assembled text."""

from __future__ import annotations

import json
import shutil
import threading
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from ggufops.artifacts.store import ArtifactStore
from ggufops.hashing import file_sha256
from ggufops.llama import llm
from ggufops.serve import shadow
from ggufops.serve.yielding import PrimaryTraffic
from testing.runtime import MODEL, TOKEN, Processes, http, metrics, wait_for

# A mirrored generation long enough that the short request surely arrives while it runs.
# 600 tokens took only 0.6 s on a toy (measured with the suite running), so a test process
# descheduled that long after seeing the first shadow token found the shadow already done
# (preempted 0: a flake on a loaded machine); 1,500 take about 5 s (attention grows with
# the context), paid once by the primary; a working preemption stops the shadow at once.
LONG_TOKENS = 1500


def busy(traffic: PrimaryTraffic) -> bool:
    """Whether a client request is in flight: one arrived since a mark taken now."""
    return traffic.arrived_since(traffic.mark())


def test_primary_traffic_counts_requests_in_flight() -> None:
    traffic = PrimaryTraffic()
    assert not busy(traffic)
    with traffic.request():
        with traffic.request():
            assert busy(traffic)
        assert busy(traffic)
    assert not busy(traffic)


def test_a_client_request_that_came_and_went_between_two_checks_still_counts() -> None:
    """On a busy machine a short client request can run whole while the shadow waits for
    the CPU between two tokens: the in-flight count is 0 again at the next check, but the
    shadow must still yield (this made the preemption test below flaky)."""
    traffic = PrimaryTraffic()
    mark = traffic.mark()
    assert not traffic.arrived_since(mark)
    with traffic.request():
        assert traffic.arrived_since(mark)
    assert traffic.arrived_since(mark) and not busy(traffic)
    assert not traffic.arrived_since(traffic.mark())  # a new generation starts afresh


def test_chunk_text_of_completion_and_chat_chunks() -> None:
    assert shadow.chunk_text({"choices": [{"text": "ab"}]}) == "ab"
    assert shadow.chunk_text({"choices": [{"delta": {"content": "c"}}]}) == "c"
    assert shadow.chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert shadow.chunk_text({"choices": [], "usage": {}}) == ""  # include_usage's last chunk
    texts: list[str] = []
    chunks = [{"choices": [{"text": "x"}]}, {"choices": [{"text": "y"}]}]
    assert list(shadow.collecting(iter(chunks), texts)) == chunks and texts == ["x", "y"]


def test_should_stop_aborts_a_generation_at_a_token(runtime_models: dict[str, Path]) -> None:
    model = llm.serve_load(runtime_models["baseline"], n_ctx=256, n_threads=1,
                           chat_template="chatml")
    try:
        asked: list[int] = []
        trace = llm.Trace()

        def stop_at_third_token() -> bool:
            asked.append(len(trace.sampled))
            return len(trace.sampled) >= 3

        with pytest.raises(llm.GenerationAborted):
            llm.complete(model, "def ", {"max_tokens": 50, "temperature": 0.0}, stream=False,
                         trace=trace, should_stop=stop_at_third_token)
        assert asked == [0, 1, 2, 3] and len(trace.sampled) == 3  # before the prompt, per token
        whole = llm.complete(model, "def ", {"max_tokens": 5, "temperature": 0.0}, stream=False)
        assert isinstance(whole, dict) and whole["usage"]["completion_tokens"] == 5
    finally:
        model.close()


# --- real `ggufops serve` processes on the toy models ----------------------------------------


def start_server(processes: Processes, tmp: Path, models: dict[str, Path]) -> str:
    store = ArtifactStore(tmp / "store")
    store.prepare()
    for path in models.values():
        shutil.copyfile(path, store.path_for(file_sha256(path)))
    (tmp / "token").write_text(TOKEN)
    return processes.serve(store.root, tmp / "token").url


def load(url: str, path: Path, version: str, role: str = "primary") -> None:
    body: dict[str, Any] = {"name": MODEL, "version": version, "sha256": file_sha256(path),
                            "inference": {"temperature": 0.0, "prompt_template": "chatml"}}
    if role != "primary":
        body.update(role=role, weight=100)
    status, reply = http("POST", f"{url}/admin/models", body, token=TOKEN, timeout=120)
    assert status == 201, reply


def complete(url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    status, reply = http("POST", f"{url}/v1/completions",
                         {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens},
                         timeout=120)
    assert status == 200, reply
    return dict(reply)


def report(url: str) -> dict[str, Any]:
    status, body = http("GET", f"{url}/admin/shadow?model={MODEL}", token=TOKEN)
    assert status == 200, body
    return dict(body)


def mirrored(url: str, count: int) -> dict[str, Any] | None:
    body = report(url)
    stats = body["stats"]
    return body if stats is not None and stats["mirrored"] == count else None


def test_a_client_request_preempts_the_running_shadow_and_gets_its_whole_answer(
        processes: Processes, tmp_path: Path, runtime_models: dict[str, Path]) -> None:
    url = start_server(processes, tmp_path, runtime_models)
    load(url, runtime_models["baseline"], "2.0.0")
    alone = complete(url, "def ", 8)  # the primary's answer with no shadow loaded
    load(url, runtime_models["degraded"], "2.1.0", role="shadow")

    complete(url, "import ", LONG_TOKENS)  # mirrored: the shadow generates it for ~5 s
    wait_for(lambda: (report(url)["running"] or {}).get("tokens", 0) >= 1,
             what="the shadow generating the long request")
    answer = complete(url, "def ", 8)  # arrives while the shadow generates

    assert answer["choices"][0]["text"] == alone["choices"][0]["text"]
    assert answer["choices"][0]["finish_reason"] == alone["choices"][0]["finish_reason"]
    assert answer["usage"] == alone["usage"] and answer["model"] == alone["model"]
    body = wait_for(lambda: mirrored(url, 1), what="the short request mirrored")
    assert body["preempted"] == 1 and body["dropped"] == 0 and body["stats"]["errors"] == 0
    assert body["running"] is None and body["queued"] == 0  # the long one was not retried
    assert body["stats"]["exact_match_rate"] in (0.0, 1.0)  # the short request alone
    series = metrics(url)
    assert series[f'ggufops_shadow_preempted_total{{model="{MODEL}"}}'] == 1
    outcomes = sum(v for k, v in series.items()
                   if k.startswith("ggufops_shadow_requests_total{"))
    assert outcomes == 1  # agreement counts completed shadow answers only


def read_events(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a streamed answer (which must end with [DONE])."""
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, json.dumps({**body, "model": MODEL, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        events = [e[len("data: "):] for e in resp.read().decode().split("\n\n")
                  if e.startswith("data: ")]
    finally:
        conn.close()
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


def test_streamed_requests_are_mirrored_and_never_receive_shadow_output(
        processes: Processes, tmp_path: Path, runtime_models: dict[str, Path]) -> None:
    url = start_server(processes, tmp_path, runtime_models)
    load(url, runtime_models["baseline"], "2.0.0")
    whole = complete(url, "import ", 6)
    whole_for = complete(url, "for i in", 6)
    # a shadow that is the primary's own file agrees with the assembled streamed text
    load(url, runtime_models["baseline"], "2.0.1", role="shadow")
    chunks = read_events(url, "/v1/completions", {"prompt": "import ", "max_tokens": 6})
    # the next request would preempt this one's shadow run: wait for it first
    wait_for(lambda: mirrored(url, 1), what="the streamed completion mirrored")
    chat = read_events(url, "/v1/chat/completions", CHAT)
    assert {c["model"] for c in chunks + chat} == {whole["model"]}
    assert "".join(shadow.chunk_text(c) for c in chunks) == whole["choices"][0]["text"]
    same = wait_for(lambda: mirrored(url, 2), what="the streamed chat mirrored")
    assert same["preempted"] == 0
    assert same["stats"]["version"] == "2.0.1" and same["stats"]["exact_match_rate"] == 1.0
    assert same["stats"]["token_overlap_mean"] == 1.0 and same["stats"]["errors"] == 0

    # a different shadow: its answers differ, and the client still gets the primary's
    load(url, runtime_models["degraded"], "2.1.0", role="shadow")
    chunks = read_events(url, "/v1/completions", {"prompt": "for i in", "max_tokens": 6})
    assert {c["model"] for c in chunks} == {whole["model"]}
    assert "".join(shadow.chunk_text(c) for c in chunks) == whole_for["choices"][0]["text"]
    other = wait_for(lambda: mirrored(url, 1), what="the streamed request mirrored")
    assert other["stats"]["version"] == "2.1.0" and other["stats"]["exact_match_rate"] == 0.0
    assert other["preempted"] == 0 and other["dropped"] == 0


def test_wait_quiet_returns_only_after_a_spell_without_requests() -> None:
    traffic = PrimaryTraffic()
    traffic.wait_quiet(0.0)  # nothing in flight, nothing changing: returns
    done = threading.Event()
    with traffic.request():
        waiter = threading.Thread(target=lambda: (traffic.wait_quiet(0.01), done.set()))
        waiter.start()
        assert not done.wait(0.05)  # a request is in flight: not quiet however long
    waiter.join(timeout=30)
    assert done.is_set()
