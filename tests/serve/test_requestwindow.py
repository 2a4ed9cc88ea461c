"""The request window (GET /admin/requests) and user ratings (POST /v1/feedback): unit
tests of the bounded window, then a real server (in a thread, real llama.cpp on a toy)."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ggufops.artifacts.store import ArtifactStore, file_sha256
from ggufops.httpjson import HttpError
from ggufops.serve import app as server
from ggufops.serve.requestwindow import (
    VERSIONS_KEPT,
    Feedback,
    RequestRecord,
    RequestWindow,
    parse_query,
)
from testing.runtime import TOKEN, http, metrics, wait_for

NAME = "llama3-instruct"


def record(ts: float, version: str = "1.0.0", cid: str = "", ok: bool = True,
           model: str = NAME) -> RequestRecord:
    return RequestRecord(ts=ts, model=model, version=version, role="primary", latency_s=0.1,
                         ok=ok, status=200 if ok else 500, prompt_tokens=3,
                         completion_tokens=5, completion_id=cid)


def test_the_window_says_since_when_it_has_kept_records() -> None:
    """It lives in the server's memory: a canary's progress deadline does not count the
    time before a server restart, when nothing was kept (agent/canarywatch.py)."""
    before = time.time()
    window = RequestWindow()
    reply = window.since(NAME, 0)
    assert before <= reply["started"] == window.started <= reply["now"]


def test_the_window_keeps_the_newest_records_per_version() -> None:
    window = RequestWindow(per_version=3)
    for i in range(5):
        window.record(record(float(i), "1.0.0"))
    window.record(record(10.0, "2.0.0"))
    window.record(record(11.0, model="other"))
    seen = window.since(NAME, 0)["requests"]
    assert [(r["version"], r["ts"]) for r in seen] == [
        ("1.0.0", 2.0), ("1.0.0", 3.0), ("1.0.0", 4.0), ("2.0.0", 10.0)]
    assert [r["ts"] for r in window.since(NAME, 3.5)["requests"]] == [4.0, 10.0]


def test_only_the_versions_that_answered_last_are_kept() -> None:
    window = RequestWindow()
    versions = [f"1.{i}.0" for i in range(VERSIONS_KEPT + 2)]
    for i, version in enumerate(versions):
        window.record(record(float(i), version))
    window.record(record(99.0, "1.0.0"))  # answered again: the newest now
    window.record(record(100.0, "1.0.0", model="other"))
    kept = {r["version"] for r in window.since(NAME, 0)["requests"]}
    assert kept == {"1.0.0", *versions[-(VERSIONS_KEPT - 1):]}
    assert len(window.since("other", 0)["requests"]) == 1


def test_a_rating_goes_to_the_version_that_answered() -> None:
    window = RequestWindow(ids=2)
    window.record(record(1.0, "1.0.0", cid="a"))
    window.record(record(2.0, "2.0.0", cid="b"))
    window.record(record(3.0, "2.0.0", cid="failed", ok=False))
    rating = window.rate(Feedback("b", 2), now=5.0)
    assert (rating.version, rating.rating) == ("2.0.0", 2)
    with pytest.raises(HttpError) as failed:
        window.rate(Feedback("failed", 5))  # an error answer cannot be rated
    assert failed.value.status == 404
    window.record(record(4.0, "2.0.0", cid="c"))  # "a" falls out of the bounded id table
    with pytest.raises(HttpError):
        window.rate(Feedback("a", 5))
    assert [r["rating"] for r in window.since(NAME, 0)["ratings"]] == [2]


@pytest.mark.parametrize("body", [[], {"id": "x"}, {"id": "x", "rating": 0},
                                  {"id": "x", "rating": 6}, {"id": "x", "rating": 4.5},
                                  {"id": "x", "rating": True}, {"id": "", "rating": 3}])
def test_bad_feedback_is_400(body: Any) -> None:
    with pytest.raises(HttpError) as bad:
        Feedback.parse(body)
    assert bad.value.status == 400


def test_the_query_needs_a_model_and_a_number() -> None:
    assert parse_query({"model": [NAME], "since": ["12.5"]}) == (NAME, 12.5)
    assert parse_query({"model": [NAME]}) == (NAME, 0.0)
    for bad in ({}, {"model": [NAME], "since": ["yesterday"]}):
        with pytest.raises(HttpError):
            parse_query(bad)


# --- a real server -------------------------------------------------------------------------


@pytest.fixture
def server_url(tmp_path: Path, runtime_models: dict[str, Path]) -> Iterator[str]:
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    model = runtime_models["baseline"]
    digest = file_sha256(model)
    shutil.copyfile(model, store.path_for(digest))
    app = server.App(server.ServeConfig(store=store.root, port=0, admin_token=TOKEN,
                                        n_threads=1))
    stop, urls = threading.Event(), list[str]()
    thread = threading.Thread(target=server.serve_until, args=(app, stop, urls.append),
                              daemon=True)
    thread.start()
    url = wait_for(lambda: urls, what="the server to listen")[0]
    body = {"name": NAME, "version": "2.0.0", "sha256": digest,
            "inference": {"temperature": 0.0, "max_tokens": 4}}
    assert http("POST", f"{url}/admin/models", body, token=TOKEN)[0] == 201
    try:
        yield url
    finally:
        stop.set()
        thread.join(timeout=30)


def _stream_id(url: str) -> str:
    body = json.dumps({"model": NAME, "prompt": "def ", "stream": True}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        events = [line[6:] for line in resp.read().decode().splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    return str(json.loads(events[0])["id"])


def test_requests_and_ratings_through_the_server(server_url: str) -> None:
    status, answer = http("POST", f"{server_url}/v1/completions",
                          {"model": NAME, "prompt": "def "})
    assert status == 200
    streamed = _stream_id(server_url)
    refused = http("POST", f"{server_url}/v1/completions",
                   {"model": NAME, "prompt": "x", "max_tokens": 10**6})
    assert refused[0] == 400
    assert http("GET", f"{server_url}/admin/requests?model={NAME}")[0] == 401
    status, window = http("GET", f"{server_url}/admin/requests?model={NAME}&since=0",
                          token=TOKEN)
    assert status == 200
    rows = window["requests"]
    assert [(r["ok"], r["status"], r["role"], r["version"]) for r in rows] == [
        (True, 200, "primary", "2.0.0"), (True, 200, "primary", "2.0.0"),
        (False, 400, "primary", "2.0.0")]
    assert [r["completion_id"] for r in rows[:2]] == [answer["id"], streamed]
    assert rows[0]["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert rows[0]["prompt_tokens"] == answer["usage"]["prompt_tokens"] > 0
    assert all(r["latency_s"] > 0 for r in rows)
    for cid, rating in ((answer["id"], 2), (streamed, 5)):
        status, reply = http("POST", f"{server_url}/v1/feedback", {"id": cid, "rating": rating})
        assert (status, reply["version"], reply["rating"]) == (200, "2.0.0", rating)
    assert http("POST", f"{server_url}/v1/feedback", {"id": "cmpl-nope", "rating": 3})[0] == 404
    assert http("POST", f"{server_url}/v1/feedback", {"id": answer["id"], "rating": 9})[0] == 400
    m = metrics(server_url)
    labels = f'{{model="{NAME}",version="2.0.0"}}'
    assert m[f"ggufops_feedback_ratings_total{labels}"] == 2
    assert m[f"ggufops_feedback_rating_sum{labels}"] == 7
    later = http("GET", f"{server_url}/admin/requests?model={NAME}&since={rows[2]['ts'] + 1}",
                 token=TOKEN)[1]
    assert later["requests"] == [] and later["ratings"] == []
    ratings = http("GET", f"{server_url}/admin/requests?model={NAME}", token=TOKEN)[1]["ratings"]
    assert [(r["completion_id"], r["rating"]) for r in ratings] == [(answer["id"], 2),
                                                                    (streamed, 5)]
