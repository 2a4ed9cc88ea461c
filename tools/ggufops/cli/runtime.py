"""`ggufops serve`, `agent`, `demo`: what runs on an inference host."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ggufops import git
from ggufops.cli.options import json_option, print_json, repo_path
from ggufops.errors import UsageError
from ggufops.httpjson import Limits
from ggufops.notify import NotifyConfig

_DIR = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


def _logging(level: str) -> None:
    """Log lines to stderr (the journal under systemd), credentials in URLs redacted."""
    from ggufops.redact import RedactingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM, SIGINT or SIGHUP (systemd stop, Ctrl-C)."""
    stop = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(what: str) -> None:
    click.echo(what)
    sys.stdout.flush()


log_level_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True, envvar="GGUFOPS_LOG_LEVEL",
    help="Messages written to stderr (the journal under systemd).")
admin_token_option = click.option(
    "--admin-token-file", type=_FILE, default=None, envvar="GGUFOPS_ADMIN_TOKEN_FILE",
    help="File holding the bearer token of the server's admin API "
    "(env GGUFOPS_ADMIN_TOKEN_FILE).")


@click.command("serve")
@click.option("--store", required=True, type=_DIR, envvar="GGUFOPS_STORE",
              help="Content-addressed artifact store: models load from <store>/sha256/<sha>.gguf.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="GGUFOPS_SERVE_HOST",
              help="Address to listen on (env GGUFOPS_SERVE_HOST).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              envvar="GGUFOPS_SERVE_PORT",
              help="Port to listen on (0: any free port, printed at start).")
@admin_token_option
@click.option("--threads", type=click.IntRange(1), default=None, envvar="GGUFOPS_THREADS",
              help="llama.cpp threads per model (default: all cores this process may use).")
@click.option("--ctx", type=int, default=4096, show_default=True, envvar="GGUFOPS_CTX",
              help="Context size per model, capped at the model's own (0: the model's).")
@click.option("--n-gpu-layers", type=click.IntRange(min=-1), default=0, show_default=True,
              envvar="GGUFOPS_N_GPU_LAYERS",
              help="Layers llama.cpp offloads to the GPU (-1: all); needs a GPU build of "
              "llama-cpp-python, a CPU build ignores it.")
@click.option("--max-connections", type=click.IntRange(1), default=Limits.max_connections,
              show_default=True, envvar="GGUFOPS_MAX_CONNECTIONS",
              help="Connections served at once; one more is answered 503.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1),
              default=Limits.header_timeout, show_default=True, envvar="GGUFOPS_HEADER_TIMEOUT",
              help="Seconds a client has to send a request's line, headers and body.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=Limits.idle_timeout,
              show_default=True, envvar="GGUFOPS_IDLE_TIMEOUT",
              help="Seconds a connection may wait for its next request.")
@click.option("--max-body", type=click.IntRange(1024), default=Limits.max_body,
              show_default=True, envvar="GGUFOPS_MAX_BODY",
              help="Largest request body in bytes (413 above).")
@click.option("--reuse-prompt-cache", is_flag=True, envvar="GGUFOPS_REUSE_PROMPT_CACHE",
              help="Keep the previous request's evaluated prompt and reuse a shared prefix: "
              "faster for long shared system prompts, but greedy answers then depend on "
              "what ran before (off: every prompt is evaluated from scratch).")
@click.option("--standby", type=click.Choice(["auto", "off"]), default="auto",
              show_default=True, envvar="GGUFOPS_STANDBY",
              help="Keep the replaced primary loaded as a hot standby when it fits in memory "
              "(file + KV cache at most half of what is available), so a rollback to it is a "
              "pointer swap; off: free it.")
@click.option("--admin-host", default="127.0.0.1", show_default=True,
              envvar="GGUFOPS_ADMIN_HOST",
              help="Address of the admin API's own listener (with --admin-port).")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None,
              envvar="GGUFOPS_ADMIN_PORT",
              help="Serve /admin only on --admin-host:PORT, not on --port (0: any free port); "
              "default: /admin on --port.")
