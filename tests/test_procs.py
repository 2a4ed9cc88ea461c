"""procs.py and hashing.py: process plumbing and sha256, each written once."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ggufops.hashing import READ_CHUNK, SHA256_HEX, file_sha256
from ggufops.procs import LineChild, free_port, run_python

PACKAGE = Path(__file__).resolve().parents[1] / "tools" / "ggufops"
TESTING = Path(__file__).resolve().parents[1] / "testing"
BENCH = Path(__file__).resolve().parents[1] / "bench"

# A parent that starts a grandchild with die_with_parent, waits until the grandchild has
# installed its SIGTERM handler (else the signal could kill it before), prints its pid and
# exits. The grandchild writes a file when SIGTERM arrives (whole, by a rename: the test sees
# it exist only once its text is there).
ORPHAN_SCRIPT = """
import subprocess, sys, time
from pathlib import Path
from ggufops.procs import die_with_parent
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
from pathlib import Path
def stop(*_):
    Path(sys.argv[1] + ".tmp").write_text("SIGTERM")
    Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
Path(sys.argv[1] + ".ready").write_text("")
while True:
    time.sleep(1)
''', sys.argv[1]], preexec_fn=die_with_parent())
ready = Path(sys.argv[1] + ".ready")
deadline = time.monotonic() + 60
while not ready.exists() and time.monotonic() < deadline:  # its handler is installed
    time.sleep(0.02)
print(child.pid, flush=True)
"""


def wait_until(condition: object, what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not callable(condition) or not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_a_child_gets_sigterm_when_its_parent_dies(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(marker)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    wait_until(lambda: Path(f"{marker}.ready").exists(), "the grandchild to start")
    parent.stdout.close()
    parent.wait()  # the parent is gone: its child must be told so, with SIGTERM
    try:
        wait_until(marker.exists, "the grandchild's SIGTERM handler")
        assert marker.read_text() == "SIGTERM"
    finally:
        if not marker.exists():
            os.kill(grandchild, 9)


def test_run_python_sends_the_request_and_reads_the_answer() -> None:
    code = ("import json, sys; req = json.load(sys.stdin); print('noise'); "
            "print(json.dumps({'twice': req['n'] * 2})); print('warned', file=sys.stderr)")
    child = run_python(["-c", code], request={"n": 21})
    assert child.returncode == 0
    assert child.last_json() == {"twice": 42}
    assert child.last_error_line() == "warned"


def test_run_python_reports_a_non_json_answer_and_an_exit_status() -> None:
    child = run_python(["-c", "import sys; print('not json'); sys.exit(3)"])
    assert (child.returncode, child.last_json(), child.last_error_line()) == (3, None, "")


def test_run_python_times_out() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(["-c", "import time; time.sleep(60)"], timeout=0.5)


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port


def test_file_sha256_streams_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(READ_CHUNK * 2 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    assert SHA256_HEX.match(file_sha256(path))
    assert not SHA256_HEX.match(file_sha256(path).upper())


COPIES = {
    "a sha256 pattern": re.compile(r"re\.compile\(r?[\"']\^\[0-9a-f\]\{64\}"),
    "a free port helper": re.compile(r"def _?free_port\("),
    "a parent-death signal": re.compile(r"prctl\("),
    "a whole-file sha256": re.compile(r"sha256\([^)]*read_bytes\(\)"),
    "a percentile": re.compile(r"def _?(percentile|interpolated|nearest_rank)\("),
    "a JSON-line child's stdout swap": re.compile(r"os\.dup2\(2, 1\)"),
}
HOMES = {"a sha256 pattern": "hashing.py", "a free port helper": "procs.py",
         "a parent-death signal": "procs.py", "a whole-file sha256": "",
         "a percentile": "percentile.py", "a JSON-line child's stdout swap": "procs.py"}


@pytest.mark.parametrize("what", sorted(COPIES))
def test_one_home_each(what: str) -> None:
    """No module but its home writes it again (tests may hash small byte strings)."""
    pattern = COPIES[what]
    found = [f"{p.relative_to(PACKAGE.parents[1])}" for root in (PACKAGE, TESTING, BENCH)
             for p in sorted(root.rglob("*.py")) if pattern.search(p.read_text())]
    home = [f"tools/ggufops/{HOMES[what]}"] if HOMES[what] else []
    assert found == home


# A LineChild's other side: answers {"echo": x} with {"got": x}, prints junk on stdout (it
# must go to stderr, not into a reply), says "dying" on stderr and exits 3 on {"die": 1},
# and sleeps on {"hang": 1}.
LINE_CHILD = """
import json, sys, time
from ggufops import procs
def respond(line):
    req = json.loads(line)
    print("llama.cpp log noise")
    if "die" in req:
        print("dying", file=sys.stderr)
        sys.exit(3)
    if "hang" in req:
        time.sleep(60)
    return {"got": req["echo"]}
procs.answer_lines(respond)
"""


def test_a_line_child_answers_each_request_line_and_keeps_stray_prints_out() -> None:
    child = LineChild([sys.executable, "-c", LINE_CHILD])
    try:
        for value in ("a", 2, [3]):
            child.send({"echo": value})
            assert child.receive(timeout=30) == {"got": value}
        assert child.running()
        assert child.last_error_line() == "llama.cpp log noise"  # stdout noise went here
    finally:
        child.close(grace=5)
    assert child.proc.returncode == 0  # it ended at EOF, not killed


def test_a_line_child_that_dies_answers_none_and_says_why() -> None:
    child = LineChild([sys.executable, "-c", LINE_CHILD])
    try:
        child.send({"die": 1})
        assert child.receive(timeout=30) is None
        assert child.wait() == 3 and child.last_error_line() == "dying"
        with pytest.raises(BrokenPipeError):
            for _ in range(100):  # the pipe buffer may take a few writes before it breaks
                child.send({"echo": "x" * 65536})
    finally:
        child.close()


def test_a_line_child_that_hangs_times_out_and_is_killed_by_close() -> None:
    child = LineChild([sys.executable, "-c", LINE_CHILD])
    child.send({"hang": 1})
    with pytest.raises(TimeoutError):
        child.receive(timeout=0.5)
    assert child.running()
    child.close(grace=0.1)
    assert child.proc.returncode == -9  # killed: it would have slept a minute
    child.close()  # twice is harmless
