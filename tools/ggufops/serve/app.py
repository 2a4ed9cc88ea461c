"""`ggufops serve`: an OpenAI-compatible HTTP server over llama.cpp that swaps models
without failing a request.

Routes
  GET    /v1/models, /v1/models/{id}       model info: name, version, display id, sha256,
                                           load time, canary (the "model info endpoint")
  POST   /v1/completions, /v1/chat/completions   OpenAI's API (protocol.py: what is supported
                                           and refused); "stream": true answers as events
  GET    /healthz (process up), /readyz (a model is loaded), /metrics (Prometheus)
  GET    /admin/models                      state: active, standbys, draining, loading, errors
  GET    /admin/requests?model=N&since=TS   the request window and ratings (requestwindow.py)
  POST   /v1/feedback                       {"id": completion id, "rating": 1-5}
  POST   /admin/models                      load {name, version, sha256, display_id?, inference?,
                                           role? ("primary" | "canary"), weight? (canary 0-100)}
  POST   /admin/groups                      {group, models: [load body, ...]}: switch a release
                                           group all at once, or nothing (groupswap.py)
  DELETE /admin/models/{name}               unload a model (and its canary)
  DELETE /admin/models/{name}/canary        unload its canary (/shadow: its shadow)
  GET    /admin/shadow?model=NAME           shadow traffic: agreement, latency, errors, drops
  (every /admin route needs `Authorization: Bearer <token>`; with --admin-port they answer
  only on their own listener, --admin-host (127.0.0.1) : --admin-port, and 404 on --port)

Swaps without failed requests are modeltable.py's job, the OpenAI request and response
shapes protocol.py's, the connection limits httpjson.py's; this module holds the routes,
the generation and its metrics.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ggufops.errors import (
    ArtifactNotInStore,
    BadGguf,
    ChatTemplateError,
    ChecksumMismatch,
    GgufopsError,
    LlamaError,
    ModelLoadFailed,
    ServeError,
    SmokeTestFailed,
)
from ggufops.httpjson import HttpError, JsonHandler, Limits, QuietServer, read_json_body
from ggufops.llama import llm
from ggufops.serve import configswap, groupswap, protocol, requestwindow, shadow, standby
from ggufops.serve.loadrequest import LoadRequest
from ggufops.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ggufops.serve.metrics import Metrics
from ggufops.serve.modeltable import LoadedModel, Loader, ModelTable

log = logging.getLogger("ggufops.serve")

DEFAULT_PORT = 8080


def http_error_for(error: GgufopsError) -> HttpError:
    """The HTTP status of an expected failure while loading or generating."""
    if isinstance(error, ArtifactNotInStore):
        return HttpError(404, str(error), "not_found_error")
    if isinstance(error, ChecksumMismatch | ModelLoadFailed | SmokeTestFailed | BadGguf):
        return HttpError(422, str(error), "model_load_error")
    if isinstance(error, LlamaError | ChatTemplateError):
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
    n_gpu_layers: int = 0  # layers offloaded to a GPU (-1: all); ignored by a CPU build
    smoke_tokens: int = 4
    limits: Limits = field(default_factory=Limits)
    reuse_prefix: bool = False  # keep the previous request's prompt cache (not repeatable)
    standby: str = "auto"  # keep the replaced primary loaded when it fits (standby.py); "off"
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None  # set: /admin only on admin_host:admin_port (docs/kubernetes.md)


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


def generation_params(request: protocol.OpenAIRequest, loaded: LoadedModel,
                      config: LoadRequest | None = None) -> dict[str, Any]:
    """llama-cpp-python keyword arguments: the request's settings over the version's."""
    params = {**loaded.defaults(config), **request.sampling}
    if not 0 < params["max_tokens"] <= loaded.model.n_ctx:
        raise HttpError(400, f"max_tokens: must be 1..{loaded.model.n_ctx} (the context size)",
                        param="max_tokens")
    fmt = request.response_format
    if fmt.kind != "text":
        params["grammar"] = llm.json_grammar(fmt.schema)
    return params


def _require_chat(loaded: LoadedModel, config: LoadRequest) -> None:
    if not configswap.has_chat(loaded, config):
        raise HttpError(400, f"{loaded.request.display_id} has no chat template (its version "
                        "says prompt_template: none), so it cannot answer chat requests; use "
                        "/v1/completions, or register the file with --chat-format NAME",
                        param="model", code="model_has_no_chat_template")


@dataclass
class _Exchange:
    """One request's bookkeeping: its labels, status and start; recorded exactly once,
    before the last byte of the answer, so a client that reads /metrics after its answer
    always finds its request counted."""

    endpoint: str
    start: float = field(default_factory=time.perf_counter)
    labels: tuple[str, str] = ("", "")
    in_flight: bool = False
    done: bool = False
    role: str = "primary"
    completion_id: str = ""
    trace: llm.Trace | None = None


class Generator:
    """Runs completions on the table's models and records their metrics."""

    def __init__(self, table: ModelTable, metrics: Metrics, *,
                 reuse_prefix: bool = False,
                 window: requestwindow.RequestWindow | None = None) -> None:
        self.table = table
        self.metrics = metrics
        self.reuse_prefix = reuse_prefix
        self.shadow = shadow.ShadowMirror(table, metrics)
        self.window = window or requestwindow.RequestWindow()

    def handle(self, out: Writer, endpoint: str, body: Any) -> None:
        exchange = _Exchange(endpoint)
        try:
            request = protocol.parse(endpoint, body)
            with self.shadow.traffic.request(), \
                    self.table.use(request.model, request.user) as loaded:
                exchange.labels = loaded.labels
                exchange.role = self.table.role_of(loaded)
                exchange.in_flight = True
                self.metrics.inc("ggufops_in_flight_requests", loaded.labels)
                self._run(out, request, loaded, exchange)
        except HttpError as e:
            self._reply_error(out, exchange, e)
        except GgufopsError as e:
            self._reply_error(out, exchange, http_error_for(e))
        finally:
            self._finish(exchange, 500)  # only if a bug escaped: counted, in-flight released

    def _reply_error(self, out: Writer, exchange: _Exchange, error: HttpError) -> None:
        self._finish(exchange, error.status)
        out.send_json(error.status, error.body())

    def _finish(self, exchange: _Exchange, code: int) -> None:
        """Record the request (once): before its answer's last byte is written."""
        if exchange.done:
            return
        exchange.done = True
        labels, endpoint = exchange.labels, exchange.endpoint
        if exchange.in_flight:
            self.metrics.inc("ggufops_in_flight_requests", labels, -1)
        self.metrics.inc("ggufops_requests_total", (*labels, endpoint, str(code)))
        if code >= 400:
            self.metrics.inc("ggufops_request_errors_total", (*labels, endpoint))
        latency = time.perf_counter() - exchange.start
        self.metrics.observe("ggufops_request_duration_seconds", (*labels, endpoint), latency)
        if labels[0]:
            self._remember(exchange, code, latency)

    def _remember(self, exchange: _Exchange, code: int, latency: float) -> None:
        trace = exchange.trace
        self.window.record(requestwindow.RequestRecord(
            ts=time.time(), model=exchange.labels[0], version=exchange.labels[1],
            role=exchange.role, latency_s=round(latency, 6), ok=code < 400, status=code,
            prompt_tokens=trace.prompt_tokens if trace else 0,
            completion_tokens=trace.completion_tokens if trace else 0,
            completion_id=exchange.completion_id))

    def _run(self, out: Writer, request: protocol.OpenAIRequest, loaded: LoadedModel,
             exchange: _Exchange) -> None:
        config = configswap.pinned(loaded)  # one config for the whole request
        if request.is_chat:
            _require_chat(loaded, config)
        params = generation_params(request, loaded, config)
        trace = exchange.trace = llm.Trace(top_n=request.top_logprobs)
        queued = time.perf_counter()
        with loaded.lock:
            self.metrics.observe("ggufops_queue_wait_seconds", loaded.labels,
                                 time.perf_counter() - queued)
            configswap.use_template(loaded, config)
            if request.is_chat:
                messages = configswap.with_system_prompt(request.messages, config.inference)
                result = llm.chat(loaded.model, messages, params,
                                  stream=request.stream, trace=trace,
                                  reuse_prefix=self.reuse_prefix)
            else:
                result = llm.complete(loaded.model, request.prompt or "", params,
                                      stream=request.stream, trace=trace,
                                      reuse_prefix=self.reuse_prefix)
            text_of = functools.partial(llm.token_text, loaded.model)
            if isinstance(result, dict):
                reply = protocol.finish_response(request, result, loaded.request.display_id,
                                                 trace, text_of)
                self._count_tokens(loaded, trace)
                exchange.completion_id = str(reply.get("id") or "")
                self._finish(exchange, 200)
                out.send_json(200, reply)
                self.shadow.offer(request, params, loaded, reply,
                                  time.perf_counter() - exchange.start)
            else:
                stream = protocol.ChunkStream(request, loaded.request.display_id, trace, text_of)
                target, texts = self.shadow.pick(loaded, params), list[str]()
                chunks = stream.chunks(result)
                if target is not None:  # its text is collected only when it is mirrored
                    chunks = shadow.collecting(chunks, texts)
                if self._stream(out, loaded, stream, chunks, exchange) and target is not None:
                    self.shadow.mirror(target, request, params, loaded,
                                       primary_text="".join(texts),
                                       latency=time.perf_counter() - exchange.start)
            loaded.served += 1

    def _stream(self, out: Writer, loaded: LoadedModel, stream: protocol.ChunkStream,
                chunks: Iterator[dict[str, Any]], exchange: _Exchange) -> bool:
        """Send `chunks` as events; whether the answer ended without an error."""
        trace = stream.trace
        first = next(chunks, None)  # errors before the first chunk are still a JSON reply
        out.start_events()
        try:
            if first is not None:
                out.send_event(json.dumps(first))
            for chunk in chunks:
                out.send_event(json.dumps(chunk))
        except GgufopsError as e:
            out.send_event(json.dumps(http_error_for(e).body()))
            return False
        finally:
            self._count_tokens(loaded, trace)
            exchange.completion_id = stream.completion_id
            self._finish(exchange, 200)
            out.send_event("[DONE]")
        return True

    def _count_tokens(self, loaded: LoadedModel, trace: llm.Trace) -> None:
        self.metrics.inc("ggufops_tokens_total", (*loaded.labels, "prompt"), trace.prompt_tokens)
        self.metrics.inc("ggufops_tokens_total", (*loaded.labels, "completion"),
                         trace.completion_tokens)


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
    shadow.register_metrics(m)
    m.counter(configswap.CONFIG_CHANGES, "Inference config changes applied without a "
              "reload.", ("model", "version"))
    m.counter("ggufops_standby_promotions_total", "Rollbacks served by promoting the hot "
              "standby (a pointer swap, no load).", ("model",))
    m.gauge("ggufops_standby_info", "The hot standby of each model (value 1).",
            ("model", "version", "display_id", "sha256"))
    m.counter("ggufops_feedback_ratings_total", "User ratings received (POST /v1/feedback).",
              ("model", "version"))
    m.gauge("ggufops_feedback_rating_sum", "Sum of the user ratings (1-5) received (only "
            "grows; a gauge so its name keeps no _total suffix).", ("model", "version"))
    return m


