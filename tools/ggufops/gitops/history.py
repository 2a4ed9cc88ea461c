"""What ran where and when: every deploy and rollback of an environment, from git.

History is git's. Every change ggufops makes to an environment file is a commit whose
message ends with trailers::

    deploy(production): llama3-instruct 2.0.0 -> 2.1.0

    Environment: production
    Model: llama3-instruct
    From-Version: 2.0.0
    To-Version: 2.1.0

(a rollback adds `Rollback-Of: <sha>` and `Reason: ...`; a canary start, ramp or removal
keeps From-Version = To-Version = the primary and adds `Canary-Version:` and
`Canary-Weight:`, weight 0 when the canary was removed). The whole history of an
environment comes from ONE `git log` walk of its file. Commits without trailers (hand
edits, `git revert`, squash merges that lost them) are understood by comparing the file
with its parent, fetched for all of them at once through one `git cat-file --batch`.

A change "lands" when it reaches the default branch: a commit on the branch itself, or
the merge commit that brought it in (whose subject gives the pull request number).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.errors import EnvironmentFileError, YamlError
from ggufops.gitops import configchange, envfile
from ggufops.registry.registry import environment_relpath, version_relpath

ENVIRONMENT = "Environment"
MODEL = "Model"
FROM_VERSION = "From-Version"
TO_VERSION = "To-Version"
ROLLBACK_OF = "Rollback-Of"
REASON = "Reason"
CANARY_VERSION = "Canary-Version"
CANARY_WEIGHT = "Canary-Weight"
CONFIG_CHANGE = "Config-Change"  # a change of the entry's inference overrides alone
CANARY_STEP = "Canary-Step"  # the weight a canary analysis set (100: promoted, 0: aborted)
CANARY_ANALYSIS = "Canary-Analysis"  # its figures (gitops/canarystep.py)
NO_VERSION = "none"  # From-Version of a model's first deploy

DEPLOY = "deploy"
CANARY = "canary"  # a canary started, ramped (primary version unchanged)
ROLLBACK = "rollback"
CONFIG = "config"  # only inference overrides changed (applied without a model load)
EDIT = "edit"  # a change without ggufops trailers (hand edit, merge resolution, ...)
CANARY_STEP_KIND = "canary-step"  # canary analysis: the weight stepped up
PROMOTE = "promote"  # canary analysis: the canary became the primary
ABORT = "abort"  # canary analysis: the canary was removed
ANALYSIS_KINDS = (CANARY_STEP_KIND, PROMOTE, ABORT)

_FIELDS = ("%H", "%P", "%an", "%aI", "%cI", "%s", "%(trailers:unfold,only)", "%b")
_FORMAT = "--format=" + "%x1f".join(_FIELDS) + "%x1e"
_PR_MERGE = re.compile(r"^Merge pull request #(\d+)\b")
_PR_SQUASH = re.compile(r"\(#(\d+)\)\s*$")
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{7,40})")
# A block-style top-level `benchmarks:` key and its indented lines (comments, blanks too).
_BENCHMARKS_BLOCK = re.compile(r"^benchmarks:[^\n]*(?:\n(?:[ \t][^\n]*|#[^\n]*)?)*", re.MULTILINE)


Canary = tuple[str, int]  # (version, weight in percent); weight 0: the canary was removed


def format_message(kind: str, env: str, model: str, from_version: str | None,
                   to_version: str, *, rollback_of: str | None = None,
                   reason: str | None = None, body: str = "",
                   canary: Canary | None = None, change: str | None = None,
                   config: str | None = None) -> str:
    """The commit message of a deploy or rollback: subject, optional body, trailers.

    `change` replaces the subject's `FROM -> TO` (canary changes say what they do).
    """
    what = change or f"{from_version or '(new)'} -> {to_version}"
    subject = f"{kind}({env}): {model} {what}"
    trailers: list[tuple[str, str]] = []
    if rollback_of:
        trailers.append((ROLLBACK_OF, rollback_of))
    if reason and reason.strip():
        trailers.append((REASON, " ".join(reason.split())))
    trailers += [(ENVIRONMENT, env), (MODEL, model),
                 (FROM_VERSION, from_version or NO_VERSION), (TO_VERSION, to_version)]
    if canary is not None:
        trailers += [(CANARY_VERSION, canary[0]), (CANARY_WEIGHT, str(canary[1]))]
    if config:
        trailers.append((CONFIG_CHANGE, config))
    parts = [subject, body.strip(), "\n".join(f"{k}: {v}" for k, v in trailers)]
    return "\n\n".join(p for p in parts if p) + "\n"


@dataclass
class Deployment:
    """One model's change in one environment, in the order it landed."""

    commit: str
    kind: str
    env: str
    model: str
    from_version: str | None
    to_version: str | None
    author: str
    authored_at: str
    deployed_at: str  # when it reached the branch (the merge's time for a merged PR)
    landed_by: str  # the branch commit that brought it: itself, or the merge
    pr: int | None
    subject: str
    rollback_of: str | None = None
    reason: str | None = None
    rolled_back_by: str | None = None
    metrics: dict[str, Any] | None = None
    canary_version: str | None = None  # the canary this change set (or removed)
    canary_weight: int | None = None  # its weight after the change; 0: removed
    status: str | None = None  # kind lifecycle: deprecated, archived or restored
    config_change: str | None = None  # overrides changed: `max_tokens 16 -> 8`
    analysis: str | None = None  # a canary analysis's figures (Canary-Analysis trailer)

    @property
    def rolled_back(self) -> bool:
        return self.rolled_back_by is not None

    def as_dict(self) -> dict[str, Any]:
        # vars(), not dataclasses.asdict: no deep copy, 10x faster over thousands of rows
        return {**vars(self), "rolled_back": self.rolled_back}


