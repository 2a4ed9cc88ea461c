"""Prometheus metrics in the text exposition format, without a client library.

Counters, gauges and histograms with labels, thread-safe, rendered by `Metrics.render()`
for a `/metrics` endpoint. The server and the agent each own one `Metrics`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _series(name: str, names: Sequence[str], values: Labels, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return f"{name}{{{','.join(pairs)}}}" if pairs else name


@dataclass
class _Family:
    name: str
    help: str
    kind: str
    label_names: tuple[str, ...]
    values: dict[Labels, float] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if self.kind == "histogram":
            lines += self._render_histogram()
        else:
            lines += [f"{_series(self.name, self.label_names, k)} {_number(v)}"
                      for k, v in sorted(self.values.items())]
        return lines

    def _render_histogram(self) -> list[str]:
        lines: list[str] = []
        for key, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{_series(self.name + '_bucket', self.label_names, key, le)} "
                             f"{cumulative}")
            lines.append(f"{_series(self.name + '_sum', self.label_names, key)} "
                         f"{_number(self.sums[key])}")
            lines.append(f"{_series(self.name + '_count', self.label_names, key)} {cumulative}")
        return lines


class Metrics:
    """A set of metric families; every update and the rendering take one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._declare(_Family(name, help_text, "counter", tuple(labels)))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._declare(_Family(name, help_text, "gauge", tuple(labels)))

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._declare(_Family(name, help_text, "histogram", tuple(labels),
                              buckets=tuple(sorted(buckets))))

    def _declare(self, family: _Family) -> None:
        with self._lock:
            self._families.setdefault(family.name, family)

    def _family(self, name: str, labels: Labels) -> _Family:
        family = self._families[name]
        if len(labels) != len(family.label_names):
            raise ValueError(f"{name} takes labels {family.label_names}, got {labels}")
        return family

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        with self._lock:
            family = self._family(name, labels)
            family.values[labels] = family.values.get(labels, 0.0) + amount

    def set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self._family(name, labels).values[labels] = value

    def clear(self, name: str) -> None:
        """Forget every series of a gauge (before setting the current ones again)."""
        with self._lock:
            self._families[name].values.clear()

    def observe(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            family = self._family(name, labels)
            counts = family.counts.setdefault(labels, [0] * (len(family.buckets) + 1))
            index = next((i for i, b in enumerate(family.buckets) if value <= b),
                         len(family.buckets))
            counts[index] += 1
            family.sums[labels] = family.sums.get(labels, 0.0) + value

    def value(self, name: str, labels: Labels = ()) -> float:
        """The current value of a counter or gauge series (0 if never set)."""
        with self._lock:
            return self._families[name].values.get(labels, 0.0)

    def render(self) -> str:
        with self._lock:
            lines = [line for f in self._families.values() for line in f.render()]
        return "\n".join(lines) + "\n"
