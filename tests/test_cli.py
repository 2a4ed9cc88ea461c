"""The CLI as a whole: every command and option documents itself; exit codes are mapped."""

from __future__ import annotations

import click
from click.testing import CliRunner

from ggufops.cli import main


def _walk(command: click.Command, path: str = "ggufops") -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
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
    names = set(main.commands)
    assert {"validate", "list", "show"} <= names


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(main, ["show", "not-a-ref"])
    assert result.exit_code == 2
    assert "name@X.Y.Z" in result.output


def test_unknown_command_exits_2() -> None:
    assert CliRunner().invoke(main, ["no-such-command"]).exit_code == 2
