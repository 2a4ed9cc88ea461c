"""`ggufops history`: what ran where and when, from one git log walk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ggufops import git as gitops_git
from ggufops.gitops import history
from testing.repos import git, git_commit
from testing.scratch import MODEL, OTHER, Scratch, cli, ship, ship_canary


def deploy_branch_and_merge(s: Scratch, ref: str, env: str, pr: int) -> str:
    """Deploy as a pull request would: branch, then a merge commit naming PR #pr."""
    assert cli(s.root, "deploy", ref, "--env", env).exit_code == 0
    name, version = ref.split("@")
    branch = f"deploy/{env}/{name}-{version}"
    sha = git(s.root, "rev-parse", branch)
    git(s.root, "merge", "-q", "--no-ff", "-m", f"Merge pull request #{pr} from acme/{branch}",
        branch)
    return sha


@pytest.fixture
def story(scratch: Scratch) -> Scratch:
    """deploy 1.0.0 -> deploy 2.0.0 (PR #4) -> rollback -> deploy 2.1.0 (squash, #6)."""
    s = scratch
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    deploy_branch_and_merge(s, f"{MODEL}@2.0.0", "production", 4)
    git(s.root, "push", "-q", "origin", "main")
    assert cli(s.root, "rollback", "--env", "production", "--push", "--reason", "bad",
               "--skip-artifact-check").exit_code == 0
    ship(s.root, f"{MODEL}@2.1.0", "staging")
    assert cli(s.root, "deploy", f"{MODEL}@2.1.0", "--env", "production").exit_code == 0
    branch = f"deploy/production/{MODEL}-2.1.0"
    git(s.root, "merge", "-q", "--squash", branch)
    git(s.root, "commit", "-q", "-m", f"deploy(production): {MODEL} 2.0.0 -> 2.1.0 (#6)")
    return s


def test_history_tells_the_whole_story(story: Scratch) -> None:
    s = story
    rows = history.read_history(s.root, "production", "main")
    summary = [(d.kind, d.model, d.from_version, d.to_version, d.pr, d.rolled_back)
               for d in rows]
    assert summary == [
        ("deploy", MODEL, None, "1.0.0", None, False),
        ("deploy", MODEL, "1.0.0", "2.0.0", 4, True),
        ("rollback", MODEL, "2.0.0", "1.0.0", None, False),
        ("edit", MODEL, "1.0.0", "2.1.0", 6, False),
    ]
    deploy_20, rollback = rows[1], rows[2]
    assert rollback.rollback_of == deploy_20.commit
    assert deploy_20.rolled_back_by == rollback.commit
    assert rollback.reason == "bad"
    merge = git(s.root, "log", "-1", "--format=%H", "--merges", "main")
    assert deploy_20.landed_by == merge
    assert deploy_20.deployed_at == git(s.root, "log", "-1", "--format=%cI", merge)
    assert deploy_20.author == "Test Author"
    assert deploy_20.metrics == {"perplexity": 5.5, "tg_tokens_per_s": 101.0}
    assert rows[0].metrics == {"perplexity": 6.0, "tg_tokens_per_s": 100.0}


def test_staging_history_is_separate_and_model_filter_works(story: Scratch) -> None:
    staging = history.read_history(story.root, "staging", "main")
    assert [(d.from_version, d.to_version) for d in staging] == [
        (None, "1.0.0"), ("1.0.0", "2.0.0"), ("2.0.0", "2.1.0")]
    assert history.read_history(story.root, "production", "main", model=OTHER) == []


def test_hand_edits_and_hand_reverts_are_understood(scratch: Scratch) -> None:
    s = scratch
    env_file = s.root / "environments" / "staging.yaml"
    env_file.write_text(env_file.read_text().replace(
        "models: {}", f"models:\n  {MODEL}:\n    version: 1.0.0\n  {OTHER}:\n"
                      "    version: 1.0.0"))
    git_commit(s.root, "hand edit: two models at once")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    deployed = s.head()
    git(s.root, "revert", "--no-edit", deployed)

    rows = history.read_history(s.root, "staging", "main")

    assert [(d.kind, d.model, d.from_version, d.to_version) for d in rows] == [
        ("edit", MODEL, None, "1.0.0"), ("edit", OTHER, None, "1.0.0"),
        ("deploy", MODEL, "1.0.0", "2.0.0"), ("rollback", MODEL, "2.0.0", "1.0.0")]
    assert rows[2].rolled_back_by == rows[3].commit == s.head()