class App:
    """Routes of `ggufops serve`, independent of the HTTP plumbing."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = server_metrics()
        self.table = ModelTable(self._free)
        self.loader = Loader(config.store, self.table, self.metrics, n_ctx=config.n_ctx,
                             n_threads=config.n_threads, smoke_tokens=config.smoke_tokens,
                             n_gpu_layers=config.n_gpu_layers)
        self.window = requestwindow.RequestWindow()
        self.generator = Generator(self.table, self.metrics, reuse_prefix=config.reuse_prefix,
                                   window=self.window)
        self.started_at = time.time()
        self.standby_checks: dict[str, dict[str, Any]] = {}
        self.table.keep_standby = self._keep_standby
        self.admin_url: str | None = None  # the admin listener's, once serving (--admin-port)

    def _keep_standby(self, old: LoadedModel) -> bool:
        """The memory-fit check for a replaced primary (standby.py); remembered for
        /admin/models."""
        try:
            size = old.path.stat().st_size
        except OSError:  # its file left the store: nothing to measure, keep nothing
            size = -1
        check = standby.fit_check(self.config.standby, size,
                                  standby.kv_cache_bytes(old.path, old.model.n_ctx))
        self.standby_checks[old.request.name] = {"version": old.request.version,
                                                 **check.as_dict()}
        log.info("%s: %s as hot standby (%s)", old.request.display_id,
                 "kept" if check.keep else "not kept", check.reason)
        return check.keep

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
        mirror = self.table.shadow(loaded.request.name)
        if mirror is not None:
            info["shadow"] = mirror.canary_info(mirror.request.weight)
        spare = self.table.standby(loaded.request.name)
        if spare is not None:
            info["standby"] = spare.standby_info()
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
        self.metrics.clear("ggufops_standby_info")
        for spare in self.table.standbys():
            r = spare.request
            self.metrics.set("ggufops_standby_info", (r.name, r.version, r.display_id, r.sha256),
                             1)
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
            "standbys": [{**m.info(), "in_flight": m.refs, "requests_served": m.served}
                         for m in self.table.standbys()],
            "standby_checks": dict(self.standby_checks),
            "draining": [{**m.info(), "in_flight": m.refs} for m in self.table.draining()],
            "loading": loading,
            "last_errors": errors,
        }

    def admin_load(self, body: Any) -> tuple[int, dict[str, Any]]:
        request = LoadRequest.from_json(body)
        try:
            loaded, changed = self.loader.load(request)
        except GgufopsError as e:
            raise http_error_for(e) from None
        info = {**loaded.info(), "role": request.role}
        if request.role == "canary":
            info["weight"] = request.weight
        return (201 if changed else 200), {"loaded": changed, "model": info}

    def admin_group(self, body: Any) -> dict[str, Any]:
        """POST /admin/groups: a release group switched all at once, or not at all."""
        group, requests = groupswap.parse(body)
        try:
            models = groupswap.swap(self.loader, group, requests)
        except GgufopsError as e:
            raise http_error_for(e) from None
        return {"group": group, "models": models}
    def feedback(self, body: Any) -> dict[str, Any]:
        """POST /v1/feedback: a rating 1-5 for a completion this server gave."""
        rating = self.window.rate(requestwindow.Feedback.parse(body))
        labels = (rating.model, rating.version)
        self.metrics.inc("ggufops_feedback_ratings_total", labels)
        self.metrics.inc("ggufops_feedback_rating_sum", labels, rating.rating)
        return {"id": rating.completion_id, "model": rating.model, "version": rating.version,
                "rating": rating.rating}

    def admin_unload(self, path: str) -> dict[str, Any]:
        """DELETE /admin/models/{name} (with its canary) or /admin/models/{name}/canary."""
        name, _, rest = path.partition("/")
        if rest not in ("", "canary", "shadow"):
            raise HttpError(404, f"no route DELETE /admin/models/{path}", "not_found_error")
        old = self.table.remove_canary(name, rest) if rest else self.table.remove(name)
        if old is None:
            what = f"has no {rest}" if rest else "is not served"
            raise HttpError(404, f"model {name!r} {what}", "not_found_error")
        return {"unloaded": old.info()}

    def close(self) -> None:
        self.table.close_all()


# --- HTTP plumbing --------------------------------------------------------------------------


class ServeHandler(JsonHandler):
    app: App
    admin_routes = True  # False on the public listener when the admin API has its own

    def _admin(self) -> None:
        """Authorize an /admin request: only on the admin listener, only with the token."""
        if not self.admin_routes:
            raise HttpError(404, "the admin API is not served on this port; it listens on "
                            "--admin-host:--admin-port", "not_found_error")
        self.app.authorize(self.headers.get("Authorization"))

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def do_DELETE(self) -> None:
        self._guarded(self._delete)

    def _guarded(self, route: Callable[[str], None]) -> None:
        try:
            path = self.path_only()
            if path.startswith("/admin/"):  # every admin route, before any body is read
                self._admin()
            route(path)
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
            self.send_json(200, app.admin_state())
        elif path == "/admin/shadow":
            query = parse_qs(urlsplit(self.path).query)
            samples = query.get("samples", ["0"])[0] == "1"
            self.send_json(200, app.generator.shadow.report(query.get("model", [""])[0], samples))
        elif path == "/admin/requests":
            model, since = requestwindow.parse_query(parse_qs(urlsplit(self.path).query))
            self.send_json(200, app.window.since(model, since))
        else:
            raise HttpError(404, f"no route GET {path}", "not_found_error")

    def _post(self, path: str) -> None:
        if path in protocol.ENDPOINTS:
            self.app.generator.handle(self, protocol.ENDPOINTS[path], read_json_body(self))
        elif path == "/admin/models":
            status, reply = self.app.admin_load(read_json_body(self))
            self.send_json(status, reply)
        elif path == "/admin/groups":
            self.send_json(200, self.app.admin_group(read_json_body(self)))
        elif path == "/v1/feedback":
            self.send_json(200, self.app.feedback(read_json_body(self)))
        else:
            raise HttpError(404, f"no route POST {path}", "not_found_error")

    def _delete(self, path: str) -> None:
        if not path.startswith("/admin/models/"):
            raise HttpError(404, f"no route DELETE {path}", "not_found_error")
        read_json_body(self)
        self.send_json(200, self.app.admin_unload(path[len("/admin/models/"):]))


def make_server(app: App, *, admin: bool = False) -> QuietServer:
    """The public listener, or (`admin`) the admin API's own one when --admin-port is set."""
    config = app.config
    host, port = (config.admin_host, config.admin_port) if admin else (config.host, config.port)
    handler = type("BoundServeHandler", (ServeHandler,), {
        "app": app, "limits": config.limits,
        "admin_routes": admin or config.admin_port is None})
    try:
        return QuietServer((host, port or 0), handler)
    except OSError as e:
        option = "--admin-port" if admin else "--port"
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}; pick another "
                         f"{option}") from None


def _start(server: QuietServer, name: str) -> str:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name=name,
                     daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def serve_until(app: App, stop: threading.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """Serve until `stop` is set, then stop accepting, and free every model. With
    --admin-port, the admin listener's URL is `app.admin_url` when `ready` is called."""
    servers = [make_server(app)]
    if app.config.admin_port is not None:
        servers.append(make_server(app, admin=True))
    urls = [_start(s, name) for s, name in zip(servers, ("serve", "serve-admin"), strict=False)]
    app.admin_url = urls[1] if len(urls) > 1 else None
    try:
        if ready is not None:
            ready(urls[0])
        stop.wait()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        app.close()

