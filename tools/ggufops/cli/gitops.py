"""`ggufops deploy`, `rollback`, `history`, `pr-comment`: changing environments through git."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ggufops.cli.options import (
    VERSION_REF,
    dry_run_option,
    json_option,
    print_json,
    registry_from,
)
from ggufops.errors import UsageError
from ggufops.gitops import deploy as deploy_api
from ggufops.gitops import github, grouprollback, lifecyclehistory
from ggufops.gitops import history as history_api
from ggufops.gitops import rollback as rollback_api
from ggufops.registry import canaryplan
from ggufops.registry.records import CanaryAnalysis
from ggufops.registry.registry import VersionRef

F = TypeVar("F", bound=Callable[..., Any])

env_option = click.option("--env", "env", required=True, metavar="ENV",
                          help="Environment to change (environments/ENV.yaml).")


def git_target_options(func: F) -> F:
    func = click.option("--branch", "default_branch", default="main", show_default=True,
                        help="The default branch environments are deployed from.")(func)
    return click.option("--remote", default="origin", show_default=True,
                        help="Git remote to fetch from and push to.")(func)


@click.command("deploy")
@click.argument("ref", type=VERSION_REF)
@env_option
@click.option("--push", is_flag=True, help="Push the deploy branch (or, with --direct, the "
              "default branch) to the remote.")
@click.option("--pr", is_flag=True, help="Push the branch and open a pull request (GitHub "
              "REST API with GITHUB_TOKEN; else print the compare URL).")
@click.option("--direct", is_flag=True, help="Commit on the default branch itself instead of "
              "a deploy branch (repositories without pull requests, the demo).")
@click.option("--canary", "canary", type=click.IntRange(1, 99), default=None,
              metavar="PERCENT", help="Start (or ramp) a canary: send PERCENT of the traffic "
              "to NAME@X.Y.Z, keeping the primary version. Deploy without it to promote.")
@click.option("--steps", "steps", default=None, metavar="W1,W2,...,100",
              help="Canary analysis: the weights the agents walk (the first is --canary, the "
              "last 100: the promotion), one step per --analysis-interval when the canary "
              "compares well with the primary; it is aborted when it does not.")
@click.option("--analysis-interval", "interval", type=click.FloatRange(min=1), default=None,
              metavar="SECONDS", help="Canary analysis: seconds from a step's commit to its "
              "analysis (default 60 with --steps).")
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def deploy(ctx: click.Context, *, ref: VersionRef, env: str, push: bool, pr: bool, direct: bool,
           canary: int | None, steps: str | None, interval: float | None, remote: str,
           default_branch: str, dry_run: bool, as_json: bool) -> None:
    """Deploy NAME@X.Y.Z to an environment: a commit on branch deploy/ENV/NAME-X.Y.Z.

    Checks that the version is registered on the default branch, that the promotion
    policy allows it, that the local default branch is not behind its remote and that
    the working tree is clean. The checkout is never switched. With --canary PERCENT the
    commit sets the model's canary instead (branch deploy/ENV/NAME-X.Y.Z-canary-PERCENT);
    with --steps the agents then analyse it and step it up, promote or abort it by commits.
    """
    root = registry_from(ctx).root
    plan = deploy_api.plan_deploy(root, ref, env, remote=remote, default_branch=default_branch,
                                  direct=direct, push=push, pr=pr, canary=canary,
                                  analysis=_analysis(steps, interval))
    if dry_run:
        _show(as_json, {**plan.as_dict(), "dry_run": True}, deploy_api.describe(plan))
        return
    landing = deploy_api.apply_deploy(root, plan)
    _show(as_json, {**plan.as_dict(), "dry_run": False, "result": landing.as_dict()},
          deploy_api.describe(plan) + "\n" + _landing_text(landing, plan.remote))


def _analysis(steps: str | None, interval: float | None) -> CanaryAnalysis | None:
    """The --steps/--analysis-interval plan (None without either)."""
    if steps is None:
        if interval is not None:
            raise UsageError("--analysis-interval needs --steps (the weights to walk)")
        return None
    try:
        return CanaryAnalysis(canaryplan.parse_steps(steps), 60.0 if interval is None
                              else interval)
    except ValueError as e:
        raise UsageError(f"--steps: {e}") from None


@click.command("rollback")
@env_option
@click.option("--model", default=None, metavar="NAME",
              help="Model to roll back (default: the one changed last in ENV).")
@click.option("--models", "models", default=None, metavar="A,B",
              help="Roll several models back together, in one commit.")
@click.option("--group", "group", default=None, metavar="NAME",
              help="Roll back every model of the release group NAME (groups: in the env file), "
              "in one commit.")
@click.option("--to", "to", default=None, metavar="X.Y.Z",
              help="Version to restore (default: the one before the last deploy). It must "
              "have run in ENV before, or be allowed there by the promotion policy.")
@click.option("--reason", default=None, metavar="TEXT",
              help="Why: recorded as the commit's Reason: trailer.")
@click.option("--push", "push", is_flag=True, help="Break-glass: push the commit straight to "
              "the default branch; retries on a concurrent push.")
@click.option("--pr", "pr", is_flag=True, help="Push a rollback branch and open a pull request.")
@click.option("--selector", default=None, metavar="K=V,...", help="Partial rollback: only "
              "hosts whose agent --labels match (e.g. zone=eu) run the restored version; "
              "written as a segment of the model in the environment file.")
@click.option("--skip-artifact-check", is_flag=True, help="DANGEROUS: do not check that the "
              "target's artifact is in the S3 remote (offline use only): a rollback to a "
              "deleted artifact leaves hosts unable to load the model.")
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def rollback(ctx: click.Context, *, env: str, model: str | None, models: str | None,
             group: str | None, to: str | None,
             reason: str | None, push: bool, pr: bool, skip_artifact_check: bool, remote: str,
             default_branch: str, dry_run: bool, as_json: bool, selector: str | None) -> None:
    """Roll ENV back: revert the last deploy of a model (or restore --to X.Y.Z).

    When that last change started or ramped a canary, the canary goes (or gets its
    previous weight back). Without --push or --pr the commit goes on the local default
    branch.
    """
    if push and pr:
        raise UsageError("--push and --pr are alternatives: pick one")
    mode = rollback_api.PUSH if push else rollback_api.PR if pr else rollback_api.LOCAL
    request = rollback_api.RollbackRequest(env=env, model=model, to=to, reason=reason,
                                           mode=mode, remote=remote,
                                           default_branch=default_branch,
                                           skip_artifact_check=skip_artifact_check,
                                           selector=_selector(selector))
    root = registry_from(ctx).root
    if models is not None or group is not None:
        _rollback_group(root, request, models, group, dry_run=dry_run, as_json=as_json)
        return
    if dry_run:
        plan = rollback_api.plan_rollback(root, request)
        _show(as_json, {**plan.as_dict(), "dry_run": True}, rollback_api.describe(plan))
        return
    outcome = rollback_api.rollback(root, request)
    text = rollback_api.describe(outcome.plan)
    if outcome.landing is not None:
        text += "\n" + _landing_text(outcome.landing, remote)
    text += "".join(f"\nnote: {n}" for n in outcome.notes)
    if outcome.attempts > 1:
        text += f"\n({outcome.attempts} attempts: the remote moved in between)"
    _show(as_json, {**outcome.as_dict(), "dry_run": False}, text)


@click.command("history")
@env_option
@click.option("--model", default=None, metavar="NAME", help="Only this model.")
@click.option("--ref", default=None, metavar="REF",
              help="Commit to read history from (default: the local default branch, else "
              "origin's).")
@click.option("--sqlite", "sqlite_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write table `deployments` into this SQLite file "
              "(rows of other environments in it are kept).")
@click.option("--hosts", is_flag=True, help="Instead: when each host applied each commit "
              "(from the fleet status its agent publishes to S3).")
@json_option
@click.pass_context
def history(ctx: click.Context, *, env: str, model: str | None, ref: str | None,
            sqlite_path: Path | None, hosts: bool, as_json: bool) -> None:
    """Every deploy, canary and rollback of ENV: when, who, commit, PR, from -> to, rolled
    back? Status changes of its models (deprecate, archive, restore) are rows of kind
    lifecycle."""
    from ggufops import git

    root = registry_from(ctx).root
    if hosts:
        _host_history(root, env, as_json)
        return
    start = ref or next((r for r in ("main", "origin/main") if git.resolve(root, r)), "HEAD")
    git.rev_parse(root, start)
    deployments = lifecyclehistory.merge(root, env, start,
                                         history_api.read_history(root, env, start, model=model),
                                         model)
    if sqlite_path is not None:
        history_api.write_sqlite(sqlite_path, env, deployments)
    if as_json:
        print_json([d.as_dict() for d in deployments])
        return
    click.echo(history_api.format_table(deployments))
    if sqlite_path is not None:
        click.echo(f"wrote {len(deployments)} row(s) for {env} to {sqlite_path}")


def _selector(text: str | None) -> dict[str, str] | None:
    from ggufops.fleet.status import parse_labels

    return parse_labels(text) or None if text else None


def _host_history(root: Path, env: str, as_json: bool) -> None:
    from ggufops.fleet import ops as fleetops

    rows = fleetops.host_history(root, env)
    if as_json:
        print_json([r.as_dict() for r in rows])
    else:
        click.echo(fleetops.format_host_history(rows))


@click.command("pr-comment")
@click.option("--file", "file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Markdown file to post (e.g. the gate report).")
@click.option("--marker", required=True, help="Hidden marker that identifies the comment, so "
              "re-runs update it instead of adding another.")
@click.option("--pr", "number", type=int, default=None,
              help="Pull request number (default: from GITHUB_EVENT_PATH or GITHUB_REF).")
@json_option
def pr_comment(*, file: Path, marker: str, number: int | None, as_json: bool) -> None:
    """Post FILE as the pull request's one comment carrying MARKER (create or update).

    Uses GITHUB_TOKEN, GITHUB_REPOSITORY and GITHUB_API_URL, as set in GitHub Actions.
    """
    environ = dict(os.environ)
    number = number or github.pr_number_from_env(environ)
    if number is None:
        raise UsageError("no pull request number: pass --pr N, or run in a pull_request "
                         "workflow (GITHUB_EVENT_PATH)")
    repo = github.repository(environ, None)
    token = github.token(environ)
    if repo is None or token is None:
        raise UsageError("pr-comment needs GITHUB_TOKEN and GITHUB_REPOSITORY=owner/name")
    client = github.Client.from_env(environ, repo, token)
    comment = client.upsert_comment(number, file.read_text(), marker)
    if as_json:
        print_json({"pr": number, **comment.as_dict()})
        return
    verb = "created" if comment.created else "updated"
    click.echo(f"{verb} comment {comment.id} on {repo}#{number}: {comment.url}")


def _rollback_group(root: Path, request: rollback_api.RollbackRequest, models: str | None,
                    group: str | None, *, dry_run: bool, as_json: bool) -> None:
    if request.model is not None or request.to is not None:
        raise UsageError("--models/--group roll back to each model's previous version: drop "
                         "--model and --to")
    names = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    chosen, group = grouprollback.models_of(root, request, names, group)
    if dry_run:
        plan = grouprollback.plan_group_rollback(root, request, chosen, group)
        _show(as_json, {**plan.as_dict(), "dry_run": True}, rollback_api.describe(plan))
        return
    outcome = grouprollback.group_rollback(root, request, chosen, group)
    text = rollback_api.describe(outcome.plan)
    if outcome.landing is not None:
        text += "\n" + _landing_text(outcome.landing, request.remote)
    _show(as_json, {**outcome.as_dict(), "dry_run": False}, text)


def _landing_text(landing: deploy_api.Landing, remote: str) -> str:
    lines = [f"committed {landing.commit[:10]} on {landing.branch}"]
    if landing.pushed:
        lines.append(f"pushed {landing.branch} to {remote}")
    pr = landing.pull_request
    if pr is not None:
        state = "already open" if pr.existing else "opened"
        lines.append(f"pull request #{pr.number} {state}: {pr.url}")
    if landing.compare_url:
        lines.append(f"open the pull request: {landing.compare_url}")
    lines += [f"note: {n}" for n in landing.notes]
    return "\n".join(lines)


def _show(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        print_json(data)
    else:
        click.echo(text)


COMMANDS: list[click.Command] = [deploy, rollback, history, pr_comment]
