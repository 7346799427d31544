"""``rolebus replay projections`` and ``rolebus replay drop``: rebuild the
context store into a fresh table set, compare it with the live one, swap it
in; drop an old set."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import print_json, progress, state
from rolebus.cli.progress import EventProgress

if TYPE_CHECKING:
    from rolebus.projectors.bluegreen import RebuildReport


def projections(
    ctx: typer.Context,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Rebuild and verify this tenant only")
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="Rebuild and verify this role only")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare the rebuilt tables with the live ones")
    ] = False,
    swap: Annotated[
        bool, typer.Option("--swap", help="Make the rebuilt set the live one (old one kept)")
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="The live projector's group (ROLEBUS_PROJECTOR_GROUP; default <app id>-projector)",
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option("--schema", help="The live store's schema (ROLEBUS_PG_SCHEMA)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Rebuild the context store and dashboards from the output topics into a new
    schema while the live one keeps serving; optionally verify and swap it in."""
    from rolebus.projectors.bluegreen import RebuildOptions, rebuild_projections
    from rolebus.projectors.embeddings import load_provider
    from rolebus.projectors.projector import default_group
    from rolebus.projectors.rebuild import Scope

    settings = state(ctx).settings(pg_schema=schema, projector_group=group)
    ends = endpoints.resolve(settings)
    logging.getLogger("rolebus.projectors").setLevel(logging.WARNING)
    options = RebuildOptions(
        live_schema=settings.pg_schema,
        projector=settings.projector_group or default_group(settings),
        scope=Scope(tenant, role), verify=verify, swap=swap, batch_size=settings.projector_batch,
    )  # fmt: skip

    async def run() -> None:
        provider = load_provider(settings)
        try:
            with EventProgress("rebuilding", unit="records") as bar:
                report = await rebuild_projections(
                    settings, ends, options, provider, bar, datetime.now(UTC)
                )
        finally:
            await provider.aclose()
        if as_json:
            print_json(report.to_json())
        _show(report)
        if not report.ok:
            raise typer.Exit(1)

    asyncio.run(run())


def _show(report: RebuildReport) -> None:
    """The one-line summary, then the first differences (stderr)."""
    progress(report.summary())
    for diff in report.diffs or ():
        if not diff.same:
            progress(f"{diff.table}: {diff.only_live} rows only live, {diff.only_rebuilt} rebuilt")
            for row in diff.first:
                progress(f"  {row}")
    kept = report.retired or (report.rebuilt if not report.ok else None)
    if kept is not None:
        progress(f"table set {kept} is kept: `rolebus replay drop {kept}` drops it")


def drop(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schema of the table set to drop")],
    schema: Annotated[
        str | None, typer.Option("--schema", help="The live store's schema (ROLEBUS_PG_SCHEMA)")
    ] = None,
) -> None:
    """Drop an old or rebuilt table set of the context store (never the live one)."""
    from rolebus.projectors import db
    from rolebus.projectors.swap import drop_set

    settings = state(ctx).settings(pg_schema=schema)
    ends = endpoints.resolve(settings)

    async def run() -> None:
        async with db.connect(settings, ends, autocommit=True) as conn:
            await drop_set(conn, name, settings.pg_schema)

    asyncio.run(run())
    progress(f"dropped table set {name}")