def test_one_log_walk_whatever_the_number_of_commits(scratch: Scratch,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = scratch
    ship(s.root, f"{OTHER}@1.0.0", "staging")
    ship(s.root, f"{OTHER}@1.0.0", "production")
    for version in ("1.0.0", "2.0.0", "2.1.0", "3.0.0") * 3:  # hand edits: no trailers
        env_file = s.root / "environments" / "staging.yaml"
        env_file.write_text(f"environment: staging\nmodels:\n  {MODEL}:\n"
                            f"    version: {version}\n  {OTHER}:\n    version: 1.0.0\n")
        git_commit(s.root, f"hand edit {version}")
    calls: list[list[str]] = []
    real_run = gitops_git.run

    def counting_run(args: list[str], *a: Any, **kw: Any) -> Any:
        calls.append(list(args))
        return real_run(args, *a, **kw)

    monkeypatch.setattr(gitops_git, "run", counting_run)
    rows = history.read_history(s.root, "staging", "main")
    assert len(rows) == 13
    assert [c[0] for c in calls] == ["log", "cat-file", "cat-file"]


def test_cli_text_json_and_sqlite(story: Scratch, tmp_path: Path) -> None:
    s = story
    db = tmp_path / "out" / "deployments.sqlite"
    text = cli(s.root, "history", "--env", "production", "--sqlite", str(db))
    assert text.exit_code == 0, text.stderr
    assert text.output.splitlines()[0].split() == [
        "DEPLOYED", "AT", "KIND", "MODEL", "FROM", "->", "TO", "COMMIT", "PR", "AUTHOR",
        "ROLLED", "BACK", "GATE"]
    assert f"wrote 4 row(s) for production to {db}" in text.output
    as_json = json.loads(cli(s.root, "history", "--env", "production", "--json").output)
    assert [r["to_version"] for r in as_json] == ["1.0.0", "2.0.0", "1.0.0", "2.1.0"]
    assert [r["rolled_back"] for r in as_json] == [False, True, False, False]

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, env, model_name, version, rolled_back, "
                            "json_extract(metrics, '$.perplexity'), kind, from_version, pr "
                            "FROM deployments ORDER BY id").fetchall()
    assert rows == [
        (1, "production", MODEL, "1.0.0", 0, 6.0, "deploy", None, None),
        (2, "production", MODEL, "2.0.0", 1, 5.5, "deploy", "1.0.0", 4),
        (3, "production", MODEL, "1.0.0", 0, 6.0, "rollback", "2.0.0", None),
        (4, "production", MODEL, "2.1.0", 0, 5.0, "edit", "1.0.0", 6),
    ]


def test_sqlite_keeps_other_environments_and_replaces_its_own(
        story: Scratch, tmp_path: Path) -> None:
    db = tmp_path / "reports" / "d.sqlite"
    for env in ("production", "staging", "production"):
        assert cli(story.root, "history", "--env", env, "--sqlite", str(db)).exit_code == 0
    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT env, count(*) FROM deployments GROUP BY env"))
        columns = [r[1] for r in conn.execute("PRAGMA table_info(deployments)")]
    assert counts == {"production": 4, "staging": 3}
    assert columns[:7] == ["id", "env", "model_name", "version", "deployed_at", "rolled_back",
                           "metrics"]
    assert list(db.parent.iterdir()) == [db]  # no temp file left behind


def test_empty_history(scratch: Scratch) -> None:
    result = cli(scratch.root, "history", "--env", "production")
    assert result.exit_code == 0
    assert result.output.strip() == "no deploys or rollbacks recorded for this environment yet"


def test_format_message_round_trips_through_history_trailers() -> None:
    message = history.format_message("rollback", "production", MODEL, "2.1.0", "2.0.0",
                                     rollback_of="abc1234", reason="multi\nline  reason")
    assert message == (f"rollback(production): {MODEL} 2.1.0 -> 2.0.0\n\n"
                       "Rollback-Of: abc1234\nReason: multi line reason\n"
                       f"Environment: production\nModel: {MODEL}\nFrom-Version: 2.1.0\n"
                       "To-Version: 2.0.0\n")


@pytest.mark.parametrize(("text", "metrics"), [
    ("name: x\nbenchmarks:\n  eval_sha256: a\n  # note\n\n  metrics:\n    perplexity: 5.0\n"
     "notes: y\n", {"perplexity": 5.0}),
    ("name: x\nbenchmarks:\n  metrics:\n    perplexity: 5.0", {"perplexity": 5.0}),
    ("benchmarks: {metrics: {perplexity: 1}}\n", {"perplexity": 1}),
    ("name: x\nnotes: |\n  benchmarks: not this\n", None),
])
def test_gate_results_are_read_from_the_version_file(text: str,
                                                     metrics: dict[str, float] | None) -> None:
    assert history._metrics_of(text.encode(), "registry/x/1.0.0.yaml") == metrics


def test_gate_figures_read_without_exponents() -> None:
    from ggufops.gitops.history import _metrics_text

    text = _metrics_text({"perplexity": 16.80474, "tg_tokens_per_s": 16030.2,
                          "latency_p95_ms": 2.3561, "nll": 2.8})
    assert text == "perplexity=16.8 tg_tokens_per_s=16,030 latency_p95_ms=2.356"
    assert _metrics_text(None) == "-"