@log_level_option
def serve(*, store: Path, host: str, port: int, admin_token_file: Path | None,
          threads: int | None, ctx: int, n_gpu_layers: int, max_connections: int,
          header_timeout: float, idle_timeout: float, max_body: int, reuse_prompt_cache: bool,
          standby: str, admin_host: str, admin_port: int | None,
          log_level: str) -> None:
    """Serve GGUF models over an OpenAI-compatible HTTP API with zero-downtime swaps."""
    from ggufops.serve import app as server

    _logging(log_level)
    token = server.read_token(admin_token_file) if admin_token_file else None
    limits = Limits(max_body=max_body, max_connections=max_connections,
                    header_timeout=header_timeout, idle_timeout=idle_timeout)
    config = server.ServeConfig(store=store, host=host, port=port, admin_token=token,
                                n_threads=threads, n_ctx=ctx, limits=limits,
                                n_gpu_layers=n_gpu_layers,
                                reuse_prefix=reuse_prompt_cache, standby=standby,
                                admin_host=admin_host, admin_port=admin_port)
    app = server.App(config)
    with _stop_on_signals() as stop:
        server.serve_until(app, stop, ready=lambda url: _announce(
            f"ggufops serve: listening on {url} (store {store}; admin API "
            f"{_admin_where(app, token)})"))


def _admin_where(app: Any, token: str | None) -> str:
    if not token:
        return "off: no --admin-token-file"
    return f"on {app.admin_url}/admin" if app.admin_url else "on"


@click.group("agent", invoke_without_command=True)
@click.option("--repo", "repo_url", metavar="URL", envvar="GGUFOPS_REPO",
              help="Git URL of the registry (any URL git can fetch). [required to run]")
@click.option("--env", "env", metavar="ENV", envvar="GGUFOPS_ENV",
              help="Environment this host runs, e.g. production. [required to run]")
@click.option("--store", type=_DIR, envvar="GGUFOPS_STORE",
              help="Content-addressed artifact store shared with `ggufops serve`. "
              "[required to run]")
@click.option("--server", "server_url", metavar="URL", envvar="GGUFOPS_SERVER",
              help="Base URL of `ggufops serve`, e.g. http://127.0.0.1:8080. [required to run]")
@click.option("--interval", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              envvar="GGUFOPS_INTERVAL", help="Seconds between `git ls-remote` checks.")
@click.option("--branch", default="main", show_default=True, envvar="GGUFOPS_BRANCH",
              help="Branch whose environment file is applied.")
@click.option("--status-host", default="127.0.0.1", show_default=True,
              envvar="GGUFOPS_STATUS_HOST",
              help="Address of the status endpoint (/status, /metrics, POST /sync).")
@click.option("--status-port", type=click.IntRange(-1, 65535), default=9180,
              show_default=True, envvar="GGUFOPS_STATUS_PORT",
              help="Port of the status endpoint (0: any free port, -1: none).")
@admin_token_option
@click.option("--keep", type=click.IntRange(min=2), default=None, envvar="GGUFOPS_KEEP",
              help="Artifacts kept per model in the store (default: the policy's "
              "retention.agent_keep_last, else 3).")
@click.option("--state-dir", type=_DIR, default=None, envvar="GGUFOPS_STATE_DIR",
              help="Apply log, git mirror, exported trees (default: $STATE_DIRECTORY, "
              "else ~/.local/state/ggufops/agent).")
@click.option("--s3-endpoint", metavar="URL", default=None, envvar="GGUFOPS_S3_ENDPOINT",
              help="S3 endpoint overriding the commit's .dvc/config (credentials come from "
              "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).")
@click.option("--prune", is_flag=True, envvar="GGUFOPS_PRUNE",
              help="Unload models that the environment no longer names (off: they keep "
              "serving).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              envvar="GGUFOPS_TIMEOUT",
              help="Seconds the server may take to load a model and report it.")
@click.option("--download-timeout", type=click.FloatRange(min=1),
              default=3600.0, show_default=True,
              envvar="GGUFOPS_DOWNLOAD_TIMEOUT",
              help="Seconds one apply's downloads may take in all; then they are cancelled "
              "and retried with backoff.")
@click.option("--mismatch-retry", type=click.FloatRange(min=1),
              default=600.0, show_default=True,
              envvar="GGUFOPS_MISMATCH_RETRY",
              help="Seconds before an artifact whose bytes in S3 did not match the registry "
              "is tried again (a new commit or POST /sync tries at once).")
