"""The ``rolebus`` command line. Each command group lives in its own module;
errors become one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from rolebus.cli import (
    dashboard,
    db,
    demo,
    project,
    reads,
    rebuild,
    replay,
    role,
    stack,
    topics,
    wal,
    worker,
)
from rolebus.cli.common import State
from rolebus.errors import ConfigError, RolebusError

app = typer.Typer(
    name="rolebus",
    help="Event-sourced backbone for AI role platforms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(topics.app, name="topics")
app.add_typer(role.app, name="role")
app.add_typer(wal.app, name="wal")
app.add_typer(db.app, name="db")
app.add_typer(replay.app, name="replay")
app.command()(role.say)
app.command()(role.commit)
app.command()(role.rollback)
app.command()(role.fork)
app.command()(demo.demo)
app.command()(worker.worker)
app.command()(project.project)
app.command()(dashboard.dashboard)
app.command()(reads.log)
app.command()(reads.show)
app.command()(reads.diff)
app.command()(reads.rejections)
app.command()(reads.recall)
app.command()(reads.context)
app.command("asof")(replay.asof_command)
replay.app.command("projections")(rebuild.projections)
replay.app.command("drop")(rebuild.drop)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="rolebus.toml to read (default ./rolebus.toml)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Local stack data folder (ROLEBUS_DATA_DIR)")
    ] = None,
) -> None:
    ctx.obj = State(config_file=config, overrides={"data_dir": data_dir})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Connection failures surface as one RolebusError naming the setting;
    # aiokafka's own retry chatter would only bury it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        app()  # standalone: usage errors and typer.Exit become exit codes here
    except RolebusError as exc:
        print(f"rolebus: error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
