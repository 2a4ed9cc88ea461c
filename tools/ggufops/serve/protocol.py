"""The OpenAI API as `ggufops serve` speaks it: requests in, responses out; no HTTP here.

`parse(endpoint, body)` turns the JSON of a /v1/completions or /v1/chat/completions
request into an `OpenAIRequest`, or raises HttpError 400 in OpenAI's envelope
({"error": {"message", "type", "param", "code"}}) naming the field. Unknown fields are
ignored, as OpenAI does; fields ggufops knows but cannot honour are refused, never dropped
(`REFUSED`). The response side adds what llama-cpp-python leaves out: the version's display
id as `model`, exact `usage` (streamed too, with `stream_options.include_usage`), and
`logprobs` in OpenAI's shapes, from the tokens the generation actually sampled.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ggufops.httpjson import HttpError
from ggufops.llama.llm import TokenLogprob, Trace

ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat.completions"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_TOP_LOGPROBS = 20  # chat; /v1/completions allows 0-5, as OpenAI does
MAX_STOP = 16

# llama.cpp sampling settings a request may set: OpenAI's, and llama.cpp's own extras.
_FLOATS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0),
           "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
           "repeat_penalty": (0.0, 10.0)}
_INTS = {"top_k": (0, 1 << 20), "seed": (-(1 << 63), (1 << 64) - 1)}


def _not(default: Any) -> Callable[[Any], bool]:
    return lambda value: value is not None and value != default


# field -> (is it set to something ggufops cannot do?, why it is refused)
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_not(1), "only n=1 is supported: send one request per answer"),
    "best_of": (_not(1), "best_of is not supported (only 1)"),
    "tools": (bool, "tools (function calling) are not supported by ggufops "
              "serve; describe the task in the messages instead"),
    "functions": (bool, "functions (function calling) are not supported"),
    "tool_choice": (_not("none"), "tool_choice is not supported (no tools); only \"none\""),
    "function_call": (_not("none"), "function_call is not supported (no functions)"),
    "audio": (lambda v: v is not None, "audio output is not supported: text only"),
    "modalities": (lambda v: v is not None and v != ["text"],
                   "only the \"text\" modality is supported"),
    "prediction": (lambda v: v is not None, "predicted outputs are not supported"),
    "reasoning_effort": (lambda v: v is not None, "reasoning_effort is not supported"),
    "web_search_options": (lambda v: v is not None, "web search is not supported"),
    "suffix": (bool, "suffix (insertion) is not supported"),
    "echo": (bool, "echo is not supported"),
    "store": (bool, "store=true is not supported: nothing is stored"),
    "logit_bias": (bool, "logit_bias is not supported"),
}


@dataclass(frozen=True)
class ResponseFormat:
    """response_format: plain text, any JSON object, or JSON matching a schema."""

    kind: str  # "text" | "json_object" | "json_schema"
    schema: str | None = None  # the schema as JSON text (json_schema only)


@dataclass(frozen=True)
class OpenAIRequest:
    """One completion or chat request, checked, in llama-cpp-python's terms."""

    endpoint: str  # "completions" | "chat.completions"
    model: str | None
    user: str | None
    stream: bool
    include_usage: bool
    sampling: dict[str, Any]  # over the version's defaults: temperature, max_tokens, stop...
    prompt: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    response_format: ResponseFormat = ResponseFormat("text")
    top_logprobs: int | None = None  # alternatives per token; None: no logprobs

    @property
    def is_chat(self) -> bool:
        return self.endpoint == "chat.completions"


def error(message: str, param: str | None, code: str | None = None) -> HttpError:
    return HttpError(400, message, "invalid_request_error", param=param, code=code)


# --- requests ---------------------------------------------------------------------------


