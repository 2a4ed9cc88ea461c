"""`ggufops deploy`, `rollback`, `history`: changing environments through git."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
