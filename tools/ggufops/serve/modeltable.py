"""Models in memory for `ggufops serve`: the table requests use, and the loader that swaps.

A swap: the loader re-hashes `<store>/sha256/<sha256>.gguf` (never an unverified file),
loads it and smoke-tests it beside the serving model, holding no lock a request needs;
then one short critical section replaces the table entry. Each request holds a reference
(`ModelTable.use`) to the model it started on, so requests in flight finish there; the old
model is freed when its last request ends. A llama.cpp context is not thread-safe: each
model has a lock and its requests queue on it.

Hot standby: when a primary is replaced and App's memory-fit check (standby.py) allows,
it stays loaded as the name's standby; a load request for that same file later is a
pointer swap (`promote_standby`): no hashing, no load, no smoke test, no failed request.

Canaries: besides its primary, a model name may have one canary (role "canary") with a
weight 0-100, loaded the same way. A request naming the model goes to the canary when its
bucket (sha256 of the request's `user`, else random; 0-99) is below the weight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ggufops.artifacts.ggufheader import read_header
from ggufops.artifacts.store import ArtifactStore
from ggufops.errors import (
    ArtifactNotInStore,
    ChecksumMismatch,
    GgufopsError,
    LlamaError,
    ModelLoadFailed,
)
from ggufops.hashing import file_sha256
from ggufops.httpjson import HttpError, rfc3339
from ggufops.llama import llm
from ggufops.registry import overrides
from ggufops.serve import configswap
from ggufops.serve.loadrequest import LoadRequest
from ggufops.serve.metrics import Metrics

log = logging.getLogger("ggufops.serve")

HASH_CHUNK = 8 * 1024 * 1024
DEFAULT_MAX_TOKENS = 128


def _same_model(loaded: LoadRequest, wanted: LoadRequest) -> bool:
    """Would `wanted` load exactly what `loaded` holds (file and chat template)?"""
    return wanted.role == "primary" and loaded.sha256 == wanted.sha256 and \
        loaded.inference.get("prompt_template") == wanted.inference.get("prompt_template")


def bucket(user: str | None) -> int:
    """0-99: the same for every request of `user`, random without one."""
    if user is None:
        return random.randrange(100)  # traffic splitting, not security
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") % 100


# --- models in memory ---------------------------------------------------------------------


class LoadedModel:
    """One llama.cpp model in memory: its lock, and how many requests hold it."""

    def __init__(self, request: LoadRequest, model: llm.Model, path: Path,
                 load_seconds: float) -> None:
        self.request = request
        self.model = model
        self.path = path
        self.load_seconds = load_seconds
        self.loaded_at = time.time()
        self.lock = threading.Lock()  # one llama.cpp call at a time on this context
        self.refs = 0  # requests holding this model; guarded by the table's lock
        self.retired = False  # no longer in the table; freed when refs reaches 0
        self.served = 0

    @property
    def labels(self) -> tuple[str, str]:
        return self.request.name, self.request.version

    def matches(self, model_id: str) -> bool:
        r = self.request
        return model_id in (r.name, r.display_id, f"{r.name}@{r.version}")

    def info(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": r.name, "object": "model", "created": int(self.loaded_at),
            "owned_by": "ggufops", "name": r.name, "version": r.version,
            "display_id": r.display_id, "sha256": r.sha256,
            "loaded_at": rfc3339(self.loaded_at), "load_seconds": round(self.load_seconds, 4),
            "n_ctx": self.model.n_ctx,
            "chat_template": configswap.template_for(self.model, r.inference),
            "config_sha256": overrides.config_digest(r.inference),
        }  # fmt: skip

    def canary_info(self, weight: int) -> dict[str, Any]:
        """What the primary's /v1/models entry says about this canary."""
        r = self.request
        return {"version": r.version, "sha256": r.sha256, "display_id": r.display_id,
                "weight": weight, "loaded_at": rfc3339(self.loaded_at),
                "config_sha256": overrides.config_digest(r.inference)}

    def standby_info(self) -> dict[str, Any]:
        """What the primary's /v1/models entry says about its hot standby."""
        r = self.request
        return {"version": r.version, "sha256": r.sha256, "display_id": r.display_id,
                "loaded_at": rfc3339(self.loaded_at)}

    def defaults(self, config: LoadRequest | None = None) -> dict[str, Any]:
        """Generation defaults from the version's validated inference config (of `config`,
        the request's pinned one, when given)."""
        inf = (config or self.request).inference
        values = {"temperature": inf.get("temperature"), "top_p": inf.get("top_p"),
                  "max_tokens": inf.get("max_tokens") or DEFAULT_MAX_TOKENS}
        return {k: v for k, v in values.items() if v is not None}

    def close(self) -> None:
        with self.lock:
            self.model.close()


