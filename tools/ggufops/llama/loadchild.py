"""The register load check's child: `python -m ggufops.llama.loadchild RUNTIME`.

Reads one JSON request per stdin line, {"path": ...}, loads that file with the installed
llama-cpp-python (a 16-token context, weights memory-mapped, freed again) and answers one
JSON line: {"runtime", "loaded", "reason"}. It runs apart from `register` so a llama.cpp
crash or abort on a bad file ends this process, not register, and register itself never
imports numpy or llama.cpp (loadcheck.py starts it once and sends it every check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ggufops import procs
from ggufops.errors import LlamaError

LOAD_CONTEXT = 16  # tokens: enough to build a context, nothing to evaluate


def check(path: Path, runtime: str) -> dict[str, Any]:
    """The answer for `path`: loaded, or llama.cpp's reason for refusing it."""
    try:
        from ggufops.llama import llm  # a broken [llama] install is an answer, not a traceback
    except ImportError as e:
        return {"runtime": None, "loaded": False,
                "reason": f"llama-cpp-python cannot be imported ({e})"}
    try:
        with llm.load(path, n_ctx=LOAD_CONTEXT, n_threads=1):
            return {"runtime": runtime, "loaded": True, "reason": None}
    except LlamaError as e:
        return {"runtime": runtime, "loaded": False, "reason": str(e)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ggufops.llama.loadchild RUNTIME", file=sys.stderr)
        return 2
    procs.answer_lines(lambda line: check(Path(json.loads(line)["path"]), argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
