"""`ggufops bench`, `gate`: llama.cpp benchmark gates."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