@dataclass
class _Commit:
    sha: str
    parents: list[str]
    author: str
    authored_at: str
    committed_at: str
    subject: str
    trailers: dict[str, str]
    body: str
    order: int = 0  # position in the walk, 0 = newest
    landed_by: str = ""
    rank: int = -1  # landing order on the branch, higher = later


@dataclass
class _Walk:
    commits: list[_Commit]
    by_sha: dict[str, _Commit] = field(default_factory=dict)


def read_history(root: Path, env: str, ref: str, *, model: str | None = None,
                 with_metrics: bool = True) -> list[Deployment]:
    """Every change to `env` reachable from `ref`, oldest first (one log walk)."""
    path = environment_relpath(env)
    walk = _walk(root, ref, path)
    deployments = _deployments(root, walk, env, path)
    _mark_rolled_back(deployments)
    if model is not None:
        deployments = [d for d in deployments if d.model == model]
    if with_metrics:
        _attach_metrics(root, ref, deployments)
    return deployments


def _walk(root: Path, ref: str, path: str) -> _Walk:
    # --full-history with parent rewriting (--parents) keeps every merge, with parents
    # rewritten to the nearest commits in the walk: enough to tell what each merge landed.
    records = git.log_records(root, ["--full-history", "--parents", "--topo-order", _FORMAT,
                                     ref, "--", path])
    commits = [_commit(fields, i) for i, fields in enumerate(records) if len(fields) >= 8]
    walk = _Walk(commits, {c.sha: c for c in commits})
    _assign_landing(walk)
    return walk


def _commit(fields: list[str], order: int) -> _Commit:
    sha, parents, author, authored, committed, subject, trailers, body = fields[:8]
    return _Commit(sha, parents.split(), author, authored, committed, subject,
                   _parse_trailers(trailers), body, order)


