"""The load request: one record the agent writes and the server reads, without llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ggufops.agent.plan import Target
from ggufops.httpjson import HttpError
from ggufops.serve.loadrequest import LoadRequest

SHA = "ab" * 32


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "llama3-instruct", "version": "2.1.0", "sha256": SHA}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def refusal(data: Any) -> HttpError:
    with pytest.raises(HttpError) as caught:
        LoadRequest.from_json(data)
    assert caught.value.status == 400
    return caught.value


def test_a_primary_round_trips_without_role_or_weight() -> None:
    request = LoadRequest("m", "1.0.0", SHA, "m-v1.0.0-Q4_0", {"n_ctx": 512})
    assert request.to_json() == {"name": "m", "version": "1.0.0", "sha256": SHA,
                                 "display_id": "m-v1.0.0-Q4_0", "inference": {"n_ctx": 512}}
    assert LoadRequest.from_json(request.to_json()) == request
    assert request.key == "m"


@pytest.mark.parametrize("role", ["canary", "shadow"])
def test_a_canary_or_shadow_round_trips_with_its_weight(role: str) -> None:
    request = LoadRequest("m", "1.1.0", SHA, "m-v1.1.0", role=role, weight=25)
    again = LoadRequest.from_json(request.to_json())
    assert (again, again.weight, again.key) == (request, 25, f"m/{role}")


def test_defaults_fill_a_minimal_body() -> None:
    request = LoadRequest.from_json(body())
    assert (request.display_id, request.inference, request.role, request.weight) == \
        ("llama3-instruct-v2.1.0", {}, "primary", 0)


@pytest.mark.parametrize(("data", "words"), [
    ([], "must be a JSON object"),
    (body(name="Bad Name"), "name: 'Bad Name' is not a model name"),
    (body(version="2.1"), "version: '2.1' is not a semantic version"),
    (body(sha256="AB" * 32), "is not 64 lower-case hex digits"),
    (body(inference=[1]), "display_id must be a string and inference an object"),
    (body(display_id=7), "display_id must be a string and inference an object"),
    (body(inference={"prompt_template": "llama3"}), "did you mean llama-3?"),
    (body(role="mirror"), "role: 'mirror' is not \"primary\", \"canary\" or \"shadow\""),
    (body(role="canary"), "weight: a canary needs an integer weight 0-100, got None"),
    (body(role="canary", weight=True), "got True"),
    (body(role="canary", weight=101), "got 101"),
])
def test_a_bad_body_is_refused_naming_the_field(data: Any, words: str) -> None:
    assert words in str(refusal(data))


def test_a_bad_template_names_the_inference_param() -> None:
    assert refusal(body(inference={"prompt_template": "nope"})).param == "inference"


def test_the_agents_targets_send_what_the_server_reads() -> None:
    canary = Target("m", "1.1.0", SHA, "", 1, "m-v1.1.0", {"n_ctx": 256}, weight=10)
    primary = Target("m", "1.0.0", "cd" * 32, "", 1, "m-v1.0.0", {}, canary=canary)
    assert LoadRequest.from_json(primary.load_body()) == primary.request()
    sent = LoadRequest.from_json(canary.load_body())
    assert (sent.role, sent.weight, sent.inference) == ("canary", 10, {"n_ctx": 256})
    assert "role" not in primary.load_body()


def test_the_agent_loads_neither_numpy_nor_llama_cpp() -> None:
    code = ("import sys, ggufops.agent.loop, ggufops.serve.loadrequest; "
            "print(sorted(m for m in ('numpy', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"
