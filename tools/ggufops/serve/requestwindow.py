"""The server's rolling window of recent requests and user ratings, per model and version.

Every finished inference request (answered or refused once its model was known) becomes a
RequestRecord; `POST /v1/feedback {"id", "rating"}` ties a rating 1-5 to the completion's
model and version. Both are bounded (the newest `per_version` records of each of the
VERSIONS_KEPT versions of a model that answered last, the newest `ids` completion ids), so
memory stays flat however long the server runs and however many versions it serves in turn.
`GET /admin/requests?model=NAME&since=UNIX_TS` shows them: `ggufops ab` reads it from every
host, and it is the contract for judging rollback triggers and canaries on a host.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any

from ggufops.httpjson import HttpError

DEFAULT_PER_VERSION = 5000
DEFAULT_IDS = 50000
VERSIONS_KEPT = 8  # per model: the versions that answered most recently


@dataclass(frozen=True)
class RequestRecord:
    """One finished request: when, how long, whether it failed, and its tokens."""

    ts: float
    model: str
    version: str
    role: str  # primary | canary | standby
    latency_s: float
    ok: bool
    status: int
    prompt_tokens: int
    completion_tokens: int
    completion_id: str


@dataclass(frozen=True)
class Rating:
    ts: float
    model: str
    version: str
    completion_id: str
    rating: int


@dataclass(frozen=True)
class Feedback:
    """A parsed POST /v1/feedback body."""

    completion_id: str
    rating: int

    @classmethod
    def parse(cls, body: Any) -> Feedback:
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object {\"id\": \"<completion id>\", "
                            "\"rating\": 1-5}")
        cid, rating = body.get("id"), body.get("rating")
        if not isinstance(cid, str) or not cid:
            raise HttpError(400, "id: the completion id (\"id\" of the answer) is required",
                            param="id")
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise HttpError(400, f"rating: must be an integer 1-5, got {rating!r}",
                            param="rating")
        return cls(cid, rating)


class RequestWindow:
    """Bounded, thread-safe: records by (model, version), completion id -> (model, version)."""

    def __init__(self, per_version: int = DEFAULT_PER_VERSION, ids: int = DEFAULT_IDS) -> None:
        self._lock = threading.Lock()
        self._per_version = per_version
        self._ids_kept = ids
        self._requests: dict[tuple[str, str], deque[RequestRecord]] = {}
        self._ratings: dict[tuple[str, str], deque[Rating]] = {}
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.started = time.time()  # it is in memory: nothing before this was kept

    def record(self, record: RequestRecord) -> None:
        key = (record.model, record.version)
        with self._lock:
            self._bounded(self._requests, key).append(record)
            if record.ok and record.completion_id:
                self._ids[record.completion_id] = key
                while len(self._ids) > self._ids_kept:
                    self._ids.popitem(last=False)

    def _bounded(self, table: dict[tuple[str, str], deque[Any]],
                 key: tuple[str, str]) -> deque[Any]:
        """The deque of `key`, made the newest of its model's; older versions beyond
        VERSIONS_KEPT are forgotten."""
        rows = table.pop(key, None)
        table[key] = rows if rows is not None else deque(maxlen=self._per_version)
        same_model = [k for k in table if k[0] == key[0]]
        for old in same_model[:-VERSIONS_KEPT]:
            del table[old]
        return table[key]

    def rate(self, feedback: Feedback, now: float | None = None) -> Rating:
        """Tie a rating to its completion's version; HttpError 404 for an unknown id."""
        with self._lock:
            key = self._ids.get(feedback.completion_id)
            if key is None:
                raise HttpError(404, f"id: no recent completion {feedback.completion_id!r} on "
                                "this server; send the \"id\" of an answer it gave",
                                "not_found_error", param="id")
            rating = Rating(time.time() if now is None else now, key[0], key[1],
                            feedback.completion_id, feedback.rating)
            self._bounded(self._ratings, key).append(rating)
        return rating

    def since(self, model: str, since: float) -> dict[str, Any]:
        """GET /admin/requests: the model's records and ratings newer than `since`."""
        with self._lock:
            requests = [asdict(r) for (m, _), rs in self._requests.items() if m == model
                        for r in rs if r.ts >= since]
            ratings = [asdict(r) for (m, _), rs in self._ratings.items() if m == model
                       for r in rs if r.ts >= since]
        requests.sort(key=lambda r: r["ts"])
        ratings.sort(key=lambda r: r["ts"])
        return {"model": model, "since": since, "now": time.time(), "started": self.started,
                "requests": requests, "ratings": ratings}


def parse_query(query: dict[str, list[str]]) -> tuple[str, float]:
    """(model, since) of GET /admin/requests?model=NAME&since=UNIX_TS."""
    model = (query.get("model") or [""])[0]
    if not model:
        raise HttpError(400, "model: name the model (/admin/requests?model=NAME&since=UNIX_TS)",
                        param="model")
    raw = (query.get("since") or ["0"])[0]
    try:
        since = float(raw)
    except ValueError:
        raise HttpError(400, f"since: {raw!r} is not a Unix timestamp in seconds",
                        param="since") from None
    return model, since