def _parse_trailers(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            found.setdefault(key.strip().lower(), value.strip())
    return found


def _assign_landing(walk: _Walk) -> None:
    """Give each commit the branch commit that landed it and that commit's rank."""
    if not walk.commits:
        return
    mainline: list[_Commit] = []
    commit: _Commit | None = walk.commits[0]
    while commit is not None and not commit.landed_by:
        commit.landed_by = commit.sha
        mainline.append(commit)
        commit = walk.by_sha.get(commit.parents[0]) if commit.parents else None
    for rank, merge in enumerate(reversed(mainline)):
        merge.rank = rank
        stack = [p for p in merge.parents[1:] if p in walk.by_sha]
        while stack:
            side = walk.by_sha[stack.pop()]
            if side.landed_by:
                continue
            side.landed_by, side.rank = merge.sha, rank
            stack.extend(p for p in side.parents if p in walk.by_sha)


def _deployments(root: Path, walk: _Walk, env: str, path: str) -> list[Deployment]:
    changes = [c for c in walk.commits if len(c.parents) <= 1]
    result: list[Deployment] = []
    untagged: list[_Commit] = []
    for commit in changes:
        event = _from_trailers(commit, walk, env)
        if event is None:
            untagged.append(commit)
        else:
            result.append(event)
    result.extend(_from_contents(root, untagged, walk, env, path))
    order = {c.sha: (c.rank, -c.order) for c in walk.commits}
    result.sort(key=lambda d: order.get(d.commit, (-1, 0)))
    return result


def _from_trailers(commit: _Commit, walk: _Walk, env: str) -> Deployment | None:
    t = commit.trailers
    if t.get(ENVIRONMENT.lower()) != env or not t.get(MODEL.lower()) \
            or not t.get(TO_VERSION.lower()):
        return None
    rollback_of = t.get(ROLLBACK_OF.lower())
    canary = _canary_trailers(t)
    config = t.get(CONFIG_CHANGE.lower())
    kind = ROLLBACK if rollback_of or commit.subject.startswith(f"{ROLLBACK}(") else \
        CANARY if canary is not None else CONFIG if config else DEPLOY
    from_version = t.get(FROM_VERSION.lower())
    event = _event(commit, walk, env, kind, model=t[MODEL.lower()],
                   from_version=None if from_version in (None, NO_VERSION, "") else from_version,
                   to_version=t[TO_VERSION.lower()], rollback_of=rollback_of,
                   reason=t.get(REASON.lower()))
    if canary is not None:
        event.canary_version, event.canary_weight = canary
    event.config_change = config or None
    _mark_analysis(event, commit)
    return event


def _mark_analysis(event: Deployment, commit: _Commit) -> None:
    """A canary analysis's commit: its kind from the subject, its figures from the trailer."""
    figures = commit.trailers.get(CANARY_ANALYSIS.lower())
    kind = commit.subject.split("(", 1)[0]
    if figures and kind in ANALYSIS_KINDS:
        event.kind, event.analysis = kind, figures


def _canary_trailers(trailers: dict[str, str]) -> Canary | None:
    version = trailers.get(CANARY_VERSION.lower())
    weight = trailers.get(CANARY_WEIGHT.lower(), "")
    if not version:
        return None
    return version, int(weight) if weight.isdigit() else 0


def _event(commit: _Commit, walk: _Walk, env: str, kind: str, *, model: str,
           from_version: str | None, to_version: str | None, rollback_of: str | None,
           reason: str | None) -> Deployment:
    landing = walk.by_sha.get(commit.landed_by, commit)
    return Deployment(
        commit=commit.sha, kind=kind, env=env, model=model, from_version=from_version,
        to_version=to_version, author=commit.author, authored_at=commit.authored_at,
        deployed_at=landing.committed_at, landed_by=landing.sha,
        pr=_pr_number(landing.subject) or _pr_number(commit.subject),
        subject=commit.subject, rollback_of=rollback_of, reason=reason)


def _pr_number(subject: str) -> int | None:
    match = _PR_MERGE.match(subject) or _PR_SQUASH.search(subject)
    return int(match.group(1)) if match else None


_State = tuple[str | None, Canary | None, str]  # a model's (version, canary, overrides JSON)
_NOTHING: _State = (None, None, "{}")


def _from_contents(root: Path, commits: list[_Commit], walk: _Walk, env: str,
                   path: str) -> Iterator[Deployment]:
    """Changes of commits without trailers, from the file at the commit and its parent."""
    specs = [s for c in commits for s in (f"{c.sha}:{path}", f"{c.sha}^:{path}")]
    contents = git.cat_objects(root, specs)
    parsed: dict[bytes, dict[str, _State]] = {}
    for i, commit in enumerate(commits):
        after, before = _states(contents[2 * i], path, parsed), \
            _states(contents[2 * i + 1], path, parsed)
        reverted = _REVERTS.search(commit.body)
        kind = ROLLBACK if reverted or commit.subject.startswith(f"{ROLLBACK}(") else EDIT
        for model in sorted(set(before) | set(after)):
            old, new = before.get(model, _NOTHING), after.get(model, _NOTHING)
            if old == new:
                continue
            undone = re.search(rf"This reverts commit ([0-9a-f]{{7,40}}) \({re.escape(model)}\)",
                               commit.body) or reverted
            event = _event(commit, walk, env, kind, model=model, from_version=old[0],
                           to_version=new[0], rollback_of=undone.group(1) if undone else None,
                           reason=commit.trailers.get(REASON.lower()))
            if old[1] != new[1]:
                event.canary_version = (new[1] or old[1] or ("", 0))[0]
                event.canary_weight = new[1][1] if new[1] else 0
            if old[2] != new[2]:
                event.config_change = configchange.describe_json(old[2], new[2])
                if old[:2] == new[:2] and not reverted:
                    event.kind = CONFIG
            yield event


def _states(content: bytes | None, path: str, cache: dict[bytes, dict[str, _State]]
            ) -> dict[str, _State]:
    if content is None:
        return {}
    if content not in cache:
        try:
            cache[content] = {m: (str(e["version"]) if "version" in e else None,
                                  envfile.canary(e), configchange.overrides_json(e))
                              for m, e in envfile.read_models(content, path).items()}
        except EnvironmentFileError:
            cache[content] = {}
    return cache[content]


def _mark_rolled_back(deployments: list[Deployment]) -> None:
    by_sha = {d.commit: d for d in deployments}
    for rollback in deployments:
        target_sha = rollback.rollback_of
        if not target_sha:
            continue
        target = by_sha.get(target_sha) or next(
            (d for d in deployments if d.commit.startswith(target_sha)), None)
        if target is not None:
            for d in deployments:  # a commit may have changed several models
                if d.commit == target.commit and d.model == rollback.model:
                    d.rolled_back_by = rollback.commit


def _attach_metrics(root: Path, ref: str, deployments: list[Deployment]) -> None:
    """The gate results each version's file records (benchmarks.metrics), one cat-file."""
    keys = sorted({(d.model, d.to_version) for d in deployments if d.to_version})
    contents = git.cat_objects(root, [f"{ref}:{version_relpath(m, v)}" for m, v in keys])
    metrics: dict[tuple[str, str], dict[str, Any] | None] = {}
    for key, content in zip(keys, contents, strict=True):
        metrics[key] = _metrics_of(content, version_relpath(*key))
    for d in deployments:
        if d.to_version:
            d.metrics = metrics.get((d.model, d.to_version))


def _metrics_of(content: bytes | None, where: str) -> dict[str, Any] | None:
    if content is None:
        return None
    text = content.decode(errors="replace")
    block = _BENCHMARKS_BLOCK.search(text)  # parse the block alone: 4x faster than the file
    try:
        data = yamlio.parse(block.group(0) if block else text, Path(where)).data
    except YamlError:
        return None
    bench = data.get("benchmarks") if isinstance(data, dict) else None
    found = bench.get("metrics") if isinstance(bench, dict) else None
    return dict(found) if isinstance(found, dict) else None


def versions_ever(deployments: Iterable[Deployment], model: str) -> set[str]:
    """Every version of `model` the environment ran, according to its history."""
    seen: set[str] = set()
    for d in deployments:
        if d.model == model:
            seen.update(v for v in (d.from_version, d.to_version) if v)
    return seen


# --- output --------------------------------------------------------------------------

def format_table(deployments: list[Deployment]) -> str:
    if not deployments:
        return "no deploys or rollbacks recorded for this environment yet"
    header = ("DEPLOYED AT", "KIND", "MODEL", "FROM -> TO", "COMMIT", "PR", "AUTHOR",
              "ROLLED BACK", "GATE")
    rows = [(d.deployed_at, d.kind, d.model, change_text(d), d.commit[:10],
             f"#{d.pr}" if d.pr else "-", d.author,
             f"yes ({d.rolled_back_by[:10]})" if d.rolled_back_by else "no",
             _metrics_text(d.metrics)) for d in deployments]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in (header, *rows))