class ModelTable:
    """name -> the active LoadedModel (and its canary, with a weight); one short lock guards
    the table and the refcounts."""

    def __init__(self, on_free: Callable[[LoadedModel], None]) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, LoadedModel] = {}
        self._canary: dict[str, LoadedModel] = {}
        self._shadow: dict[str, LoadedModel] = {}
        self._draining: list[LoadedModel] = []
        self._on_free = on_free
        self._standby: dict[str, LoadedModel] = {}  # name -> the previous primary, still loaded
        self.keep_standby: Callable[[LoadedModel], bool] = lambda old: False

    def get(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._active.get(name)

    def active(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._active.values(), key=lambda m: m.request.name)

    def canary(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._canary.get(name)

    def canaries(self) -> dict[str, tuple[LoadedModel, int]]:
        """name -> (canary, weight)."""
        with self._lock:
            return {n: (c, c.request.weight) for n, c in self._canary.items()}

    def shadow(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._shadow.get(name)

    def shadows(self) -> dict[str, LoadedModel]:
        with self._lock:
            return dict(self._shadow)

    @contextlib.contextmanager
    def use_shadow(self, name: str) -> Iterator[LoadedModel]:
        """Hold the shadow of `name` for a mirrored request (HttpError 404 without one)."""
        with self._lock:
            loaded = self._shadow.get(name)
            if loaded is None:
                raise HttpError(404, f"{name} has no shadow", "not_found_error")
            loaded.refs += 1
        try:
            yield loaded
        finally:
            self._release(loaded)

    def in_slot(self, role: str, name: str) -> LoadedModel | None:
        with self._lock:
            return self._slots(role).get(name)

    def set_weight(self, name: str, weight: int, role: str = "canary") -> LoadedModel | None:
        """Change the weight of the canary (or shadow) of `name` (no reload); it, if any."""
        with self._lock:
            current = self._slots(role).get(name)
            if current is not None:
                current.request = dataclasses.replace(current.request, weight=weight)
            return current

    def reconfigure(self, loaded: LoadedModel, request: LoadRequest) -> None:
        """Give `loaded` a new config (same file and role): one assignment, under the lock
        `use` reads it with."""
        with self._lock:
            loaded.request = request

    def draining(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._draining)

    def _resolve(self, model_id: str | None, user: str | None) -> LoadedModel:
        primary = self._primary(model_id)
        canary = self._canary.get(primary.request.name)
        if canary is None or model_id not in (None, primary.request.name):
            return primary  # a display id or name@version names one model exactly
        return canary if bucket(user) < canary.request.weight else primary

    def _primary(self, model_id: str | None) -> LoadedModel:
        if not self._active:
            raise HttpError(503, "no model is loaded yet; the sync agent loads one "
                            "(POST /admin/models)", "service_unavailable")
        if model_id is None:
            if len(self._active) == 1:
                return next(iter(self._active.values()))
            raise HttpError(400, f"several models are served ({', '.join(sorted(self._active))});"
                            " name one in \"model\"")
        for loaded in self._active.values():
            if loaded.matches(model_id):
                return loaded
        for other in (*self._canary.values(), *self._standby.values()):
            if other.matches(model_id) and model_id != other.request.name:
                return other
        raise HttpError(404, f"model {model_id!r} is not served; GET /v1/models lists "
                        f"what is: {', '.join(sorted(self._active))}", "not_found_error")

    @contextlib.contextmanager
    def use(self, model_id: str | None, user: str | None = None) -> Iterator[LoadedModel]:
        """Hold the model `model_id` names (name, display id or name@version) for a request;
        a name goes to its canary for a share of the users (`weight`)."""
        with self._lock:
            loaded = self._resolve(model_id, user)
            loaded.refs += 1
        try:
            yield loaded
        finally:
            self._release(loaded)

    def _release(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.refs -= 1
            free = loaded.retired and loaded.refs == 0
            if free:
                self._draining.remove(loaded)
        if free:
            self._on_free(loaded)

    def install(self, new: LoadedModel) -> LoadedModel | None:
        """Make `new` the active model (or canary) of its name; retire (and maybe free) the
        old one. A canary needs a primary: HttpError 409 without one."""
        name = new.request.name
        with self._lock:
            slots = self._slots(new.request.role)
            if slots is not self._active and name not in self._active:
                raise HttpError(409, f"{name} has no primary model; load it before a canary",
                                "conflict_error")
            old = slots.get(name)
            slots[name] = new
        if old is not None:
            self._retire_or_keep(old, new)
        return old

    def install_all(self, news: list[LoadedModel],
                    configs: list[tuple[LoadedModel, LoadRequest]]) -> list[LoadedModel]:
        """Install `news` (primaries before canaries) and apply `configs`, in one critical
        section: a release group switches at once. The models replaced are retired."""
        ordered = sorted(news, key=lambda m: m.request.role != "primary")
        with self._lock:
            for new in ordered:
                name = new.request.name
                if new.request.role != "primary" and name not in self._active:
                    raise HttpError(409, f"{name} has no primary model; load it before a "
                                    "canary", "conflict_error")
            old = [self._slots(n.request.role).get(n.request.name) for n in ordered]
            for new in ordered:
                self._slots(new.request.role)[new.request.name] = new
            for loaded, request in configs:
                loaded.request = request
        retired = [o for o in old if o is not None]
        for o in retired:
            self._retire(o)
        return retired

    def _slots(self, role: str) -> dict[str, LoadedModel]:
        return {"primary": self._active, "canary": self._canary, "shadow": self._shadow}[role]

    # hot standby (standby.py decides whether a replaced primary may stay loaded)

    def standby(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._standby.get(name)

    def role_of(self, loaded: LoadedModel) -> str:
        """primary, canary or standby: the slot `loaded` has now (for the request window)."""
        with self._lock:
            if self._standby.get(loaded.request.name) is loaded:
                return "standby"
        return loaded.request.role

    def standbys(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._standby.values(), key=lambda m: m.request.name)

    def _retire_or_keep(self, old: LoadedModel, new: LoadedModel) -> None:
        """A replaced primary becomes the standby when `keep_standby` allows; the standby
        it displaces (or a refused one) is retired. A replaced canary is just retired."""
        if new.request.role != "primary":
            self._retire(old)
            return
        keep = old.request.sha256 != new.request.sha256 and self.keep_standby(old)
        with self._lock:
            displaced = self._standby.pop(old.request.name, None)
            if keep:
                self._standby[old.request.name] = old
        for retired in (displaced, None if keep else old):
            if retired is not None and retired is not new:
                self._retire(retired)

    def promote_standby(self, request: LoadRequest) -> LoadedModel | None:
        """Roll back by pointer: the standby with `request`'s file becomes the primary, the
        primary becomes the standby. None (nothing changed) when no standby matches."""
        with self._lock:
            standby = self._standby.get(request.name)
            primary = self._active.get(request.name)
            if standby is None or primary is None or not _same_model(standby.request, request):
                return None
            standby.request = request
            self._active[request.name], self._standby[request.name] = standby, primary
            return standby

    def remove(self, name: str) -> LoadedModel | None:
        """Unload the model `name` and its canary (at once: no canary outlives its primary);
        the primary, if any."""
        with self._lock:
            old = self._active.pop(name, None)
            canary = self._canary.pop(name, None)
            shadow = self._shadow.pop(name, None)
            standby = self._standby.pop(name, None)
        for retired in (shadow, canary, standby, old):
            if retired is not None:
                self._retire(retired)
        return old

    def remove_canary(self, name: str, role: str = "canary") -> LoadedModel | None:
        with self._lock:
            old = self._slots(role).pop(name, None)
        if old is not None:
            self._retire(old)
        return old

    def _retire(self, old: LoadedModel) -> None:
        with self._lock:
            old.retired = True
            free = old.refs == 0
            if not free:
                self._draining.append(old)
        if free:
            self._on_free(old)

    def close_all(self) -> None:
        with self._lock:
            names = list(self._active)
        for name in names:
            self.remove(name)


# --- loading --------------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _unchanged(path: Path, before: tuple[int, int, int, int]) -> bool:
    try:
        return _identity(path) == before
    except OSError:
        return False


class Loader:
    """Verifies, loads, smoke-tests and installs models; one load per model name at a time."""

    def __init__(self, store: Path, table: ModelTable, metrics: Metrics, *, n_ctx: int,
                 n_threads: int | None, smoke_tokens: int, n_gpu_layers: int = 0) -> None:
        self.store = store
        self.n_gpu_layers = n_gpu_layers
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.smoke_tokens = smoke_tokens
        self.table = table
        self.metrics = metrics
        self._guard = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self.loading: dict[str, dict[str, Any]] = {}
        self.last_errors: dict[str, dict[str, Any]] = {}

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(loads in progress, last load error) by model name."""
        with self._guard:
            return dict(self.loading), dict(self.last_errors)

    @contextlib.contextmanager
    def group_locks(self, names: list[str]) -> Iterator[None]:
        """Hold the load locks of every model in `names` (in name order: no deadlock)."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self._lock_for(name))
            yield

    def current_for(self, request: LoadRequest) -> LoadedModel | None:
        """What serves in `request`'s slot now (None if nothing)."""
        return self.table.in_slot(request.role, request.name)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._name_locks.setdefault(name, threading.Lock())

    def load(self, request: LoadRequest) -> tuple[LoadedModel, bool]:
        """(the active model or canary, whether it changed); what serves now serves on if
        this raises. A canary already loaded only gets the new weight."""
        with self._lock_for(request.name):
            current = self._current(request)
            if current is not None and current.request == request:
                if request.role != "primary":
                    self.table.set_weight(request.name, request.weight, request.role)
                return current, False
            if current is not None and configswap.same_model(current.request, request):
                return configswap.reconfigure(self.table, current, request, self.metrics), False
            promoted = self.table.promote_standby(request)
            if promoted is not None:
                self.metrics.inc("ggufops_standby_promotions_total", (request.name,))
                log.info("serving %s again from standby (no load); %s is the standby now",
                         request.display_id, current.request.display_id if current else "-")
                return promoted, True
            new = self.prepare_tracked(request)
            try:
                old = self.table.install(new)
            except HttpError:
                new.close()
                raise
            self.metrics.inc("ggufops_model_loads_total", (request.name, "success"))
            log.info("serving %s%s (sha256 %s…) after %.3f s%s", request.display_id,
                     f" as canary, weight {request.weight}" if request.role == "canary" else "",
                     request.sha256[:12], new.load_seconds,
                     f"; {old.request.display_id} drains" if old else "")
            return new, True

    def _current(self, request: LoadRequest) -> LoadedModel | None:
        if request.role == "primary":
            return self.table.get(request.name)
        if self.table.get(request.name) is None:
            raise HttpError(409, f"{request.name} has no primary model; load it before a "
                            f"{request.role}", "conflict_error")
        return self.table.in_slot(request.role, request.name)

    def prepare_tracked(self, request: LoadRequest) -> LoadedModel:
        """Verify, load and smoke-test `request` without installing it, tracked in
        `loading` and `last_errors` (load() and groupswap.py install it)."""
        with self._guard:
            self.loading[request.key] = {"version": request.version, "sha256": request.sha256,
                                          "since": rfc3339(time.time())}
        try:
            loaded = self._prepare(request)
        except GgufopsError as e:
            self.metrics.inc("ggufops_model_loads_total", (request.name, "failure"))
            with self._guard:
                self.last_errors[request.key] = {"version": request.version, "error": str(e),
                                                  "at": rfc3339(time.time())}
            log.warning("load of %s refused: %s", request.display_id, e)
            raise
        finally:
            with self._guard:
                self.loading.pop(request.key, None)
        with self._guard:
            self.last_errors.pop(request.key, None)
        return loaded

    def _prepare(self, request: LoadRequest) -> LoadedModel:
        path = ArtifactStore(self.store).path_for(request.sha256)
        start = time.perf_counter()
        before = self._verify(path, request)
        try:
            model = llm.serve_load(path, n_ctx=self._context_size(path),
                                   n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                                   chat_template=request.inference.get("prompt_template"))
        except LlamaError as e:
            raise ModelLoadFailed(f"{request.display_id}: {e}") from None
        try:
            llm.require_smoke(request.display_id,
                              llm.serve_smoke_test(model, self.smoke_tokens))
            if not _unchanged(path, before):
                raise ModelLoadFailed(f"{path} changed while it was loaded; not serving it")
        except BaseException:
            model.close()
            raise
        return LoadedModel(request, model, path, time.perf_counter() - start)

    @staticmethod
    def _verify(path: Path, request: LoadRequest) -> tuple[int, int, int, int]:
        try:
            before = _identity(path)
        except FileNotFoundError:
            raise ArtifactNotInStore(
                f"{request.display_id}: {path} is not in the store; pull it first "
                "(the sync agent does, or `ggufops pull`)") from None
        digest = file_sha256(path)
        if digest != request.sha256:
            raise ChecksumMismatch(
                f"{request.display_id}: {path} has sha256 {digest}, not {request.sha256}; "
                "refusing to load it: delete the file and pull it again")
        return before

    def _context_size(self, path: Path) -> int:
        trained = read_header(path).context_length
        return trained if self.n_ctx <= 0 else min(self.n_ctx, trained)
