"""`ggufops config`: change an environment's inference overrides (no model reload)."""

from __future__ import annotations

import click

from ggufops.cli.gitops import _landing_text, _show, env_option, git_target_options
from ggufops.cli.options import dry_run_option, json_option, registry_from
from ggufops.gitops import configchange, configcommit
from ggufops.gitops import deploy as deploy_api


@click.command("config")
@env_option
@click.option("--model", required=True, metavar="NAME", help="Model whose overrides change.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set an override: temperature, top_p, max_tokens, system_prompt or "
              "prompt_template (repeatable).")
@click.option("--unset", "unset", multiple=True, metavar="KEY",
              help="Remove an override, back to the version's own setting (repeatable).")
@click.option("--push", is_flag=True, help="Push the branch (or, with --direct, the default "
              "branch) to the remote.")
@click.option("--pr", is_flag=True, help="Push the branch and open a pull request.")
@click.option("--direct", is_flag=True, help="Commit on the default branch itself instead of "
              "a config branch.")
@git_target_options
@dry_run_option
@json_option
@click.pass_context
def config(ctx: click.Context, *, env: str, model: str, settings: tuple[str, ...],
           unset: tuple[str, ...], push: bool, pr: bool, direct: bool, remote: str,
           default_branch: str, dry_run: bool, as_json: bool) -> None:
    """Change ENV's inference overrides of a model: a commit of kind `config`.

    Hosts apply it without loading the model again; `ggufops rollback --env ENV --model
    NAME` undoes it the same way. The new file is checked like `validate` checks it.
    """
    request = configcommit.ConfigRequest(
        env=env, model=model, settings=[configchange.parse_setting(s) for s in settings],
        unset=list(unset), remote=remote, default_branch=default_branch, direct=direct,
        push=push, pr=pr)
    root = registry_from(ctx).root
    plan = configcommit.plan_config(root, request)
    if dry_run:
        _show(as_json, {**plan.as_dict(), "dry_run": True}, deploy_api.describe(plan))
        return
    landing = configcommit.apply_config(root, plan)
    _show(as_json, {**plan.as_dict(), "dry_run": False, "result": landing.as_dict()},
          deploy_api.describe(plan) + "\n" + _landing_text(landing, plan.remote))


COMMANDS: list[click.Command] = [config]
