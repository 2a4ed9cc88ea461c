"""The candidate HTTP stack for `ggufops serve`, built far enough to measure: uvicorn +
starlette in front of the very same App (model table, loader, generator, metrics).

Only what bench_swap.py drives is here: GET /healthz and /v1/models, POST /v1/completions
(whole answers) and POST /admin/models. bench_swap.py --stack asgi starts it in place of
`ggufops serve`; it prints "listening on http://HOST:PORT" as `ggufops serve` does.

    .venv/bin/python bench/asgi_serve.py --store DIR --admin-token-file FILE [--port 0]

Needs `pip install uvicorn starlette` (not ggufops dependencies: see the README's decision).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ggufops.httpjson import HttpError, parse_json
from ggufops.serve import app as server


class Captured:
    """A Writer that keeps the one JSON answer of a whole (not streamed) completion."""

    def __init__(self) -> None:
        self.status = 500
        self.body: Any = None

    def send_json(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    def start_events(self) -> None:
        raise HttpError(400, "streaming is not part of this measurement")

    def send_event(self, data: str) -> None:
        raise HttpError(400, "streaming is not part of this measurement")


def build(app: server.App) -> Starlette:
    async def body_of(request: Request) -> Any:
        return parse_json(await request.body(), app.config.limits.max_depth)

    async def completions(request: Request) -> JSONResponse:
        out = Captured()
        try:
            body = await body_of(request)
        except HttpError as e:
            return JSONResponse(e.body(), e.status)
        await run_in_threadpool(app.generator.handle, out, "completions", body)
        return JSONResponse(out.body, out.status)

    async def admin_load(request: Request) -> JSONResponse:
        try:
            app.authorize(request.headers.get("authorization"))
            status, reply = await run_in_threadpool(app.admin_load, await body_of(request))
        except HttpError as e:
            return JSONResponse(e.body(), e.status)
        return JSONResponse(reply, status)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse(app.models())

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(app.health())

    return Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/admin/models", admin_load, methods=["POST"]),
        Route("/v1/models", models), Route("/healthz", health)])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--admin-token-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = server.ServeConfig(store=args.store, port=args.port, n_threads=args.threads,
                                admin_token=server.read_token(args.admin_token_file))
    app = server.App(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)  # connections queue until uvicorn accepts them
    host, port = sock.getsockname()
    print(f"asgi serve: listening on http://{host}:{port}", flush=True)
    uvicorn.Server(uvicorn.Config(build(app), log_level="warning", timeout_keep_alive=15,
                                  limit_concurrency=256)).run(sockets=[sock])
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
