"""``rolebus project``: fill the context store from the output topics until
SIGTERM/SIGINT. Several processes with the same group share the partitions."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import progress, state


def project(
    ctx: typer.Context,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="Consumer group, also the name its offsets are stored under "
            "(ROLEBUS_PROJECTOR_GROUP; default <app id>-projector)",
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="PostgreSQL schema of the store (ROLEBUS_PG_SCHEMA)"),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch", min=1, help="Most records written per transaction (ROLEBUS_PROJECTOR_BATCH)"
        ),
    ] = None,
) -> None:
    """Write changes, commits and rejections into PostgreSQL, exactly once."""
    from rolebus.projectors.embeddings import load_provider
    from rolebus.projectors.projector import ProjectorOptions, default_group, run_projector

    settings = state(ctx).settings(pg_schema=schema, projector_group=group, projector_batch=batch)
    ends = endpoints.resolve(settings)
    logging.getLogger("rolebus.projectors").setLevel(logging.INFO)
    options = ProjectorOptions(
        group_id=settings.projector_group or default_group(settings),
        schema=settings.pg_schema,
        batch_size=settings.projector_batch,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        provider = load_provider(settings)
        try:
            stats = await run_projector(settings, ends, options, provider, stop)
        finally:
            await provider.aclose()
        progress(f"projector {options.group_id}: stopped after {stats.records} records")

    asyncio.run(run())