def change_text(d: Deployment) -> str:
    """FROM -> TO in words: `2.0.0 -> 2.0.0 + canary 2.1.0 (10%)`."""
    if d.status is not None:
        return f"{d.to_version} {d.status}"
    text = f"{d.from_version or '(new)'} -> {d.to_version or '(removed)'}"
    if d.config_change:
        text += f" [{d.config_change}]"
    if d.analysis:
        text += f" [{d.analysis}]"
    if d.canary_version is None:
        return text
    if d.canary_weight:
        return f"{text} + canary {d.canary_version} ({d.canary_weight}%)"
    return f"{text} (canary {d.canary_version} removed)"


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    shown = [k for k in ("perplexity", "tg_tokens_per_s", "latency_p95_ms") if k in metrics]
    return " ".join(f"{k}={_number(metrics[k])}" for k in shown) or "recorded"


def _number(value: Any) -> str:
    """4 significant digits, without exponents: 16.8, 0.0123, 16,030."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    model_name TEXT NOT NULL,
    version TEXT,
    deployed_at TEXT NOT NULL,
    rolled_back INTEGER NOT NULL,
    metrics JSON,
    kind TEXT NOT NULL,
    from_version TEXT,
    commit_sha TEXT NOT NULL,
    author TEXT NOT NULL,
    authored_at TEXT NOT NULL,
    pr INTEGER,
    rollback_of TEXT,
    rolled_back_by TEXT,
    reason TEXT,
    subject TEXT NOT NULL,
    canary_version TEXT,
    canary_weight INTEGER,
    config_change TEXT,
    analysis TEXT
);
CREATE INDEX IF NOT EXISTS deployments_env_model ON deployments (env, model_name, deployed_at);
"""

