"""Sequential completions against one `ggufops serve`, in a background thread, for tests of
what the agent judges on a server's request window (rollback triggers, canary analysis)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from testing.runtime import MODEL, http

PROMPT = "def fibonacci(n):\n    " * 8


@dataclass
class Traffic:
    """Sequential completions against one server; rates answers of `rate_low` with 1."""

    url: str
    rate_low: str | None = None
    max_tokens: int = 8
    prompts: tuple[str, ...] = (PROMPT,)  # sent in turn
    answered: dict[str, int] = field(default_factory=dict)  # version (display id) -> count
    statuses: list[int] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # status, prompt, error
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            prompt = self.prompts[len(self.statuses) % len(self.prompts)]
            body = {"model": MODEL, "prompt": prompt, "max_tokens": self.max_tokens}
            status, reply = http("POST", f"{self.url}/v1/completions", body)
            self.statuses.append(status)
            if status != 200:
                self.failures.append((status, prompt, str(reply["error"]["message"])))
                continue
            shown = str(reply["model"])
            self.answered[shown] = self.answered.get(shown, 0) + 1
            if self.rate_low is not None:
                rating = 1 if f"-v{self.rate_low}-" in shown else 5
                http("POST", f"{self.url}/v1/feedback", {"id": reply["id"], "rating": rating})

    def count(self, version: str) -> int:
        return sum(n for shown, n in self.answered.items() if f"-v{version}-" in shown)


@contextlib.contextmanager
def traffic(url: str, rate_low: str | None = None, max_tokens: int = 8,
            prompts: tuple[str, ...] = (PROMPT,)) -> Iterator[Traffic]:
    sender = Traffic(url, rate_low, max_tokens, prompts)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        sender.stop.set()
        thread.join(timeout=60)
