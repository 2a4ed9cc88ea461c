"""Prometheus metrics for `/metrics`, on the `prometheus_client` library.

`Metrics` keeps the small API the server and the agent use (declare, `inc`, `set`,
`observe`, `clear`, `value`, `render`) over a private `CollectorRegistry`, so several
servers or agents in one process (as in the tests) never share or clash on series.
prometheus_client's metrics are thread-safe; the lock here only guards declarations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]
Metric = Counter | Gauge | Histogram

# The exposition stays what it was: no `<counter>_created` series beside each counter.
prometheus_client.disable_created_metrics()


class Metrics:
    """A set of metric families in a registry of their own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Metric] = {}
        self._label_names: dict[str, tuple[str, ...]] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._declare(name, labels, lambda: Counter(name, help_text, labels,
                                                    registry=self.registry))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._declare(name, labels, lambda: Gauge(name, help_text, labels,
                                                  registry=self.registry))

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._declare(name, labels, lambda: Histogram(name, help_text, labels,
                                                      registry=self.registry,
                                                      buckets=sorted(buckets)))

    def _declare(self, name: str, labels: Sequence[str],
                 make: Callable[[], Metric]) -> None:
        with self._lock:
            if name not in self._metrics:
                self._metrics[name] = make()
                self._label_names[name] = tuple(labels)

    def _series(self, name: str, labels: Labels) -> Metric:
        metric = self._metrics[name]
        if len(labels) != len(self._label_names[name]):
            raise ValueError(f"{name} takes labels {self._label_names[name]}, got {labels}")
        return metric.labels(*labels) if labels else metric

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        series = self._series(name, labels)
        assert isinstance(series, Counter | Gauge), f"{name} is not a counter or gauge"
        series.inc(amount)

    def set(self, name: str, labels: Labels, value: float) -> None:
        series = self._series(name, labels)
        assert isinstance(series, Gauge), f"{name} is not a gauge"
        series.set(value)

    def clear(self, name: str) -> None:
        """Forget every series of a labelled gauge (before setting the current ones again)."""
        self._metrics[name].clear()

    def observe(self, name: str, labels: Labels, value: float) -> None:
        series = self._series(name, labels)
        assert isinstance(series, Histogram), f"{name} is not a histogram"
        series.observe(value)

    def value(self, name: str, labels: Labels = ()) -> float:
        """The current value of a counter or gauge series (0 if never set)."""
        label_map = dict(zip(self._label_names[name], labels, strict=True))
        found = self.registry.get_sample_value(name, label_map)
        return 0.0 if found is None else found

    def render(self) -> str:
        return generate_latest(self.registry).decode()
