"""protocol.py: OpenAI requests in, checked; known-but-unsupported fields refused, never dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ggufops.httpjson import HttpError
from ggufops.llama.llm import TokenLogprob, Trace
from ggufops.serve import protocol

USER = {"role": "user", "content": "hi"}


def chat(**body: Any) -> protocol.OpenAIRequest:
    return protocol.parse("chat.completions", {"messages": [USER], **body})


def refused(endpoint: str, body: Any) -> HttpError:
    with pytest.raises(HttpError) as info:
        protocol.parse(endpoint, body)
    assert info.value.status == 400
    return info.value


def test_text_parts_are_joined_and_developer_is_a_system_message() -> None:
    request = protocol.parse("chat.completions", {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "one"},
                                                    {"type": "text", "text": "two"}]}]})
    assert request.messages == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "one\ntwo", "name": "ann"}]


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_non_text_parts_are_refused_naming_the_limitation(kind: str) -> None:
    part = {"type": kind, kind: {"url": "data:image/png;base64,AAAA"}}
    error = refused("chat.completions", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]})
    assert error.body()["error"] == {
        "message": f"messages[0].content[1]: {kind} parts are not supported: the models "
                   "ggufops serves read text only; send text parts",
        "type": "invalid_request_error", "param": "messages", "code": "unsupported_content"}


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"), ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("audio", {"voice": "alloy"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}), ("reasoning_effort", "low"),
    ("logit_bias", {"50": 10}), ("store", True), ("web_search_options", {})])
def test_known_but_unsupported_chat_fields_are_refused(field: str, value: Any) -> None:
    error = refused("chat.completions", {"messages": [USER], field: value})
    body = error.body()["error"]
    assert body["param"] == field and body["code"] == "unsupported_parameter"
    assert body["message"].startswith(f"{field}: ")


@pytest.mark.parametrize(("field", "value"), [("best_of", 3), ("echo", True),
                                              ("suffix", "end"), ("n", 4)])
def test_known_but_unsupported_completion_fields_are_refused(field: str, value: Any) -> None:
    assert refused("completions", {"prompt": "a", field: value}).param == field


def test_defaults_of_refused_fields_and_unknown_fields_pass() -> None:
    request = chat(n=1, tools=[], tool_choice="none", modalities=["text"], store=False,
                   metadata={"team": "a"}, service_tier="auto", some_future_field={"x": 1})
    assert request.sampling == {} and request.top_logprobs is None


def test_tool_messages_are_refused() -> None:
    error = refused("chat.completions", {"messages": [
        USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]})
    assert "tool" in str(error) and error.code == "unsupported_parameter"


def test_max_completion_tokens_wins_and_must_agree_with_max_tokens() -> None:
    assert chat(max_completion_tokens=7).sampling == {"max_tokens": 7}
    assert chat(max_tokens=9).sampling == {"max_tokens": 9}
    assert chat(max_tokens=5, max_completion_tokens=5).sampling == {"max_tokens": 5}
    assert refused("chat.completions", {"messages": [USER], "max_tokens": 4,
                                        "max_completion_tokens": 5}).param == "max_tokens"
    assert refused("chat.completions", {"messages": [USER],
                                        "max_completion_tokens": 0}).param \
        == "max_completion_tokens"


def test_sampling_settings_are_checked_and_seeds_fit_llama_cpp() -> None:
    request = chat(temperature=0.5, top_p=0.9, seed=-1, stop="END", presence_penalty=1)
    assert request.sampling == {"temperature": 0.5, "top_p": 0.9, "seed": 0xFFFFFFFF,
                                "stop": ["END"], "presence_penalty": 1.0}
    assert chat(stop=["a", "", "b"]).sampling == {"stop": ["a", "b"]}
    for field, value in [("temperature", 3), ("temperature", "hot"), ("top_p", 1.5),
                         ("seed", 1.5), ("stop", [1]), ("stop", ["x"] * 17)]:
        assert refused("chat.completions", {"messages": [USER], field: value}).param == field


def test_response_formats() -> None:
    assert chat().response_format == protocol.ResponseFormat("text")
    assert chat(response_format={"type": "json_object"}).response_format.kind == "json_object"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    fmt = chat(response_format={"type": "json_schema",
                                "json_schema": {"name": "r", "schema": schema}}).response_format
    assert fmt.kind == "json_schema" and json.loads(fmt.schema or "") == schema
    for bad in [{"type": "xml"}, {"type": "json_schema"}, "json"]:
        assert refused("chat.completions", {"messages": [USER],
                                            "response_format": bad}).param == "response_format"


def test_logprobs_flags() -> None:
    assert chat(logprobs=True).top_logprobs == 0
    assert chat(logprobs=True, top_logprobs=5).top_logprobs == 5
    assert refused("chat.completions", {"messages": [USER], "top_logprobs": 2}).param \
        == "top_logprobs"
    assert refused("chat.completions", {"messages": [USER], "logprobs": True,
                                        "top_logprobs": 21}).param == "top_logprobs"
    assert protocol.parse("completions", {"prompt": "a", "logprobs": 3}).top_logprobs == 3
    assert refused("completions", {"prompt": "a", "logprobs": 6}).param == "logprobs"


def test_stream_options_need_stream() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True).include_usage
    assert refused("chat.completions", {"messages": [USER], "stream_options":
                                        {"include_usage": True}}).param == "stream_options"


@pytest.mark.parametrize("body", [[], {"messages": []}, {"messages": [{"role": "robot",
                                                                        "content": "x"}]},
                                  {"messages": [{"role": "user", "content": 5}]},
                                  {"messages": [{"role": "user", "content": [{"type": "x"}]}]}])
def test_malformed_chat_requests(body: Any) -> None:
    refused("chat.completions", body)


def test_prompts() -> None:
    assert protocol.parse("completions", {"prompt": ["one"]}).prompt == "one"
    assert protocol.parse("completions", {}).prompt == ""
    assert refused("completions", {"prompt": ["a", "b"]}).param == "prompt"
    assert refused("completions", {"prompt": [1, 2]}).param == "prompt"


TEXT = {1: b"He", 2: b"llo", 3: b"!"}


def test_logprobs_in_openai_shapes() -> None:
    entries = [TokenLogprob(1, -0.1, [(1, -0.1), (3, -2.5)]), TokenLogprob(2, -0.2, [])]
    as_chat = protocol.chat_logprobs(entries, TEXT.__getitem__)
    assert as_chat["content"][0] == {
        "token": "He", "logprob": -0.1, "bytes": [72, 101],
        "top_logprobs": [{"token": "He", "logprob": -0.1, "bytes": [72, 101]},
                         {"token": "!", "logprob": -2.5, "bytes": [33]}]}
    legacy = protocol.completion_logprobs(entries, TEXT.__getitem__)
    assert legacy == {"tokens": ["He", "llo"], "token_logprobs": [-0.1, -0.2],
                      "top_logprobs": [{"He": -0.1, "!": -2.5}, {}], "text_offset": [0, 2]}


def test_a_stream_gets_usage_null_then_a_final_usage_chunk() -> None:
    request = chat(stream=True, stream_options={"include_usage": True})
    trace = Trace(prompt_tokens=5, sampled=[1, 2, 9], ended_by_eog=True)
    chunks = [{"id": "c1", "created": 7, "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"content": "Hello"}}]}]
    stream = protocol.ChunkStream(request, "m-v1.0.0-q4_1", trace, TEXT.__getitem__)
    out = list(stream.chunks(iter(chunks)))
    assert out[0]["usage"] is None and out[0]["model"] == "m-v1.0.0-q4_1"
    assert out[-1] == {"id": "c1", "object": "chat.completion.chunk", "created": 7,
                       "model": "m-v1.0.0-q4_1", "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                 "total_tokens": 7}}