@click.option("--backoff-max", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, envvar="GGUFOPS_BACKOFF_MAX",
              help="Longest wait between retries after a failure.")
@click.option("--host-name", default=None, envvar="GGUFOPS_HOST_NAME",
              help="This host's name in the fleet status, fleet/<env>/<host>.json in S3 "
              "(default: the hostname).")
@click.option("--labels", default=None, metavar="K=V,...", envvar="GGUFOPS_LABELS",
              help="Labels of this host, e.g. zone=eu,wave=1 (rollout waves, partial "
              "rollbacks, `fleet status`).")
@click.option("--heartbeat", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              envvar="GGUFOPS_HEARTBEAT",
              help="Seconds between fleet status publications when nothing changes.")
@click.option("--jitter", type=click.FloatRange(0, 0.99), default=0.1, show_default=True,
              envvar="GGUFOPS_JITTER",
              help="Each wait between checks is --interval times 1 ± this fraction, so a "
              "fleet's agents do not hit the git host in step.")
@click.option("--fleet-status/--no-fleet-status", default=True, show_default=True,
              envvar="GGUFOPS_FLEET_STATUS",
              help="Publish this host's status to S3 for `ggufops fleet status`.")
@click.option("--trust", "trust", type=_FILE, default=None, envvar="GGUFOPS_TRUST",
              help="SSH allowed_signers file (git's format): apply only commits signed by a "
              "key it lists (docs/trust.md).")
@click.option("--allow-rewrite", is_flag=True, envvar="GGUFOPS_ALLOW_REWRITE",
              help="Apply a commit that does not descend from the applied one (a force-push); "
              "off: refused unless signed and newer (docs/trust.md).")
@click.option("--webhook-secret-file", type=_FILE, default=None,
              envvar="GGUFOPS_WEBHOOK_SECRET_FILE",
              help="GitHub webhook secret: POST /sync then needs a valid X-Hub-Signature-256 "
              "and acts only on pushes to --branch.")
@click.option("--watch", default="git", show_default=True, envvar="GGUFOPS_WATCH",
              metavar="git|s3://BUCKET/KEY",
              help="How to notice new commits: `git ls-remote` every --interval, or a "
              "conditional GET of the head pointer `ggufops publish-head` writes to S3 "
              "(large fleets: docs/scale.md).")
@click.option("--push-url", metavar="URL", default=None, envvar="GGUFOPS_PUSH_URL",
              help="Where the revert of a fired rollback trigger is pushed (default: --repo).")
@click.option("--push-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, envvar="GGUFOPS_PUSH_TOKEN_FILE",
              help="File holding the token that may push to the branch (the password of an "
              "http(s) --push-url; never logged).")
@click.option("--signing-key", type=_FILE, default=None, envvar="GGUFOPS_SIGNING_KEY",
              help="SSH private key (no passphrase) that signs the revert a rollback trigger "
              "pushes; with --trust it must be listed there (docs/trust.md).")
@click.option("--notify-url", metavar="URL", default=None, envvar="GGUFOPS_NOTIFY_URL",
              help="Webhook POSTed a JSON event for every fired and alert-only rollback "
              "trigger (in the background).")
@click.option("--notify-secret-file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              default=None, envvar="GGUFOPS_NOTIFY_SECRET_FILE",
              help="Shared secret: each body is signed, header X-Ggufops-Signature-256: "
              "sha256=<HMAC-SHA256 hex>.")
@click.option("--notify-format", type=click.Choice(["json", "slack"]), default="json",
              show_default=True, envvar="GGUFOPS_NOTIFY_FORMAT",
              help="json: the event itself; slack: a Slack-compatible {\"text\": ...}.")
