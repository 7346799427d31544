"""``rolebus topics ensure``: create the rolebus topics, report drift."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import print_json, state
from rolebus.wal import topics

app = typer.Typer(help="Kafka topics of rolebus.", no_args_is_help=True)


@app.command()
def ensure(
    ctx: typer.Context,
    fix: Annotated[bool, typer.Option(help="Alter topic configs that drifted")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create missing topics (idempotent). Exit 3 if drift remains."""
    settings = state(ctx).settings()
    reports = asyncio.run(topics.ensure(settings, endpoints.resolve(settings), fix=fix))
    if as_json:
        print_json([asdict(r) for r in reports])
    else:
        for r in reports:
            print(f"{r.name}: {r.action}")
            for d in r.drift:
                print(f"  drift: {d}")
    if any(r.action == "drift" for r in reports):
        raise typer.Exit(3)
