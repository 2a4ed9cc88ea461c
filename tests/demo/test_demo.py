"""`ggufops demo`: the whole story runs green and leaves nothing running."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ggufops.demo.story import run_demo


def _ours(workdir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(workdir) in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    out = io.StringIO()
    steps = run_demo(workdir, out=out)
    text = out.getvalue()
    assert [s.ok for s in steps] == [True] * 14, text
    results = {s.title.split(":")[0]: s.result for s in steps}
    rollback = next(r for t, r in results.items() if t.startswith("roll production back"))
    assert rollback.startswith("serving 2.0.0 again")  # timings are bench_rollback's business
    blocked = next(s for s in steps if "degraded" in s.title)
    assert "gate failed on perplexity" in blocked.result
    assert "❌" in (workdir / "gate-staging-2.2.0.md").read_text()
    assert "✅" in (workdir / "gate-production-2.1.0.md").read_text()
    rows = [line.split() for line in text.splitlines() if "llama3-instruct" in line]
    kinds = [row[1] for row in rows if len(row) > 2 and row[0][:4].isdigit() and "T" in row[0]]
    assert kinds == ["deploy", "deploy", "rollback", "deploy", "rollback", "canary",
                     "lifecycle", "lifecycle"], text
    auto = next(s for s in steps if "rollback trigger" in s.title)
    assert auto.result.startswith("rolled back by the agent"), text
    assert "metric=rating value=1 threshold=3.5 window=120s host=host-1" in auto.result
    archived = next(s for s in steps if s.title.startswith("deprecate and archive"))
    assert archived.result.endswith("its deploy refused")
    canary = next(s for s in steps if s.title.startswith("canary"))
    assert canary.result.startswith("primary 2.0.0 + canary 2.1.0 (25%)")
    fleet = next(s for s in steps if "held back" in s.title)
    assert fleet.result.startswith("drift on host-2 shown (exit 4)"), text
    assert _ours(workdir) == []  # serve, agent and weed are all stopped


def test_a_terminated_demo_stops_what_it_started(tmp_path: Path) -> None:
    """SIGTERM (from `timeout` or systemd) stops the demo like Ctrl-C: no S3 server, serve
    or agent is left running."""
    workdir = tmp_path / "demo"
    exe = Path(sys.executable).parent / "ggufops"
    proc = subprocess.Popen([str(exe), "demo", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:  # the S3 server runs once step 2 begins
        if line.startswith("== 2."):
            break
    assert [p for p in _ours(workdir) if "weed" in " ".join(p.cmdline())], "no S3 server ran"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) != 0
    assert "interrupted" in rest
    assert _ours(workdir) == []