# --- canaries ----------------------------------------------------------------------------

@pytest.fixture
def canary_story(scratch: Scratch) -> Scratch:
    """deploy 1.0.0 -> canary 2.0.0 10% -> ramp 50% -> rollback (10%) -> promote 2.0.0."""
    s = scratch
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    ship_canary(s.root, f"{MODEL}@2.0.0", "production", 10)
    ship_canary(s.root, f"{MODEL}@2.0.0", "production", 50)
    assert cli(s.root, "rollback", "--env", "production", "--push",
               "--skip-artifact-check").exit_code == 0
    ship(s.root, f"{MODEL}@2.0.0", "production")
    return s


def test_canary_changes_in_history(canary_story: Scratch, tmp_path: Path) -> None:
    rows = history.read_history(canary_story.root, "production", "main")
    assert [(d.kind, d.from_version, d.to_version, d.canary_version, d.canary_weight,
             d.rolled_back) for d in rows] == [
        ("deploy", None, "1.0.0", None, None, False),
        ("canary", "1.0.0", "1.0.0", "2.0.0", 10, False),
        ("canary", "1.0.0", "1.0.0", "2.0.0", 50, True),
        ("rollback", "1.0.0", "1.0.0", "2.0.0", 10, False),
        ("deploy", "1.0.0", "2.0.0", None, None, False),
    ]
    assert [history.change_text(d) for d in rows[1:4]] == [
        "1.0.0 -> 1.0.0 + canary 2.0.0 (10%)", "1.0.0 -> 1.0.0 + canary 2.0.0 (50%)",
        "1.0.0 -> 1.0.0 + canary 2.0.0 (10%)"]

    db = tmp_path / "d.sqlite"
    text = cli(canary_story.root, "history", "--env", "production", "--sqlite", str(db))
    assert text.exit_code == 0, text.stderr
    assert "canary    llama3-instruct  1.0.0 -> 1.0.0 + canary 2.0.0 (50%)" in text.output
    as_json = json.loads(cli(canary_story.root, "history", "--env", "production",
                             "--json").output)
    assert [(r["canary_version"], r["canary_weight"]) for r in as_json][1:3] == [
        ("2.0.0", 10), ("2.0.0", 50)]
    with sqlite3.connect(db) as conn:
        got = conn.execute("SELECT kind, version, canary_version, canary_weight "
                           "FROM deployments ORDER BY id").fetchall()
    assert got == [("deploy", "1.0.0", None, None), ("canary", "1.0.0", "2.0.0", 10),
                   ("canary", "1.0.0", "2.0.0", 50), ("rollback", "1.0.0", "2.0.0", 10),
                   ("deploy", "2.0.0", None, None)]


def test_removed_canary_and_hand_edited_canaries(scratch: Scratch) -> None:
    s = scratch
    ship(s.root, f"{MODEL}@1.0.0")
    ship(s.root, f"{MODEL}@2.0.0", "staging")
    ship_canary(s.root, f"{MODEL}@2.0.0", "production", 10)
    assert cli(s.root, "rollback", "--env", "production", "--push",
               "--skip-artifact-check").exit_code == 0
    path = s.root / "environments" / "production.yaml"
    path.write_text(path.read_text().replace(
        "    version: 1.0.0\n", "    version: 1.0.0\n    canary: {version: 2.0.0, weight: 5}\n"))
    git_commit(s.root, "hand-made canary")
    removed, edited = history.read_history(s.root, "production", "main")[-2:]
    assert (removed.kind, removed.canary_version, removed.canary_weight) == (
        "rollback", "2.0.0", 0)
    assert history.change_text(removed) == "1.0.0 -> 1.0.0 (canary 2.0.0 removed)"
    assert (edited.kind, edited.canary_version, edited.canary_weight) == ("edit", "2.0.0", 5)


def test_sqlite_written_by_an_older_version_gets_the_new_columns(
        canary_story: Scratch, tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    old_schema = history._SCHEMA.replace(",\n    canary_version TEXT,\n"
                                         "    canary_weight INTEGER", "").replace(
                                             ",\n    config_change TEXT", "").replace(
                                             ",\n    analysis TEXT", "")
    assert "canary" not in old_schema and "analysis" not in old_schema
    with sqlite3.connect(db) as conn:
        conn.executescript(old_schema)
    assert cli(canary_story.root, "history", "--env", "production", "--sqlite",
               str(db)).exit_code == 0
    with sqlite3.connect(db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(deployments)")]
        weights = [r[0] for r in conn.execute("SELECT canary_weight FROM deployments")]
    assert columns[-5:] == ["subject", "canary_version", "canary_weight", "config_change",
                            "analysis"]
    assert weights == [None, 10, 50, 10, None]