@log_level_option
@click.pass_context
def agent(ctx: click.Context, /, **options: Any) -> None:
    """Apply the environment on the git branch to this host's server, continuously.

    Run without a subcommand to start the agent; `ggufops agent status` reports.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ggufops.agent import loop as agent_api
    from ggufops.agent import status as agentstatus
    from ggufops.agent.trust import TrustPolicy
    from ggufops.agent.webhook import read_secret
    from ggufops.fleet import status as fleetstatus
    from ggufops.serve.app import read_token

    missing = [f"--{k.replace('_url', '').replace('_', '-')}" for k in
               ("repo_url", "env", "store", "server_url") if not options[k]]
    if missing:
        raise UsageError(f"ggufops agent needs {', '.join(missing)}; see `ggufops agent --help`")
    _logging(options["log_level"])
    token_file = options["admin_token_file"]
    port = options["status_port"]
    config = agent_api.AgentConfig(
        repo_url=options["repo_url"], env=options["env"], store=options["store"],
        server_url=options["server_url"], branch=options["branch"],
        state_dir=options["state_dir"] or agentstatus.default_state_dir(),
        interval=options["interval"], status_host=options["status_host"],
        status_port=None if port < 0 else port,
        admin_token=read_token(token_file) if token_file else None, keep=options["keep"],
        s3_endpoint=options["s3_endpoint"], prune=options["prune"],
        timeout=options["timeout"], backoff_max=options["backoff_max"],
        download_timeout=options["download_timeout"], mismatch_retry=options["mismatch_retry"],
        host_name=options["host_name"], heartbeat=options["heartbeat"],
        labels=tuple(fleetstatus.parse_labels(options["labels"]).items()),
        fleet_status=options["fleet_status"], jitter=options["jitter"],
        trust=TrustPolicy.load(options["trust"], allow_rewrite=options["allow_rewrite"]),
        webhook_secret=read_secret(secret) if (secret := options["webhook_secret_file"]) else None,
        watch=options["watch"],
        push_url=options["push_url"], push_token_file=options["push_token_file"],
        signing_key=options["signing_key"],
        notify=NotifyConfig(options["notify_url"], options["notify_secret_file"],
                            options["notify_format"]) if options["notify_url"]
        else None,
    )  # fmt: skip
    with _stop_on_signals() as stop:
        agent_api.run_agent(config, stop, ready=lambda url: _announce(
            f"ggufops agent: watching {config.shown_url} ({config.branch}) for {config.env}"
            f"{' (signed commits only)' if config.trust.allowed_signers else ''}; "
            f"status {url + '/status' if url else 'off'}; state {config.state_dir}"))


@agent.command("status")
@click.option("--state-dir", type=_DIR, default=None, envvar="GGUFOPS_STATE_DIR",
              help="The agent's state directory (default as for `ggufops agent`).")
@click.option("--url", metavar="URL", default=None, envvar="GGUFOPS_AGENT_URL",
              help="Ask a running agent instead, e.g. http://127.0.0.1:9180.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True,
              envvar="GGUFOPS_STATUS_LIMIT", help="Recent apply attempts to show.")
@json_option
def agent_status(state_dir: Path | None, url: str | None, limit: int, as_json: bool) -> None:
    """Show the agent's phase, commits, models and recent applies (from its apply log)."""
    from ggufops.agent import status as agentstatus

    if url:
        report = agentstatus.fetch_status(url)
    else:
        report = agentstatus.read_status(state_dir or agentstatus.default_state_dir(), limit)
    if as_json:
        print_json(report)
    else:
        click.echo(agentstatus.format_status(report))


@click.command("publish-head")
@click.option("--env", "env", required=True, metavar="ENV",
              help="Environment whose agents watch the pointer.")
@click.option("--branch", default="main", show_default=True,
              help="Branch whose commit is published (the agents' --branch).")
@click.option("--commit", "commit", default=None, metavar="REF",
              help="Commit to publish (default: the branch's, as this checkout has it).")
@json_option
@click.pass_context
def publish_head(ctx: click.Context, *, env: str, branch: str, commit: str | None,
                 as_json: bool) -> None:
    """Write the branch's commit to S3 (fleet/<env>/HEAD) for agents run with --watch s3://.

    Run it in CI after every merge to the branch (docs/scale.md)."""
    from ggufops.gitops import headpointer

    root = repo_path(ctx)
    sha = git.rev_parse(root, commit or branch)
    url = headpointer.publish(root, env, sha, branch)
    if as_json:
        print_json({"url": str(url), "commit": sha, "branch": branch, "environment": env})
    else:
        click.echo(f"published {sha[:12]} ({branch}) to {url}; agents: --watch {url}")


COMMANDS: list[click.Command] = [serve, agent, publish_head]
