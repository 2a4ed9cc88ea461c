"""`ggufops serve`: an OpenAI-compatible HTTP server over llama.cpp that swaps models
without failing a request.

Routes
  GET    /v1/models, /v1/models/{id}       model info: name, version, display id, sha256,
                                           load time, canary (the "model info endpoint")
  POST   /v1/completions, /v1/chat/completions   ("stream": true answers as server-sent events)
  GET    /healthz (process up), /readyz (a model is loaded), /metrics (Prometheus)
  GET    /admin/models                      state: active, draining, loading, last errors
  POST   /admin/models                      load {name, version, sha256, display_id?, inference?,
                                           role? ("primary" | "canary"), weight? (canary 0-100)}
  DELETE /admin/models/{name}               unload a model (and its canary)
  DELETE /admin/models/{name}/canary        unload its canary
  (every /admin route needs `Authorization: Bearer <token>`)

Swaps without failed requests are modeltable.py's job; this module holds the routes,
the OpenAI request handling and the HTTP plumbing.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ggufops import llm
from ggufops.errors import (
    ArtifactNotInStore,
    BadGguf,
    ChecksumMismatch,
    GgufopsError,
    LlamaError,
    ModelLoadFailed,
    ServeError,
    SmokeTestFailed,
)
from ggufops.httpjson import HttpError, JsonHandler, QuietServer, read_json_body
from ggufops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ggufops.metrics import Metrics
from ggufops.modeltable import LoadedModel, Loader, LoadRequest, ModelTable

log = logging.getLogger("ggufops.serve")

DEFAULT_PORT = 8080
_FLOAT_PARAMS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repeat_penalty")
_INT_PARAMS = ("max_tokens", "top_k", "seed")


def http_error_for(error: GgufopsError) -> HttpError:
    """The HTTP status of an expected failure while loading or generating."""
    if isinstance(error, ArtifactNotInStore):
        return HttpError(404, str(error), "not_found_error")
    if isinstance(error, ChecksumMismatch | ModelLoadFailed | SmokeTestFailed | BadGguf):
        return HttpError(422, str(error), "model_load_error")
    if isinstance(error, LlamaError):
        return HttpError(400, str(error), "invalid_request_error")
    return HttpError(500, str(error), "server_error")


# --- configuration and requests ---------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    store: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    admin_token: str | None = None
    n_threads: int | None = None
    n_ctx: int = 4096
    smoke_tokens: int = 4


def read_token(path: Path) -> str:
    """The admin token in `path` (surrounding whitespace removed); ServeError if unusable."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ServeError(f"cannot read the admin token file {path}: {e.strerror}; "
                         "create it (e.g. `openssl rand -hex 32 > FILE`)") from None
    if len(token) < 16:
        raise ServeError(f"the admin token in {path} is shorter than 16 characters; "
                         "write a longer random token (e.g. `openssl rand -hex 32`)")
    return token


# --- generation -----------------------------------------------------------------------------


class Writer(Protocol):
    """How a route answers: one JSON reply, or a stream of server-sent events."""

    def send_json(self, status: int, body: Any) -> None: ...

    def start_events(self) -> None: ...

    def send_event(self, data: str) -> None: ...


def _number(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HttpError(400, f"{key}: expected a number, got {value!r}")
    if kind is int and value != int(value):
        raise HttpError(400, f"{key}: expected an integer, got {value!r}")
    return kind(value)


def generation_params(body: dict[str, Any], loaded: LoadedModel) -> dict[str, Any]:
    """llama-cpp-python keyword arguments from an OpenAI request, over the version's defaults."""
    params = loaded.defaults()
    for key in _FLOAT_PARAMS:
        if body.get(key) is not None:
            params[key] = _number(body, key, float)
    for key in _INT_PARAMS:
        if body.get(key) is not None:
            params[key] = _number(body, key, int)
    stop = body.get("stop")
    if stop is not None:
        if not isinstance(stop, str | list) or (isinstance(stop, list) and not all(
                isinstance(s, str) for s in stop)):
            raise HttpError(400, "stop: expected a string or a list of strings")
        params["stop"] = stop
    if not 0 < params["max_tokens"] <= loaded.model.n_ctx:
        raise HttpError(400, f"max_tokens: must be 1..{loaded.model.n_ctx} (the context size)")
    if body.get("n", 1) != 1:
        raise HttpError(400, "n: only n=1 is supported")
    return params


def prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(400, "prompt: expected a string (or a list of one string)")
    return prompt


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str)
        and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise HttpError(400, "messages: expected a non-empty list of {role, content} objects")
    assert isinstance(messages, list)
    return messages


ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat.completions"}


