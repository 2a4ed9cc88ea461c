"""The fleet's Python API, as the CLI and CI call it: status, commit status, host history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufops import git
from ggufops.artifacts import s3config
from ggufops.errors import UsageError
from ggufops.fleet.view import (
    FleetView,
    commit_state,
    desired_at,
    read_reports,
    status_context,
    summary,
    view,
)
from ggufops.gitops import github


def branch_head(root: Path, *, remote: str, branch: str, fetch: bool) -> str:
    """The ref of the branch the agents follow: <remote>/<branch> (fetched first), else the
    local branch when the clone has no such remote."""
    if fetch and git.remote_url(root, remote):
        git.fetch_branch(root, remote, branch, timeout=60)
    for ref in (f"{remote}/{branch}", branch):
        if git.resolve(root, ref):
            return ref
    raise UsageError(f"neither {remote}/{branch} nor {branch} exists in {root}; pass --ref")


def fleet_status(root: Path, env: str, *, ref: str | None, remote: str = "origin",
                 branch: str = "main", fetch: bool = True,
                 stale_after: float = 60.0) -> FleetView:
    start = ref or branch_head(root, remote=remote, branch=branch, fetch=fetch)
    desired = desired_at(root, env, start)
    return view(desired, read_reports(s3config.resolve(root), env), stale_after)


def post_commit_status(fleet: FleetView, environ: Mapping[str, str], root: Path,
                       remote: str = "origin") -> str:
    """Set `ggufops/<env>` on the environment's commit; the state set."""
    token = github.token(environ)
    repo = github.repository(environ, git.remote_url(root, remote))
    if not token or not repo:
        raise UsageError("--github-status needs GITHUB_TOKEN and GITHUB_REPOSITORY "
                         "(owner/name)")
    state = commit_state(fleet)
    github.Client.from_env(environ, repo, token).create_status(
        fleet.desired.commit, state=state, context=status_context(fleet.desired.environment),
        description=summary(fleet))
    return state


@dataclass(frozen=True)
class HostApplied:
    host: str
    commit: str
    at: str
    subject: str

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "commit": self.commit, "at": self.at,
                "subject": self.subject}


def host_history(root: Path, env: str) -> list[HostApplied]:
    """When each host applied each commit (from the fleet status in S3), oldest first."""
    reports = read_reports(s3config.resolve(root), env)
    rows = [HostApplied(seen.report.host, a.commit, a.at, _subject(root, a.commit))
            for seen in reports for a in seen.report.applied]
    return sorted(rows, key=lambda r: (r.at, r.host))


def _subject(root: Path, commit: str) -> str:
    if not git.resolve(root, commit):
        return "(not in this clone: fetch)"
    return git.out(["log", "-1", "--format=%s", commit], root).strip()


def format_host_history(rows: list[HostApplied]) -> str:
    if not rows:
        return "no host has published an applied commit for this environment"
    width = max(len(r.host) for r in rows)
    lines = [f"{'APPLIED AT':<20}  {'HOST':<{width}}  COMMIT        CHANGE"]
    lines += [f"{r.at[:19].replace('T', ' '):<20}  {r.host:<{width}}  {r.commit[:12]}  "
              f"{r.subject}" for r in rows]
    return "\n".join(lines)