def parse(endpoint: str, body: Any) -> OpenAIRequest:
    """An OpenAIRequest from a request body; HttpError 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise error("the request body must be a JSON object", None)
    _refuse_unsupported(body)
    chat = endpoint == "chat.completions"
    stream = _flag(body, "stream")
    return OpenAIRequest(
        endpoint=endpoint, model=_optional_str(body, "model"), user=_optional_str(body, "user"),
        stream=stream, include_usage=_include_usage(body, stream), sampling=_sampling(body, chat),
        prompt=None if chat else _prompt(body), messages=_messages(body) if chat else [],
        response_format=_response_format(body) if chat else ResponseFormat("text"),
        top_logprobs=_chat_logprobs(body) if chat else _completion_logprobs(body),
    )  # fmt: skip


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, (refused, why) in REFUSED.items():
        if refused(body.get(key)):
            raise error(f"{key}: {why}", key, "unsupported_parameter")


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise error(f"{key}: expected true or false, got {value!r}", key)
    return bool(value)


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise error(f"{key}: expected a string, got {value!r}", key)
    return value or None


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise error("stream_options: only allowed when stream is true", "stream_options")
    if not isinstance(options, dict):
        raise error("stream_options: expected an object", "stream_options")
    return _flag(options, "include_usage")


def _number(body: dict[str, Any], key: str, bounds: tuple[float, float], kind: type) -> Any:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            kind is int and value != int(value)):
        raise error(f"{key}: expected {'an integer' if kind is int else 'a number'}, "
                    f"got {value!r}", key)
    lo, hi = bounds
    if not lo <= value <= hi:
        raise error(f"{key}: {value!r} is outside {lo:g}..{hi:g}", key)
    return kind(value)


def _sampling(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, bounds in _FLOATS.items():
        if body.get(key) is not None:
            params[key] = _number(body, key, bounds, float)
    for key, ibounds in _INTS.items():
        if body.get(key) is not None:
            params[key] = _number(body, key, ibounds, int)
    max_tokens = _max_tokens(body, chat)
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    stop = _stop(body)
    if stop:
        params["stop"] = stop
    if "seed" in params:
        params["seed"] &= 0xFFFFFFFF  # llama.cpp's seeds are 32-bit; OpenAI's are 64
    return params


def _max_tokens(body: dict[str, Any], chat: bool) -> int | None:
    """max_completion_tokens (chat; wins) or max_tokens; the context bounds it later."""
    keys = ["max_completion_tokens", "max_tokens"] if chat else ["max_tokens"]
    given = {k: _number(body, k, (1, 1 << 31), int) for k in keys if body.get(k) is not None}
    if len(set(given.values())) > 1:
        raise error("max_tokens and max_completion_tokens disagree; send only "
                    "max_completion_tokens", "max_tokens")
    return next(iter(given.values()), None)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise error("stop: expected a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise error(f"stop: at most {MAX_STOP} sequences", "stop")
    return [s for s in stops if s]


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise error("prompt: expected a string (or a list of one string); token arrays and "
                    "several prompts are not supported", "prompt")
    return prompt


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise error("messages: expected a non-empty list of {role, content} objects",
                    "messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message: Any, index: int) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise error(f"{where}: expected an object with role and content", "messages")
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise error(f"{where}: tool and function messages are not supported (no tools)",
                    "messages", "unsupported_parameter")
    if role not in ROLES:
        raise error(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}", "messages")
    out = {"role": ROLES[role], "content": _content(message.get("content"), where)}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a list joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise error(f"{where}.content: expected a string or a non-empty list of parts",
                    "messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            texts.append(part[kind])
        elif kind in ("image_url", "input_image", "input_audio", "file"):
            raise error(f"{where}.content[{j}]: {kind} parts are not supported: the models "
                        "ggufops serves read text only; send text parts",
                        "messages", "unsupported_content")
        else:
            raise error(f"{where}.content[{j}]: expected a part {{\"type\": \"text\", "
                        "\"text\": ...}", "messages")
    return "\n".join(texts)


def _response_format(body: dict[str, Any]) -> ResponseFormat:
    spec = body.get("response_format")
    if spec is None:
        return ResponseFormat("text")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise error(f"response_format.type: {kind!r} is not text, json_object or json_schema",
                    "response_format")
    inner = spec.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else None
    if not isinstance(schema, dict):
        raise error("response_format.json_schema.schema: expected a JSON schema object",
                    "response_format")
    return ResponseFormat("json_schema", json.dumps(schema, sort_keys=True))


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = _flag(body, "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if wanted else None
    count = _number(body, "top_logprobs", (0, MAX_TOP_LOGPROBS), int)
    if not wanted:
        raise error("top_logprobs: needs logprobs: true", "top_logprobs")
    return int(count)


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    if body.get("logprobs") is None:
        return None
    return int(_number(body, "logprobs", (0, 5), int))


# --- responses ---------------------------------------------------------------------------


def usage(trace: Trace) -> dict[str, int]:
    prompt, completion = trace.prompt_tokens, trace.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


TokenText = Callable[[int], bytes]


def chat_logprobs(entries: list[TokenLogprob], text_of: TokenText) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = text_of(token)
        return {"token": raw.decode(errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**one(e.token, e.logprob),
                         "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries],
            "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], text_of: TokenText,
                        offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs`: tokens, token_logprobs, top_logprobs, offsets."""
    tokens = [text_of(e.token).decode(errors="replace") for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text_of(t).decode(errors="replace"): lp for t, lp in e.top}
                             for e in entries], "text_offset": offsets}


