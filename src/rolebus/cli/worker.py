"""``rolebus worker``: run one stream processor (several share the WAL's
partitions when they run with the same app id)."""

from __future__ import annotations

from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import state


def worker(
    ctx: typer.Context,
    app_id: Annotated[
        str | None, typer.Option("--app-id", help="Consumer group / faust app id (ROLEBUS_APP_ID)")
    ] = None,
    web_port: Annotated[
        int | None, typer.Option("--web-port", help="faust web server on 127.0.0.1 (default: off)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Most records folded per batch")] = 1000,
    batch_wait: Annotated[
        float, typer.Option(min=0.001, help="Seconds to wait for a batch to fill")
    ] = 0.05,
    fork_wait: Annotated[
        float, typer.Option(min=0.0, help="Seconds a fork waits for its source commit")
    ] = 60.0,
    session_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds before a silent worker is replaced")
    ] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="faust's own INFO logs")] = False,
) -> None:
    """Fold the WAL into changes, commits and rejections until SIGTERM/SIGINT."""
    # Imported here: faust is heavy and only this command needs it.
    from rolebus.streams.app import WorkerOptions
    from rolebus.streams.worker import run_worker

    settings = state(ctx).settings(app_id=app_id)
    options = WorkerOptions(
        batch_size=batch_size,
        batch_wait_s=batch_wait,
        fork_wait_s=fork_wait,
        web_port=web_port,
        session_timeout_s=session_timeout,
    )
    run_worker(settings, endpoints.resolve(settings), options, verbose=verbose)
