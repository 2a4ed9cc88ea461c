"""The CLI as a whole: every command and option documents itself; exit codes are mapped."""

from __future__ import annotations

import click
from click.testing import CliRunner

from ggufops.cli import main


def _walk(command: click.Command, path: str = "ggufops") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found += _walk(sub, f"{path} {name}")
    return found


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in _walk(main):
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
    assert missing == []


def test_expected_commands_exist() -> None:
    names = set(main.list_commands(click.Context(main)))
    assert {"validate", "list", "show", "s3", "register", "pull", "toy", "bench", "gate",
            "deploy", "rollback", "history", "serve", "agent", "demo"} <= names


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(main, ["show", "not-a-ref"])
    assert result.exit_code == 2
    assert "name@X.Y.Z" in result.output


def test_unknown_command_exits_2() -> None:
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2


def test_lazy_table_lists_every_command_of_every_module() -> None:
    import importlib

    from ggufops.cli import COMMANDS

    modules = {target.split(":")[0] for target in COMMANDS.values()}
    declared = set()
    for name in modules:
        module = importlib.import_module(f"ggufops.cli.{name}")
        declared |= {c.name for c in module.COMMANDS}
    assert declared == set(COMMANDS)


def test_quick_commands_do_not_import_heavy_modules() -> None:
    import subprocess
    import sys

    code = ("import sys; from ggufops.cli import main; main.get_command(None, 'rollback'); "
            "print(sorted(m for m in ('numpy', 'llama_cpp', 'boto3', 'dvc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_module_imports_on_its_own() -> None:
    """No import cycles: each module can be the first one imported."""
    import pkgutil
    import subprocess
    import sys

    import ggufops

    names = [m.name for m in pkgutil.walk_packages(ggufops.__path__, "ggufops.")]
    assert "ggufops.serve.app" in names and "ggufops.cli.runtime" in names
    code = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k.startswith('ggufops')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except ImportError as e:\n        failed.append(f'{name}: {e}')\n"
            "print(failed)")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    assert len(names) > 40