def finish_response(request: OpenAIRequest, result: dict[str, Any], display_id: str,
                    trace: Trace, text_of: TokenText) -> dict[str, Any]:
    """A whole (not streamed) answer from llama-cpp-python, completed for OpenAI clients."""
    result["model"] = display_id
    result["usage"] = usage(trace)
    choice = result["choices"][0]
    if request.top_logprobs is None:
        choice["logprobs"] = None
    elif request.is_chat:
        choice["logprobs"] = chat_logprobs(trace.logprobs, text_of)
    else:
        choice["logprobs"] = completion_logprobs(trace.logprobs, text_of)
    return result


class ChunkStream:
    """Completes llama-cpp-python's streamed chunks for OpenAI clients: the display id,
    logprobs of the tokens each chunk carries, `usage: null` on every chunk and a final
    usage chunk (choices: []) when include_usage is set."""

    def __init__(self, request: OpenAIRequest, display_id: str, trace: Trace,
                 text_of: TokenText) -> None:
        self.request = request
        self.display_id = display_id
        self.trace = trace
        self.text_of = text_of
        self._logprobs_sent = 0
        self._id = ""
        self._created = int(time.time())
        self.content_chunks = 0

    @property
    def completion_id(self) -> str:
        """The id every chunk carried (empty before the first)."""
        return self._id

    def chunks(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for chunk in source:
            yield self._complete(chunk)
        if self.request.include_usage:
            yield self.usage_chunk()

    def _complete(self, chunk: dict[str, Any]) -> dict[str, Any]:
        chunk["model"] = self.display_id
        self._id = self._id or str(chunk.get("id") or "")
        self._created = int(chunk.get("created") or self._created)
        if self.request.include_usage:
            chunk["usage"] = None
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content"):
                self.content_chunks += 1
            choice["logprobs"] = self._new_logprobs()
        return chunk

    def _new_logprobs(self) -> dict[str, Any] | None:
        if self.request.top_logprobs is None:
            return None
        entries = self.trace.logprobs[self._logprobs_sent:]
        self._logprobs_sent += len(entries)
        if not entries and self.request.is_chat:
            return None
        if self.request.is_chat:
            return chat_logprobs(entries, self.text_of)
        return completion_logprobs(entries, self.text_of)

    def usage_chunk(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.request.is_chat else "text_completion"
        return {"id": self._id or f"cmpl-{uuid.uuid4().hex}", "object": kind,
                "created": self._created, "model": self.display_id, "choices": [],
                "usage": usage(self.trace)}
