"""`ggufops register`, `ggufops pull`: artifacts into the registry and back out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ggufops import progress
from ggufops.artifacts import pull as pull_api
from ggufops.artifacts import register as register_api
from ggufops.cli.options import VERSION_REF, json_option, print_json, registry_from
from ggufops.registry.registry import VersionRef


def _inference(temperature: float | None, top_p: float | None,
               max_tokens: int | None) -> dict[str, Any]:
    values = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    return {k: v for k, v in values.items() if v is not None}


@click.command("register")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="Model name, e.g. llama3-instruct.")
@click.option("--version", "version", required=True, metavar="X.Y.Z",
              help="Semantic version of this model version (immutable once registered).")
@click.option("--parent", metavar="X.Y.Z", default=None,
              help="The version this one derives from (lineage); must be registered.")
@click.option("--base-model", default=None,
              help="Base model name (default: the parent's, else the model name).")
@click.option("--notes", default=None, help="Free text stored in the version file.")
@click.option("--quantization", default=None, metavar="Q",
              help="Expected quantization (e.g. q4_k_m); refused if the GGUF header differs.")
@click.option("--eval-set", default=None, metavar="NAME",
              help="Eval set under registry/evals/ (default: the only one there).")
@click.option("--temperature", type=float, default=None,
              help="Inference temperature (default: the parent's, else 0.7).")
@click.option("--top-p", type=float, default=None,
              help="Inference top_p (default: the parent's, else 0.95).")
@click.option("--max-tokens", type=int, default=None,
              help="Inference max tokens (default: the parent's, else 256).")
@click.option("--chat-format", "--prompt-template", "chat_format", default=None, metavar="NAME",
              help="Chat template: a llama-cpp-python chat format (e.g. chatml, llama-3), "
              "'gguf' (the file's own tokenizer.chat_template) or 'none' (no chat). "
              "Default: the file's own template, else none.")
@click.option("--push/--no-push", default=True, show_default=True,
              help="Push the artifact to the DVC remote before writing the version file.")
@json_option
@click.pass_context
def register(ctx: click.Context, *, file: Path, model: str, version: str, parent: str | None,
             base_model: str | None, notes: str | None, quantization: str | None,
             eval_set: str | None, temperature: float | None, top_p: float | None,
             max_tokens: int | None, chat_format: str | None, push: bool,
             as_json: bool) -> None:
    """Register FILE (a GGUF model) as MODEL@VERSION: track, push, write the version file."""
    request = register_api.RegisterRequest(
        source=file, model=model, version=version, parent=parent, base_model=base_model,
        notes=notes, quantization=quantization, eval_set=eval_set, push=push,
        inference=_inference(temperature, top_p, max_tokens), chat_format=chat_format,
    )
    bars = progress.reporter(progress.wanted(False if as_json else None), f"{model}@{version}")
    result = register_api.register(registry_from(ctx), request, reporter=bars)
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(f"registered {result.display_id}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not result.pushed:
        click.echo(f"not pushed: run `dvc push -r models {result.git_paths[1]}` before "
                   "committing, or validate --check-artifacts will fail", err=True)
    click.echo("commit it:")
    for command in result.commit_commands():
        click.echo(f"  {command}")


@click.command("pull")
@click.argument("ref", type=VERSION_REF)
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Content-addressed store (default: $GGUFOPS_STORE or .ggufops/store).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also put the verified file here (hardlink or copy, atomic).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: only on a terminal and not in CI).")
@json_option
@click.pass_context
def pull(ctx: click.Context, *, ref: VersionRef, store: Path | None, output: Path | None,
         progress: bool | None, as_json: bool) -> None:
    """Fetch REF's artifact (NAME@X.Y.Z) into the local store, verified by sha256."""
    registry = registry_from(ctx)
    store_root = store or pull_api.default_store(registry.root)
    result = pull_api.pull(registry, ref, store_root, output=output, progress=progress)
    if as_json:
        print_json(result.as_dict())
        return
    state = "downloaded and verified" if result.downloaded else "already in the store"
    click.echo(f"{ref}: {state}: {result.path}")
    if result.output is not None:
        click.echo(f"{ref}: written to {result.output}")


COMMANDS: list[click.Command] = [register, pull]
