"""``rolebus worker``: run one stream processor (several share the WAL's
partitions when they run with the same app id)."""

from __future__ import annotations

from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import state
from rolebus.streams.runtime.options import WorkerOptions
from rolebus.streams.runtime.process import run_worker


def worker(
    ctx: typer.Context,
    app_id: Annotated[
        str | None, typer.Option("--app-id", help="Consumer group of the workers (ROLEBUS_APP_ID)")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Most WAL records folded per batch")
    ] = WorkerOptions.batch_max,
    batch_wait: Annotated[
        float,
        typer.Option(
            min=0.001, help="Seconds an idle worker waits for records (never when some are there)"
        ),
    ] = WorkerOptions.batch_wait_s,
    fork_wait: Annotated[
        float, typer.Option(min=0.0, help="Seconds a fork waits for its source commit")
    ] = WorkerOptions.fork_wait_s,
    session_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds before a silent worker is replaced")
    ] = WorkerOptions.session_timeout_s,
    compression: Annotated[
        str,
        typer.Option(help="Compression of the records the worker writes: lz4, zstd, gzip or none"),
    ] = "lz4",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs, and aiokafka's own INFO logs")
    ] = False,
) -> None:
    """Fold the WAL into changes, commits and rejections until SIGTERM/SIGINT.

    Workers with the same app id form one consumer group and share the WAL's
    partitions; each keeps its partitions' role states in memory, stores them
    in the `<app id>-state-changelog` topic and restores them from there after
    a restart or a rebalance."""
    settings = state(ctx).settings(app_id=app_id)
    options = WorkerOptions(
        batch_max=batch_size,
        batch_wait_s=batch_wait,
        fork_wait_s=fork_wait,
        session_timeout_s=session_timeout,
        compression=_compression(compression),
    )
    run_worker(settings, endpoints.resolve(settings), options, verbose=verbose)


def _compression(name: str) -> str | None:
    allowed = ("lz4", "zstd", "gzip", "none")
    if name not in allowed:
        raise typer.BadParameter(f"must be one of {', '.join(allowed)} (got {name!r})")
    return None if name == "none" else name