_COLUMNS = ("env", "model_name", "version", "deployed_at", "rolled_back", "metrics", "kind",
            "from_version", "commit_sha", "author", "authored_at", "pr", "rollback_of",
            "rolled_back_by", "reason", "subject", "canary_version", "canary_weight",
            "config_change", "analysis")
_ADDED_COLUMNS = {"canary_version": "TEXT", "canary_weight": "INTEGER",
                  "config_change": "TEXT", "analysis": "TEXT"}  # newer than the table


def write_sqlite(path: Path, env: str, deployments: list[Deployment]) -> int:
    """Replace `env`'s rows of table `deployments` in the SQLite file at `path`.

    Rows of other environments already in the file are kept. The new file is built
    beside the old one and renamed over it, so readers never see half of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent,
                                     delete=False) as handle:
        tmp = Path(handle.name)
    try:
        if path.is_file():
            tmp.write_bytes(path.read_bytes())
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.executescript(_SCHEMA)
            _add_missing_columns(db)
            db.execute("DELETE FROM deployments WHERE env = ?", (env,))
            db.executemany(f"INSERT INTO deployments ({', '.join(_COLUMNS)}) VALUES "
                           f"({', '.join('?' for _ in _COLUMNS)})",
                           [_row(d) for d in deployments])
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(deployments)


def _row(d: Deployment) -> tuple[Any, ...]:
    return (d.env, d.model, d.to_version, d.deployed_at, int(d.rolled_back),
            json.dumps(d.metrics, sort_keys=True) if d.metrics is not None else None, d.kind,
            d.from_version, d.commit, d.author, d.authored_at, d.pr, d.rollback_of,
            d.rolled_back_by, d.reason, d.subject, d.canary_version, d.canary_weight,
            d.config_change, d.analysis)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A file written by an older ggufops lacks the newer (nullable) columns: add them."""
    have = {row[1] for row in db.execute("PRAGMA table_info(deployments)")}
    for name, kind in _ADDED_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE deployments ADD COLUMN {name} {kind}")
