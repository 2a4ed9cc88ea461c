"""`ggufops ab` on a live server: a toy primary (2.0.0) and a 50% canary (2.1.0) in a real
`ggufops serve`, 200 requests from 200 users (a quarter of them rated), then the report
exactly as `ggufops ab` prints it.

    .venv/bin/python -m bench.bench_ab [--requests 200]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ggufops.artifacts.store import ArtifactStore, file_sha256
from ggufops.llama import toy
from testing.repos import make_registry, set_environment
from testing.runtime import GGUFOPS, MODEL, TOKEN, Proc, free_port, http, serve_args
from testing.toys import TOY_DIR


def load(proc: Proc, store: ArtifactStore, model: Path, version: str, canary: bool) -> None:
    digest = file_sha256(model)
    shutil.copyfile(model, store.path_for(digest))
    role = {"role": "canary", "weight": 50} if canary else {}
    body = {"name": MODEL, "version": version, "sha256": digest, **role,
            "inference": {"temperature": 0.0, "max_tokens": 8}}
    status, reply = http("POST", f"{proc.url}/admin/models", body, token=TOKEN)
    assert status == 201, reply


def traffic(url: str, requests: int) -> None:
    for user in range(requests):
        body = {"model": MODEL, "prompt": "def " * (1 + user % 5), "user": f"u{user}"}
        status, answer = http("POST", f"{url}/v1/completions", body)
        assert status == 200, answer
        if user % 4 == 0:  # users of the canary rate it a little lower
            rating = 3 + user % 3 if "v2.0.0" in answer["model"] else 2 + user % 3
            http("POST", f"{url}/v1/feedback", {"id": answer["id"], "rating": rating})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    models = toy.build_toy_set(TOY_DIR, names=["baseline", "improved"])
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as name:
        tmp = Path(name)
        store = ArtifactStore(tmp / "store")
        store.prepare()
        (tmp / "token").write_text(TOKEN)
        proc = Proc(serve_args(store.root, tmp / "token", port=free_port()), tmp / "serve.log")
        try:
            load(proc, store, models["baseline"], "2.0.0", canary=False)
            load(proc, store, models["improved"], "2.1.0", canary=True)
            traffic(proc.url, args.requests)
            repo = make_registry(tmp / "registry")
            set_environment(repo, "production", {MODEL: "2.0.0"})
            done = subprocess.run([str(GGUFOPS), "-C", str(repo), "ab", "--env", "production",
                                   "--model", MODEL, "--host", proc.url, "--token-file",
                                   str(tmp / "token")], capture_output=True, text=True,
                                  check=True)
            print(done.stdout, end="")
        finally:
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
