"""When a canary step is due: the time its weight was set, read from git, the same on every
host whatever commit it applied (a real repository with a bare remote)."""

from __future__ import annotations

import os
import subprocess

from ggufops import git as gitcalls
from ggufops.agent.canarywatch import step_time
from ggufops.registry.records import Canary, CanaryAnalysis
from testing.repos import git
from testing.scratch import MODEL, OTHER, Scratch, cli, ship

PLAN = CanaryAnalysis((10, 25, 50, 100), 60.0)


def test_the_step_time_is_the_commit_that_set_the_weight(scratch: Scratch) -> None:
    s = scratch
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    env = {"GIT_COMMITTER_DATE": "2026-11-30T10:00:00+00:00"}
    result = cli(s.root, "deploy", f"{MODEL}@2.0.0", "--env", "production", "--canary", "10",
                 "--steps", "10,25,50,100", "--direct")
    assert result.exit_code == 0, result.output + result.stderr
    subprocess.run(["git", "commit", "-q", "--amend", "--no-edit"], cwd=s.root, check=True,
                   env={**os.environ, **env})  # a known committer time
    step = git(s.root, "rev-parse", "HEAD")
    ship(s.root, f"{OTHER}@1.0.0")  # an unrelated change of production lands later
    later = git(s.root, "rev-parse", "HEAD")
    canary = Canary("2.0.0", 10, PLAN)
    expected = gitcalls.commit_time(s.root, step)
    assert expected == 1796032800  # 2026-11-30T10:00:00Z
    assert step_time(s.root, "production", later, MODEL, canary) == expected
    assert step_time(s.root, "production", step, MODEL, canary) == expected
    # a weight no change set: the applied commit's own time
    assert step_time(s.root, "production", later, MODEL, Canary("2.0.0", 25, PLAN)) == \
        gitcalls.commit_time(s.root, later)
