"""Shadow traffic in `ggufops serve`: a share of requests mirrored to a shadow version.

The env entry's `shadow: {version, percent}` makes the agent load that version as the
model's shadow (role "shadow", weight = percent). After the primary (or canary) has
answered a request (streamed ones too: their assembled text), the request goes to the
shadow with probability percent/100: it is put on a bounded queue without waiting (when the
queue is full it is dropped and counted), and ONE background thread runs it, non-streamed,
on the shadow model. The client never sees the shadow's answer and its request never waits
for it.

The shadow yields to client requests (yielding.py): the thread starts a mirrored request
only once no client request has been in flight on the server for a quiet spell (50 ms),
and a client request arriving
aborts the running shadow generation at its next token; that request is counted as
preempted and dropped, never retried. So agreement is measured on the requests that ran to
the end in idle moments.

For every completed mirrored request the mirror records whether the two answers are equal
(exact match), their token overlap (the share of the longer answer's whitespace tokens the
other one has, as a multiset), the shadow's latency next to the primary's, and errors.
GET /admin/shadow?model=NAME and /metrics show them.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ggufops.errors import GgufopsError
from ggufops.httpjson import HttpError, rfc3339
from ggufops.llama import llm
from ggufops.percentile import interpolated
from ggufops.serve import configswap, protocol
from ggufops.serve.yielding import PrimaryTraffic

if TYPE_CHECKING:
    from ggufops.serve.metrics import Metrics
    from ggufops.serve.modeltable import LoadedModel, ModelTable

log = logging.getLogger("ggufops.serve")

QUEUE_SIZE = 8
LATENCY_SAMPLES = 2048  # kept per model for the admin endpoint's percentiles


def answer_text(reply: dict[str, Any]) -> str:
    """The text of a completion or chat completion reply."""
    choice = (reply.get("choices") or [{}])[0]
    message = choice.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(choice.get("text") or "")


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text one streamed chunk adds (completion `text` or chat `delta.content`)."""
    choice = (chunk.get("choices") or [{}])[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def collecting(chunks: Iterator[dict[str, Any]], texts: list[str]) -> Iterator[dict[str, Any]]:
    """`chunks`, unchanged, appending the text of each to `texts` on the way."""
    for chunk in chunks:
        texts.append(chunk_text(chunk))
        yield chunk


def token_overlap(a: str, b: str) -> float:
    """Share of the longer answer's whitespace tokens that the other has (1.0: same bag)."""
    left, right = Counter(a.split()), Counter(b.split())
    longest = max(sum(left.values()), sum(right.values()))
    if longest == 0:
        return 1.0
    return sum((left & right).values()) / longest


@dataclass
class ShadowStats:
    """What the mirror measured for one model's shadow version."""

    version: str
    mirrored: int = 0
    errors: int = 0
    exact: int = 0
    dropped: int = 0  # offered while the queue was full
    preempted: int = 0  # aborted because a client request arrived
    overlap_sum: float = 0.0
    shadow_latency: list[float] = field(default_factory=list)
    primary_latency: list[float] = field(default_factory=list)

    def record(self, primary: float, shadow: float, exact: bool, overlap: float) -> None:
        self.mirrored += 1
        self.exact += exact
        self.overlap_sum += overlap
        for samples, value in ((self.primary_latency, primary), (self.shadow_latency, shadow)):
            samples.append(value)
            del samples[:-LATENCY_SAMPLES]

    def as_dict(self, samples: bool = False) -> dict[str, Any]:
        """The figures; `samples` adds the latency samples (`ggufops ab` pools them over
        hosts, as percentiles cannot be averaged)."""
        done = self.mirrored
        body = {"version": self.version, "mirrored": done, "errors": self.errors,
                "dropped": self.dropped, "preempted": self.preempted, "exact_matches": self.exact,
                "exact_match_rate": round(self.exact / done, 4) if done else None,
                "token_overlap_mean": round(self.overlap_sum / done, 4) if done else None,
                "shadow_latency_p50_s": _pct(self.shadow_latency, 50),
                "shadow_latency_p95_s": _pct(self.shadow_latency, 95),
                "primary_latency_p50_s": _pct(self.primary_latency, 50),
                "primary_latency_p95_s": _pct(self.primary_latency, 95)}
        if samples:
            body["shadow_latency_s"] = [round(v, 6) for v in self.shadow_latency]
            body["primary_latency_s"] = [round(v, 6) for v in self.primary_latency]
        return body


def _pct(values: list[float], q: float) -> float | None:
    return round(interpolated(values, q), 4) if values else None


@dataclass(frozen=True)
class _Job:
    name: str
    request: protocol.OpenAIRequest
    params: dict[str, Any]
    primary_text: str
    primary_latency: float


@dataclass
class _Running:
    """The mirrored request the shadow thread is generating now."""

    name: str
    since: float
    trace: llm.Trace


class ShadowMirror:
    """The bounded queue and the one thread that runs mirrored requests on shadows."""

    def __init__(self, table: ModelTable, metrics: Metrics, *,
                 queue_size: int = QUEUE_SIZE, traffic: PrimaryTraffic | None = None) -> None:
        self.table = table
        self.metrics = metrics
        self.traffic = traffic or PrimaryTraffic()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stats: dict[str, ShadowStats] = {}
        self._running: _Running | None = None
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self._thread.start()

    def pick(self, loaded: LoadedModel, params: dict[str, Any]) -> LoadedModel | None:
        """The shadow this request goes to, drawn by its share; None (the usual case, decided
        before any answer text is built) when it is not mirrored."""
        shadow = self.table.shadow(loaded.request.name)
        if shadow is None or random.randrange(100) >= shadow.request.weight \
                or "grammar" in params:  # a grammar object is not shared between models
            return None
        return shadow

    def offer(self, request: protocol.OpenAIRequest, params: dict[str, Any],
              loaded: LoadedModel, reply: dict[str, Any], latency: float) -> None:
        """Mirror this answered request to the model's shadow, maybe; never blocks."""
        shadow = self.pick(loaded, params)
        if shadow is not None:
            self.mirror(shadow, request, params, loaded, primary_text=answer_text(reply),
                        latency=latency)

    def mirror(self, shadow: LoadedModel, request: protocol.OpenAIRequest,
               params: dict[str, Any], loaded: LoadedModel, *, primary_text: str,
               latency: float) -> None:
        """Queue a request the primary answered with `primary_text` for `shadow` (from
        `pick`); never blocks: a full queue drops it and counts the drop."""
        job = _Job(loaded.request.name, request, params, primary_text, latency)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.metrics.inc("ggufops_shadow_dropped_total", (job.name,))
            with self._lock:  # after the metric, which report() reads, as in _record
                self._stats_for(job.name, shadow.request.version).dropped += 1

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            self.traffic.wait_quiet()  # clients first: start only after a quiet spell
            try:
                self._run(job)
            except Exception:  # a bug must not stop the mirror
                log.exception("shadow request for %s failed", job.name)

    def _run(self, job: _Job) -> None:
        version: str | None = None  # the shadow version this job ran on, once it has one
        try:
            with self.table.use_shadow(job.name) as shadow:
                version = shadow.request.version
                start = time.perf_counter()
                text = self._generate(shadow, job)
                elapsed = time.perf_counter() - start
        except HttpError:
            return  # the shadow went away meanwhile
        except llm.GenerationAborted:
            self._count_preempted(job.name, shadow.request.version)
            return
        except GgufopsError as e:
            self._error(job.name, version, str(e))
            return
        finally:
            self._running = None
        self._record(job, shadow, text, elapsed)

    def _generate(self, shadow: LoadedModel, job: _Job) -> str:
        """The shadow's answer; llm.GenerationAborted when a client request arrives."""
        request, config = job.request, configswap.pinned(shadow)
        params = {**shadow.defaults(config), **job.params}
        mark, trace = self.traffic.mark(), llm.Trace()

        def stop() -> bool:  # a client request came since this generation began
            return self.traffic.arrived_since(mark)

        with shadow.lock:
            self._running = _Running(job.name, time.time(), trace)
            configswap.use_template(shadow, config)
            if request.is_chat:
                messages = configswap.with_system_prompt(request.messages, config.inference)
                result = llm.chat(shadow.model, messages, params, stream=False, trace=trace,
                                  should_stop=stop)
            else:
                result = llm.complete(shadow.model, request.prompt or "", params,
                                      stream=False, trace=trace, should_stop=stop)
        return answer_text(result) if isinstance(result, dict) else ""

    def _count_preempted(self, name: str, version: str) -> None:
        self.metrics.inc("ggufops_shadow_preempted_total", (name,))
        with self._lock:  # after the metric, which report() reads, as in _record
            self._stats_for(name, version).preempted += 1

    def _error(self, name: str, version: str | None, message: str) -> None:
        """Counted for the version that failed, not whichever is the shadow by now: the
        metric carries its version; the stats block (the current shadow's) only counts it
        when that version is still the shadow, so a late error neither lands on the new
        shadow nor resets its figures."""
        shadow = self.table.shadow(name)
        current = shadow.request.version if shadow else None
        version = version or current or "?"  # it failed before it ran on any version
        self.metrics.inc("ggufops_shadow_requests_total", (name, version, "error"))
        if version != current:
            log.info("shadow %s@%s (no longer the shadow) failed: %s", name, version, message)
            return
        with self._lock:
            self._stats_for(name, version).errors += 1
        log.info("shadow of %s failed: %s", name, message)

    def _record(self, job: _Job, shadow: LoadedModel, text: str, elapsed: float) -> None:
        exact = text == job.primary_text
        overlap = token_overlap(text, job.primary_text)
        labels = shadow.labels
        self.metrics.inc("ggufops_shadow_requests_total",
                         (*labels, "match" if exact else "differ"))
        self.metrics.observe("ggufops_shadow_token_overlap", labels, overlap)
        self.metrics.observe("ggufops_shadow_duration_seconds", labels, elapsed)
        with self._lock:  # last: whoever sees the count in the report finds the metrics too
            self._stats_for(job.name, shadow.request.version).record(
                job.primary_latency, elapsed, exact, overlap)

    def _stats_for(self, name: str, version: str) -> ShadowStats:
        """The stats of `name`'s shadow version (a new version starts afresh)."""
        stats = self._stats.get(name)
        if stats is None or stats.version != version:
            stats = self._stats[name] = ShadowStats(version)
        return stats

    def report(self, name: str, samples: bool = False) -> dict[str, Any]:
        """GET /admin/shadow?model=NAME[&samples=1]."""
        shadow = self.table.shadow(name)
        if self.table.get(name) is None:
            raise HttpError(404, f"model {name!r} is not served", "not_found_error")
        with self._lock:
            stats = self._stats.get(name)
            body = stats.as_dict(samples) if stats is not None else None
        return {"model": name, "shadow": None if shadow is None else {
            "version": shadow.request.version, "display_id": shadow.request.display_id,
            "percent": shadow.request.weight},
            "dropped": int(self.metrics.value("ggufops_shadow_dropped_total", (name,))),
            "preempted": int(self.metrics.value("ggufops_shadow_preempted_total", (name,))),
            "queue_size": self._queue.maxsize, "queued": self._queue.qsize(),
            "running": self._running_info(name), "stats": body}

    def _running_info(self, name: str) -> dict[str, Any] | None:
        """The mirrored request of `name` being generated now: since when, tokens so far."""
        running = self._running
        if running is None or running.name != name:
            return None
        return {"since": rfc3339(running.since), "tokens": len(running.trace.sampled)}


def register_metrics(metrics: Metrics) -> None:
    metrics.counter("ggufops_shadow_requests_total", "Requests mirrored to a shadow version, "
                    "by outcome: match (the same answer), differ, error.",
                    ("model", "version", "outcome"))
    metrics.counter("ggufops_shadow_dropped_total", "Mirrored requests dropped because the "
                    "shadow queue was full.", ("model",))
    metrics.counter("ggufops_shadow_preempted_total", "Mirrored requests aborted (and dropped) "
                    "because a client request arrived while the shadow generated.", ("model",))
    metrics.histogram("ggufops_shadow_token_overlap", "Token overlap of the shadow's answer "
                      "with the primary's (1: the same tokens).", ("model", "version"),
                      buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0))
    metrics.histogram("ggufops_shadow_duration_seconds", "Time the shadow took per mirrored "
                      "request.", ("model", "version"))