class Generator:
    """Runs completions on the table's models and records their metrics."""

    def __init__(self, table: ModelTable, metrics: Metrics) -> None:
        self.table = table
        self.metrics = metrics

    def handle(self, out: Writer, endpoint: str, body: dict[str, Any]) -> None:
        start = time.perf_counter()
        labels = ("", "")
        code = 200
        try:
            with self.table.use(_model_id(body), _user(body)) as loaded:
                labels = loaded.labels
                self.metrics.inc("ggufops_in_flight_requests", labels)
                try:
                    self._run(out, endpoint, body, loaded)
                finally:
                    self.metrics.inc("ggufops_in_flight_requests", labels, -1)
        except HttpError as e:
            code = e.status
            out.send_json(e.status, e.body())
        except GgufopsError as e:
            err = http_error_for(e)
            code = err.status
            out.send_json(err.status, err.body())
        finally:
            self._record(labels, endpoint, code, time.perf_counter() - start)

    def _record(self, labels: tuple[str, str], endpoint: str, code: int, seconds: float) -> None:
        self.metrics.inc("ggufops_requests_total", (*labels, endpoint, str(code)))
        if code >= 400:
            self.metrics.inc("ggufops_request_errors_total", (*labels, endpoint))
        self.metrics.observe("ggufops_request_duration_seconds", (*labels, endpoint), seconds)

    def _run(self, out: Writer, endpoint: str, body: dict[str, Any], loaded: LoadedModel) -> None:
        params = generation_params(body, loaded)
        stream = bool(body.get("stream"))
        queued = time.perf_counter()
        with loaded.lock:
            self.metrics.observe("ggufops_queue_wait_seconds", loaded.labels,
                                 time.perf_counter() - queued)
            if endpoint == "completions":
                result = llm.complete(loaded.model, prompt_of(body), params, stream=stream)
            else:
                result = llm.chat(loaded.model, messages_of(body), params, stream=stream)
            if isinstance(result, dict):
                self._reply(out, loaded, result)
            else:
                self._stream(out, loaded, result)
            loaded.served += 1

    def _reply(self, out: Writer, loaded: LoadedModel, result: dict[str, Any]) -> None:
        result["model"] = loaded.request.display_id
        usage = result.get("usage") or {}
        self._count_tokens(loaded, usage.get("prompt_tokens", 0),
                           usage.get("completion_tokens", 0))
        out.send_json(200, result)

    def _stream(self, out: Writer, loaded: LoadedModel, chunks: Iterator[dict[str, Any]]) -> None:
        first = next(chunks, None)  # errors before the first chunk are still a JSON reply
        out.start_events()
        count = 0
        try:
            if first is not None:
                count += self._event(out, loaded, first)
            for chunk in chunks:
                count += self._event(out, loaded, chunk)
        except GgufopsError as e:
            out.send_event(json.dumps(http_error_for(e).body()))
        finally:
            out.send_event("[DONE]")
            self._count_tokens(loaded, 0, count)

    @staticmethod
    def _event(out: Writer, loaded: LoadedModel, chunk: dict[str, Any]) -> int:
        chunk["model"] = loaded.request.display_id
        out.send_event(json.dumps(chunk))
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        return 1 if choice.get("text") or delta.get("content") else 0

    def _count_tokens(self, loaded: LoadedModel, prompt: int, completion: int) -> None:
        self.metrics.inc("ggufops_tokens_total", (*loaded.labels, "prompt"), prompt)
        self.metrics.inc("ggufops_tokens_total", (*loaded.labels, "completion"), completion)


