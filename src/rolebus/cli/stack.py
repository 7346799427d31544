"""``rolebus stack up|down|status|env``: the embedded local Kafka + PostgreSQL."""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rolebus import endpoints
from rolebus.cli.common import print_json, progress, state
from rolebus.stack.launcher import LocalStack, ServiceStatus

app = typer.Typer(
    help="Run the local stack: real Kafka (KRaft) + PostgreSQL/pgvector.", no_args_is_help=True
)

BrokersOpt = Annotated[
    int | None, typer.Option("--brokers", help="KRaft nodes (1; 3 for replication tests)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


@app.command()
def up(
    ctx: typer.Context,
    brokers: BrokersOpt = None,
    kafka_port: Annotated[int | None, typer.Option(help="First broker port")] = None,
    pg_port: Annotated[int | None, typer.Option(help="PostgreSQL port")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the stack (idempotent) and wait until it really answers."""
    settings = state(ctx).settings(brokers=brokers, kafka_port=kafka_port, pg_port=pg_port)
    started = time.monotonic()
    services = LocalStack(settings, progress).up()
    _show(services, as_json)
    if not as_json:
        progress(f"up in {time.monotonic() - started:.1f}s; data in {settings.data_dir.resolve()}")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local servers (data is kept)."""
    stopped = LocalStack(state(ctx).settings(), progress).down()
    progress("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Pids, addresses and real readiness of each service. Exit 1 if one is not ready."""
    services = LocalStack(state(ctx).settings()).status()
    _show(services, as_json)
    if not all(s.ready for s in services):
        raise typer.Exit(1)


@app.command()
def env(ctx: typer.Context) -> None:
    """Print the endpoints as shell exports: eval "$(rolebus stack env)"."""
    ends = endpoints.resolve(state(ctx).settings())
    print(f"export ROLEBUS_KAFKA_BOOTSTRAP={shlex.quote(ends.kafka_bootstrap)}")
    print(f"export ROLEBUS_PG_DSN={shlex.quote(ends.pg_dsn)}")


def _show(services: list[ServiceStatus], as_json: bool) -> None:
    if as_json:
        print_json([asdict(s) for s in services])
        return
    table = Table("service", "address", "pid", "state", "detail")
    for s in services:
        if s.external:
            what = "external"
        else:
            what = "running" if s.running else ("stale pid file" if s.stale_pid_file else "stopped")
        ready = {True: "[green]ready[/green]", False: "[red]not ready[/red]", None: ""}[s.ready]
        table.add_row(s.name, s.address, str(s.pid or ""), f"{what} {ready}".strip(), s.detail)
    Console().print(table)
