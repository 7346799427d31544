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
