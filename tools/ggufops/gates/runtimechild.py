"""The runtime gate's child: measures one model under the interpreter that runs it.

`python -m ggufops.gates.runtimechild` (started by runtimegate.py with the runtime's own
Python and PYTHONPATH pointing at this ggufops) reads one JSON request per stdin line and
answers with one JSON line on stdout. It imports only llm.py, numpy and llama-cpp-python,
so a bare venv with `pip install llama-cpp-python numpy` is a runtime.

$GGUFOPS_RUNTIME_LLAMA_ARGS (a JSON object) adds llama_cpp.Llama settings to every load,
e.g. {"type_k": 2} (a q4_0 K cache): a runtime that differs by a setting, not a build.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ggufops import procs
from ggufops.errors import LlamaError
from ggufops.llama import llm

LLAMA_ARGS_ENV = "GGUFOPS_RUNTIME_LLAMA_ARGS"
CLOCKS: dict[str, llm.Clock] = {"thread": time.thread_time, "wall": time.perf_counter}


class Child:
    """One loaded model at a time, and the requests that measure it."""

    def __init__(self) -> None:
        self.model: llm.Model | None = None
        self.llama_args: dict[str, Any] = json.loads(os.environ.get(LLAMA_ARGS_ENV) or "{}")

    def loaded(self) -> llm.Model:
        if self.model is None:
            raise LlamaError("no model loaded: send a load request first")
        return self.model

    def info(self, _: dict[str, Any]) -> dict[str, Any]:
        return {**llm.versions(), "python": sys.executable,
                "python_version": platform.python_version(),
                "system_info": llm.system_info(), "llama_args": self.llama_args}

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        self.close({})
        self.model = llm.load(Path(req["path"]), n_ctx=int(req["n_ctx"]),
                              n_threads=int(req["n_threads"]), llama_args=self.llama_args)
        return {"n_vocab": self.model.n_vocab, "n_params": llm.n_params(self.model),
                "load_ms": self.model.load_ms}

    def close(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.model is not None:
            self.model.close()
            self.model = None
        return {}

    def tokenize(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": llm.tokenize(self.loaded(), Path(req["text_path"]).read_bytes())}

    def logits(self, req: dict[str, Any]) -> dict[str, Any]:
        """One perplexity chunk's scored logits (float32, as decoded) into req["out"]."""
        chunks = llm.chunk_logits(self.loaded(), req["tokens"], int(req["n_ctx"]))
        logits, targets = next(chunks)
        with Path(req["out"]).open("wb") as out:
            np.save(out, logits)
            np.save(out, targets)
        return {"rows": int(logits.shape[0])}

    def text_nll(self, req: dict[str, Any]) -> dict[str, Any]:
        text = Path(req["text_path"]).read_bytes()[: int(req["n_bytes"])]
        nll = llm.text_nll(self.loaded(), text, n_ctx=int(req["n_ctx"]))
        return {"nll_sum": nll.nll_sum, "n_tokens": nll.n_tokens, "n_bytes": nll.n_bytes,
                "bits_per_byte": nll.bits_per_byte}

    def pp(self, req: dict[str, Any]) -> dict[str, Any]:
        clock, model = CLOCKS[req["clock"]], self.loaded()
        return {"value": max(llm.prompt_tokens_per_s(model, req["tokens"], clock=clock)
                             for _ in range(int(req["repeat"])))}

    def tg(self, req: dict[str, Any]) -> dict[str, Any]:
        clock, model = CLOCKS[req["clock"]], self.loaded()
        return {"value": max(llm.generation_tokens_per_s(model, int(req["n"]), clock=clock)
                             for _ in range(int(req["repeat"])))}

    def latency(self, req: dict[str, Any]) -> dict[str, Any]:
        clock, model = CLOCKS[req["clock"]], self.loaded()
        prompt = bytes.fromhex(req["prompt_hex"])
        return {"value": min(llm.request_latency_ms(model, prompt, int(req["max_tokens"]),
                                                    clock=clock)
                             for _ in range(int(req["repeat"])))}

    def handler(self, command: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        if command not in ("info", "load", "close", "tokenize", "logits", "text_nll", "pp",
                           "tg", "latency"):
            raise LlamaError(f"unknown request {command!r}")
        method: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self, command)
        return method


def answer(child: Child, line: str) -> dict[str, Any]:
    """The reply to one request line: {"ok": true, ...} or {"ok": false, "error": ...}."""
    try:
        req = json.loads(line)
        return {"ok": True, **child.handler(str(req.get("cmd")))(req)}
    except (LlamaError, ValueError, KeyError, TypeError, OSError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main() -> int:
    """Answer on the original stdout (procs.answer_lines); the model is unloaded at EOF."""
    child = Child()
    procs.answer_lines(lambda line: answer(child, line))
    child.close({})
    return 0


if __name__ == "__main__":
    sys.exit(main())
