"""``rolebus db``: the context store's schema (``migrate``) and upkeep
(``reembed``: embed the messages whose embedding failed)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import progress, state

app = typer.Typer(help="The PostgreSQL context store: schema and upkeep.", no_args_is_help=True)

SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="PostgreSQL schema of the store (ROLEBUS_PG_SCHEMA)"),
]


@app.command()
def migrate(ctx: typer.Context, schema: SchemaOption = None) -> None:
    """Create or upgrade the context store's tables (safe to run again)."""
    from rolebus.projectors import db
    from rolebus.projectors.embeddings import load_provider

    settings = state(ctx).settings(pg_schema=schema)
    ends = endpoints.resolve(settings)

    async def run() -> list[db.Migration]:
        provider = load_provider(settings)
        try:
            async with db.connect(settings, ends) as conn:
                return await db.migrate(
                    conn, settings.pg_schema, embedding_dim=provider.dim,
                    embedding_model=provider.name,
                )  # fmt: skip
        finally:
            await provider.aclose()

    applied = asyncio.run(run())
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied) or "nothing new"
    progress(f"schema {settings.pg_schema}: applied {names}")


@app.command()
def reembed(
    ctx: typer.Context,
    schema: SchemaOption = None,
    batch: Annotated[int, typer.Option(min=1, help="Messages embedded per call")] = 256,
) -> None:
    """Embed again the messages whose embedding failed when they were projected."""
    from rolebus.projectors import db
    from rolebus.projectors.embeddings import load_provider
    from rolebus.projectors.reembed import Reembedded
    from rolebus.projectors.reembed import reembed as run_reembed

    settings = state(ctx).settings(pg_schema=schema)
    ends = endpoints.resolve(settings)

    async def run() -> Reembedded:
        provider = load_provider(settings)
        try:
            async with db.connect(settings, ends) as conn:
                await db.migrate(
                    conn, settings.pg_schema, embedding_dim=provider.dim,
                    embedding_model=provider.name,
                )  # fmt: skip
                return await run_reembed(conn, provider, batch)
        finally:
            await provider.aclose()

    done = asyncio.run(run())
    progress(f"schema {settings.pg_schema}: {done.fixed} embedded, {done.failed} still failing")
    if done.failed:
        raise typer.Exit(1)
