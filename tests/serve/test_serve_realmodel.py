"""A real published model (SmolLM2-135M-Instruct Q4_1) in a real `ggufops serve`, talked to
with the official openai SDK. The server and its two loads of the model are shared by the
module: `smollm2` with the file's own chat template, `smollm2-base` registered with no chat.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import openai
import pytest

from ggufops.artifacts.ggufheader import read_header
from ggufops.artifacts.store import ArtifactStore
from ggufops.hashing import file_sha256
from testing.runtime import TOKEN, Proc, free_port, http, serve_args

pytestmark = pytest.mark.slow

DISPLAY = "smollm2-v1.0.0-q4_1"
ASK: list[Any] = [{"role": "user", "content": "Say hello in one short sentence."}]


def _into_store(model: Path, store: ArtifactStore) -> str:
    digest = file_sha256(model)
    target = store.path_for(digest)
    try:
        os.link(model, target)
    except OSError:
        shutil.copyfile(model, target)
    return digest


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("smollm2")
    store = ArtifactStore(tmp / "store")
    store.prepare()
    digest = _into_store(smollm2, store)
    (tmp / "token").write_text(TOKEN)
    proc = Proc([*serve_args(store.root, tmp / "token", port=free_port()), "--ctx", "2048"],
                tmp / "serve.log")
    try:
        for name, inference in (("smollm2", {}), ("smollm2-base", {"prompt_template": "none"})):
            body = {"name": name, "version": "1.0.0", "sha256": digest,
                    "display_id": f"{name}-v1.0.0-q4_1",
                    "inference": {"temperature": 0.0, **inference}}
            status, reply = http("POST", f"{proc.url}/admin/models", body, token=TOKEN,
                                 timeout=300)
            assert status == 201, reply
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=300)


def test_the_chat_template_is_the_files_own(server: Proc, client: openai.OpenAI,
                                            smollm2: Path) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert models["smollm2"].model_extra is not None
    assert models["smollm2"].model_extra["chat_template"] == "gguf"
    assert models["smollm2-base"].model_extra["chat_template"] == "none"  # type: ignore[index]
    # the file's template rendered by hand, sent as a raw completion: the same prompt tokens
    # and the same most likely next tokens as the chat request
    import gguf

    template = gguf.GGUFReader(smollm2).get_field("tokenizer.chat_template").contents()
    assert read_header(smollm2).chat_template_sha256 is not None
    prompt = jinja2.Environment(autoescape=False).from_string(template).render(
        messages=ASK, add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in prompt  # the file's default system
    chat = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=1,
                                          logprobs=True, top_logprobs=5)
    raw = client.completions.create(model="smollm2", prompt=prompt, max_tokens=1, logprobs=5)
    assert chat.usage is not None and raw.usage is not None
    assert chat.usage.prompt_tokens == raw.usage.prompt_tokens
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
    assert raw.choices[0].logprobs is not None and raw.choices[0].logprobs.top_logprobs
    assert {t.token for t in chat.choices[0].logprobs.content[0].top_logprobs} == set(
        raw.choices[0].logprobs.top_logprobs[0])
    chatml = "<|im_start|>user\nSay hello in one short sentence.<|im_end|>\n" \
        "<|im_start|>assistant\n"  # what chatml would have sent: no system prompt
    plain = client.completions.create(model="smollm2", prompt=chatml, max_tokens=1)
    assert plain.usage is not None and plain.usage.prompt_tokens < chat.usage.prompt_tokens


def test_an_instruct_answer_stops_at_its_end_of_turn(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=200)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and 0 < answer.usage.completion_tokens < 200
    assert "<|im_end|>" not in (answer.choices[0].message.content or "")


def test_content_parts(client: openai.OpenAI) -> None:
    parts = client.chat.completions.create(model="smollm2", max_tokens=24, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Say hello."},
                                     {"type": "text", "text": "In one short sentence."}]}])
    text = client.chat.completions.create(model="smollm2", max_tokens=24, messages=[
        {"role": "user", "content": "Say hello.\nIn one short sentence."}])
    assert parts.choices[0].message.content == text.choices[0].message.content
    assert parts.model == DISPLAY


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=40)
    chunks = list(client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=40,
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage == whole.usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == whole.choices[0].finish_reason


def test_a_json_object_answer_parses(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="smollm2", max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply with a JSON object whose key "
                                              "\"greeting\" holds a short greeting."}])
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_a_json_schema_answer_matches_the_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 20}},
              "required": ["greeting"], "additionalProperties": False}
    answer = client.chat.completions.create(
        model="smollm2", max_tokens=60, messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    parsed = json.loads(answer.choices[0].message.content or "")
    assert list(parsed) == ["greeting"] and isinstance(parsed["greeting"], str)


@pytest.mark.parametrize("limit", [1, 5])
def test_max_completion_tokens_is_obeyed(client: openai.OpenAI, limit: int) -> None:
    answer = client.chat.completions.create(model="smollm2", messages=ASK,
                                            max_completion_tokens=limit)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == limit


def test_a_version_without_chat_refuses_chat_and_still_completes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2-base", messages=ASK)
    assert info.value.code == "model_has_no_chat_template"
    assert info.value.body["message"].startswith(  # type: ignore[index]
        "smollm2-base-v1.0.0-q4_1 has no chat template (its version says prompt_template: "
        "none), so it cannot answer chat requests")
    text = client.completions.create(model="smollm2-base", prompt="The capital of France is",
                                     max_tokens=4)
    assert text.usage is not None and text.usage.completion_tokens == 4
