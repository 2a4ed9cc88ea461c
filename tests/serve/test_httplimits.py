"""Bounded requests and connections on a real `ggufops serve` process and a real agent's
status endpoint: raw sockets, as a hostile client would send them.

Every wait here is a liveness bound (the client gives up after SOCKET_TIMEOUT, 10 to 60
times the server's own limit), never a speed threshold."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.runtime import TOKEN, Proc, Processes, World, free_port, get, serve_args, wait_for

SOCKET_TIMEOUT = 30.0


@contextlib.contextmanager
def limited_serve(tmp: Path, *extra: str) -> Iterator[Proc]:
    (tmp / "store").mkdir(exist_ok=True)
    token = tmp / "token"
    token.write_text(TOKEN)
    proc = Proc([*serve_args(tmp / "store", token, port=free_port()), *extra],
                tmp / "serve.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """`ggufops serve` with a 1 s header deadline and a 1 s idle timeout."""
    with limited_serve(tmp_path_factory.mktemp("limits"), "--header-timeout", "1",
                       "--idle-timeout", "1", "--max-body", "262144") as proc:
        yield proc


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT)


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP reply (status, headers, body by Content-Length) from `sock`."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"the server closed the connection without a reply: {buffer!r}"
        buffer += data
    head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "the server closed the connection inside a reply"
        body += data
    return int(status_line.split()[1]), headers, body[:length]


def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """Send `request` (and keep the connection open); the reply, as JSON."""
    with connect(url) as sock:
        sock.sendall(request)
        status, headers, body = read_reply(sock)
    return status, headers, json.loads(body)["error"]


def closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes `sock` (True) or sends something (False)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def post(path: str, length: str, *, token: bool = False, body: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {TOKEN}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {length}\r\n\r\n").encode() + body


@pytest.mark.parametrize(("request_bytes", "status", "words"), [
    (post("/v1/completions", "-1"), 400, "Content-Length '-1' is not a number >= 0"),
    (post("/admin/models", "-1", token=True), 400, "is not a number >= 0"),
    (post("/admin/models", "-1"), 401, "admin token"),
    (post("/admin/models", "1000"), 401, "admin token"),  # no body sent, none waited for
    (post("/admin/models", str(10**9), token=True), 413, "over the limit of 262144"),
    (post("/v1/completions", "12abc"), 400, "not a number"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n", 411, "needs a Content-Length"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411,
     "chunked"),
])
def test_bad_lengths_are_refused_before_any_body_is_read(
        serve: Proc, request_bytes: bytes, status: int, words: str) -> None:
    got, headers, error = exchange(serve.url, request_bytes)
    assert (got, words in str(error["message"])) == (status, True), error
    if status != 401:
        assert headers["connection"] == "close"
    assert get(f"{serve.url}/healthz")["status"] == "ok"


def test_deeply_nested_json_is_a_400_not_a_500(serve: Proc) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 70 + b"1" + b"}" * 70):
        status, _, error = exchange(serve.url, post("/v1/completions", str(len(body)),
                                                    body=body))
        assert status == 400 and "nests JSON deeper than 64 levels" in str(error["message"])
    assert "Traceback" not in serve.log_path.read_text()


def test_an_unauthorized_small_body_is_drained_and_the_connection_kept(serve: Proc) -> None:
    body = json.dumps({"name": "m", "version": "1.0.0", "sha256": "0" * 64}).encode()
    with connect(serve.url) as sock:
        sock.sendall(post("/admin/models", str(len(body)), body=body))
        assert read_reply(sock)[0] == 401
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock)[0] == 200


def test_a_half_sent_request_is_cut_at_the_header_deadline(serve: Proc) -> None:
    with connect(serve.url) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_server(sock)


def test_a_trickled_request_is_cut_at_the_header_deadline(serve: Proc) -> None:
    """One header byte every 0.1 s passes any per-read timeout; the deadline still cuts it."""
    line = b"X-Slow: " + b"a" * 600
    cut = False
    with connect(serve.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for byte in line:  # at most 60 s of trickling: 60 times the 1 s deadline
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.1)
        cut = cut or closed_by_server(sock)
    assert cut


def test_an_idle_keep_alive_connection_is_closed(serve: Proc) -> None:
    with connect(serve.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock)[0] == 200
        assert closed_by_server(sock)  # after --idle-timeout 1


def test_connections_over_the_cap_get_503_until_one_closes(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        proc = stack.enter_context(
            limited_serve(tmp_path, "--max-connections", "3", "--idle-timeout", "60"))
        held = [stack.enter_context(connect(proc.url)) for _ in range(3)]
        for sock in held:  # three keep-alive connections, each served once, then idle
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(sock)[0] == 200
        status, headers, error = exchange(proc.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, error["code"]) == (503, "too_many_connections")
        assert headers["retry-after"] == "1"
        held.pop().close()
        assert wait_for(lambda: _healthz_status(proc.url) == 200,
                        what="a free connection slot")


def _healthz_status(url: str) -> int:
    with connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_reply(sock)[0]


# --- the agent's status endpoint -----------------------------------------------------------


@pytest.fixture
def agent(world: World, processes: Processes) -> Proc:
    """A real agent (its server is not running: the endpoint answers regardless)."""
    return processes.agent(world, f"http://127.0.0.1:{free_port()}", interval=5.0)


def test_the_agent_endpoint_refuses_bad_lengths_and_deep_json(agent: Proc) -> None:
    status, _, error = exchange(agent.url, post("/sync", "-1"))
    assert status == 400 and "not a number" in str(error["message"])
    deep = b"[" * 60_000  # within its 64 KiB body limit
    status, _, error = exchange(agent.url, post("/sync", str(len(deep)), body=deep))
    assert status == 400 and "deeper than 64" in str(error["message"])
    status, _, error = exchange(agent.url, post("/sync", str(10**9)))
    assert status == 413
    with connect(agent.url) as sock:  # `curl -X POST .../sync` sends no Content-Length
        sock.sendall(b"POST /sync HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock)[0] == 202
    with connect(agent.url) as sock:
        sock.sendall(b"POST /sync HTTP/1.1\r\n")
        assert closed_by_server(sock)  # the agent's header deadline (10 s)
    assert "Traceback" not in agent.log_path.read_text()
