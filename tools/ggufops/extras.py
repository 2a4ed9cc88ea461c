"""Which optional extra of the `ggufops` package a command or a library comes from.

The core install runs validate, list, show, deploy, rollback, history and pr-comment. The
other commands need an extra; when one is missing, the CLI turns the ModuleNotFoundError
into one line that names the extra to install (`pip install 'ggufops[gate]'`).
"""

from __future__ import annotations

from ggufops.errors import MissingExtra

# The extra each command needs beyond the core (pyproject.toml's optional-dependencies).
COMMAND_EXTRAS = {
    "s3": "artifacts",
    "register": "artifacts",
    "pull": "s3",
    "toy": "llama",
    "bench": "gate",
    "gate": "gate",
    "serve": "serve",
    "agent": "agent",
    "demo": "all",
}

# Third-party top-level modules -> the extra that installs them.
MODULE_EXTRAS = {
    "boto3": "s3",
    "botocore": "s3",
    "dvc": "artifacts",
    "dvc_s3": "artifacts",
    "gguf": "artifacts",
    "numpy": "llama",
    "llama_cpp": "llama",
    "prometheus_client": "serve",
}


def extra_for(command: str | None, module: str) -> str | None:
    """The extra to install when `command` fails to import `module` (None: not ours)."""
    top = module.split(".", maxsplit=1)[0]
    if top not in MODULE_EXTRAS:
        return None
    return COMMAND_EXTRAS.get(command or "", MODULE_EXTRAS[top])


def install_hint(extra: str) -> str:
    return f"pip install 'ggufops[{extra}]'"


def as_missing_extra(error: ModuleNotFoundError, command: str | None) -> MissingExtra | None:
    """A one-line MissingExtra for an optional library that is not installed, else None."""
    extra = extra_for(command, error.name or "")
    if extra is None:
        return None
    doing = f"`ggufops {command}`" if command else "this command"
    return MissingExtra(f"{doing} needs the Python package {error.name!r}, which is not "
                        f"installed; install the extra with: {install_hint(extra)}")