def _model_id(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise HttpError(400, "model: expected a string")
    return model or None


def _user(body: dict[str, Any]) -> str | None:
    """OpenAI's `user`: keeps a user on the same side of a canary split."""
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise HttpError(400, "user: expected a string")
    return user or None


# --- the application ------------------------------------------------------------------------


def server_metrics() -> Metrics:
    m = Metrics()
    m.counter("ggufops_requests_total", "Inference requests by model version, endpoint and "
              "HTTP status.", ("model", "version", "endpoint", "code"))
    m.counter("ggufops_request_errors_total", "Inference requests answered with an error.",
              ("model", "version", "endpoint"))
    m.histogram("ggufops_request_duration_seconds", "Inference request latency, queueing "
                "included.", ("model", "version", "endpoint"))
    m.histogram("ggufops_queue_wait_seconds", "Time a request waited for its model's lock.",
                ("model", "version"))
    m.counter("ggufops_tokens_total", "Prompt and completion tokens.",
              ("model", "version", "kind"))
    m.gauge("ggufops_in_flight_requests", "Requests holding a model.", ("model", "version"))
    m.counter("ggufops_model_loads_total", "Model loads through the admin API.",
              ("model", "outcome"))
    m.gauge("ggufops_model_load_seconds", "Load + smoke test time of the active version.",
            ("model", "version"))
    m.gauge("ggufops_model_info", "The active version of each model (value 1).",
            ("model", "version", "display_id", "sha256"))
    m.gauge("ggufops_canary_weight", "Percent of a model's requests sent to its canary.",
            ("model", "version", "display_id", "sha256"))
    m.gauge("ggufops_models_draining", "Replaced models still finishing requests.")
    return m


class App:
    """Routes of `ggufops serve`, independent of the HTTP plumbing."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = server_metrics()
        self.table = ModelTable(self._free)
        self.loader = Loader(config.store, self.table, self.metrics, n_ctx=config.n_ctx,
                             n_threads=config.n_threads, smoke_tokens=config.smoke_tokens)
        self.generator = Generator(self.table, self.metrics)
        self.started_at = time.time()

    def _free(self, loaded: LoadedModel) -> None:
        loaded.close()
        log.info("freed %s", loaded.request.display_id)

    # public reads

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._info(m) for m in self.table.active()]}

    def _info(self, loaded: LoadedModel) -> dict[str, Any]:
        """The /v1/models entry of a primary; with `canary` when one is loaded."""
        info = loaded.info()
        canary = self.table.canaries().get(loaded.request.name)
        if canary is not None:
            info["canary"] = canary[0].canary_info(canary[1])
        return info

    def model(self, model_id: str) -> dict[str, Any]:
        for loaded in self.table.active():
            if loaded.matches(model_id):
                return self._info(loaded)
        raise HttpError(404, f"model {model_id!r} is not served", "not_found_error")

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": len(self.table.active()),
                "uptime_seconds": round(time.time() - self.started_at, 3)}

    def render_metrics(self) -> str:
        self.metrics.clear("ggufops_model_info")
        self.metrics.clear("ggufops_model_load_seconds")
        self.metrics.clear("ggufops_canary_weight")
        for m in self.table.active():
            r = m.request
            self.metrics.set("ggufops_model_info", (r.name, r.version, r.display_id, r.sha256), 1)
            self.metrics.set("ggufops_model_load_seconds", m.labels, m.load_seconds)
        for c, weight in self.table.canaries().values():
            r = c.request
            self.metrics.set("ggufops_canary_weight", (r.name, r.version, r.display_id, r.sha256),
                             weight)
            self.metrics.set("ggufops_model_load_seconds", c.labels, c.load_seconds)
        self.metrics.set("ggufops_models_draining", (), len(self.table.draining()))
        return self.metrics.render()

    # admin

    def authorize(self, header: str | None) -> None:
        token = self.config.admin_token
        if token is None:
            raise HttpError(403, "the admin API is disabled; start `ggufops serve` with "
                            "--admin-token-file", "permission_error")
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                  token.encode()):
            raise HttpError(401, "missing or wrong admin token; send "
                            "`Authorization: Bearer <token>`", "authentication_error")

    def admin_state(self) -> dict[str, Any]:
        loading, errors = self.loader.state()
        canaries = self.table.canaries()
        return {
            "models": [{**m.info(), "in_flight": m.refs, "requests_served": m.served}
                       for m in self.table.active()],
            "canaries": [{**c.info(), "weight": weight, "in_flight": c.refs,
                          "requests_served": c.served} for c, weight in canaries.values()],
            "draining": [{**m.info(), "in_flight": m.refs} for m in self.table.draining()],
            "loading": loading,
            "last_errors": errors,
        }

    def admin_load(self, body: Any) -> tuple[int, dict[str, Any]]:
        request = LoadRequest.parse(body)
        try:
            loaded, changed = self.loader.load(request)
        except GgufopsError as e:
            raise http_error_for(e) from None
        info = {**loaded.info(), "role": request.role}
        if request.role == "canary":
            info["weight"] = request.weight
        return (201 if changed else 200), {"loaded": changed, "model": info}

    def admin_unload(self, path: str) -> dict[str, Any]:
        """DELETE /admin/models/{name} (with its canary) or /admin/models/{name}/canary."""
        name, _, rest = path.partition("/")
        if rest not in ("", "canary"):
            raise HttpError(404, f"no route DELETE /admin/models/{path}", "not_found_error")
        old = self.table.remove_canary(name) if rest else self.table.remove(name)
        if old is None:
            what = "has no canary" if rest else "is not served"
            raise HttpError(404, f"model {name!r} {what}", "not_found_error")
        return {"unloaded": old.info()}

    def close(self) -> None:
        self.table.close_all()


# --- HTTP plumbing --------------------------------------------------------------------------


class ServeHandler(JsonHandler):
    app: App

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def do_DELETE(self) -> None:
        self._guarded(self._delete)

    def _guarded(self, route: Callable[[str], None]) -> None:
        try:
            route(self.path_only())
        except HttpError as e:
            self.send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: answer 500, keep serving
            log.exception("unexpected error on %s %s", self.command, self.path)
            self.send_json(500, HttpError(500, f"{type(e).__name__}: {e}", "server_error").body())

    def _get(self, path: str) -> None:
        app = self.app
        if path == "/v1/models":
            self.send_json(200, app.models())
        elif path.startswith("/v1/models/"):
            self.send_json(200, app.model(path[len("/v1/models/"):]))
        elif path == "/healthz":
            self.send_json(200, app.health())
        elif path == "/readyz":
            ready = bool(app.table.active())
            self.send_json(200 if ready else 503, {"ready": ready})
        elif path == "/metrics":
            self.send_bytes(200, app.render_metrics().encode(), METRICS_CONTENT_TYPE)
        elif path == "/admin/models":
            app.authorize(self.headers.get("Authorization"))
            self.send_json(200, app.admin_state())
        else:
            raise HttpError(404, f"no route GET {path}", "not_found_error")

    def _post(self, path: str) -> None:
        body = read_json_body(self)
        if path in ENDPOINTS:
            if not isinstance(body, dict):
                raise HttpError(400, "the body must be a JSON object")
            self.app.generator.handle(self, ENDPOINTS[path], body)
        elif path == "/admin/models":
            self.app.authorize(self.headers.get("Authorization"))
            status, reply = self.app.admin_load(body)
            self.send_json(status, reply)
        else:
            raise HttpError(404, f"no route POST {path}", "not_found_error")

    def _delete(self, path: str) -> None:
        read_json_body(self)
        if not path.startswith("/admin/models/"):
            raise HttpError(404, f"no route DELETE {path}", "not_found_error")
        self.app.authorize(self.headers.get("Authorization"))
        self.send_json(200, self.app.admin_unload(path[len("/admin/models/"):]))


def make_server(app: App) -> QuietServer:
    handler = type("BoundServeHandler", (ServeHandler,), {"app": app})
    try:
        return QuietServer((app.config.host, app.config.port), handler)
    except OSError as e:
        raise ServeError(f"cannot listen on {app.config.host}:{app.config.port}: "
                         f"{e.strerror}; pick another --port") from None


def serve_until(app: App, stop: threading.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """Serve until `stop` is set, then stop accepting, and free every model."""
    server = make_server(app)
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="serve", daemon=True)
    thread.start()
    try:
        if ready is not None:
            ready(f"http://{host!s}:{port}")
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        app.close()

