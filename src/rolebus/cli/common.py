"""What every command shares: settings built once per invocation, output helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from rolebus.config import Settings, load_settings

err_console = Console(stderr=True)


@dataclass
class State:
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self, **more: Any) -> Settings:
        return load_settings(config_file=self.config_file, **self.overrides, **more)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()


def progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays parseable."""
    err_console.print(f"[dim]·[/dim] {message}", highlight=False)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
