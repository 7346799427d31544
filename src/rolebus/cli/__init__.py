"""The ``rolebus`` command line. Each command group lives in its own module;
errors become one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from rolebus.cli import stack, topics
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
        code = app(standalone_mode=False)
    except RolebusError as exc:
        print(f"rolebus: error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except typer.Abort:
        print("rolebus: aborted", file=sys.stderr)
        sys.exit(130)
    except (typer.BadParameter, typer.Exit, SystemExit):
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
