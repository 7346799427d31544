"""Blue/green table sets of the context store: names, the live projector's
lock, the atomic swap and the explicit drop.

A table set is one PostgreSQL schema holding every store table. Readers and
the live projector reach the live set by NAME (their ``search_path``), so
renaming schemas switches them all at once: PostgreSQL drops every cached
plan and search path when a schema is renamed, and the store's SQL functions
carry no ``SET search_path`` (migration 010).

How the live projector (``rolebus project``) follows a swap without losing or
duplicating rows:

1. the rebuild stores the new set's offsets under the live projector's name;
2. ``lock_live`` locks the live projector's ``projector_offsets`` rows (FOR
   UPDATE): its next batch waits in its fence (``Store._fence``), so the live
   offsets stop moving; the rebuild then catches up to exactly those offsets;
3. ``swap_sets``, in that same transaction, copies the measured processing
   lag of ``agg_minute`` over (``carry_lag``), moves the old set's offset rows
   to another projector name (``<name>@<old set>``) and renames the schemas.
   When it commits, the waiting batch finds no offset rows of its own: it is
   fenced, dropped and re-read from the offsets now stored in the NEW set,
   which equal the live ones. Later batches write into the new set.

The live projector must run with the embedding provider of the new set: a
set with another dimension makes its next message batch fail loudly (restart
it with the new ``ROLEBUS_EMBEDDINGS``).

Invariants: the live schema is never dropped; a swap either renames both
schemas or neither; names are composed with ``psycopg.sql`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from rolebus.errors import ConfigError, StoreError
from rolebus.projectors.store import TP

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
MAX_NAME = 63
"""PostgreSQL's identifier length limit."""


def set_names(live: str, at: datetime) -> tuple[str, str]:
    """(name of the rebuilt set, name the live set gets when swapped out)."""
    stamp = at.strftime("%Y%m%d%H%M%S")
    rebuilt, retired = f"{live}_r{stamp}", f"{live}_o{stamp}"
    if len(retired) > MAX_NAME:
        raise ConfigError(
            f"schema {live!r}: the rebuilt set's name {rebuilt!r} is longer than "
            f"{MAX_NAME} characters (use a shorter ROLEBUS_PG_SCHEMA)"
        )
    return rebuilt, retired


async def schema_exists(conn: Conn, schema: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    return await cur.fetchone() is not None


async def offsets_of(conn: Conn, schema: str, name: str, *, lock: bool = False) -> dict[TP, int]:
    """A projector's stored offsets in a set; ``lock``: FOR UPDATE (the caller
    holds a transaction; the live projector's next write waits for it)."""
    stmt = sql.SQL(
        "SELECT topic, partition, next_offset FROM {} WHERE projector = %s"
        " ORDER BY topic, partition{}"
    ).format(sql.Identifier(schema, "projector_offsets"), sql.SQL(" FOR UPDATE" if lock else ""))
    cur = await conn.execute(stmt, (name,))
    return {(str(t), int(p)): int(n) for t, p, n in await cur.fetchall()}


async def projector_names(conn: Conn, schema: str) -> set[str]:
    """The projectors with offsets in a set (``name@set`` ones were swapped out)."""
    cur = await conn.execute(
        sql.SQL("SELECT DISTINCT projector FROM {}").format(
            sql.Identifier(schema, "projector_offsets")
        )
    )
    return {str(row[0]) for row in await cur.fetchall() if "@" not in str(row[0])}


async def swap_sets(conn: Conn, live: str, rebuilt: str, retired: str, name: str) -> None:
    """Inside the caller's transaction (after ``offsets_of(lock=True)``): fence
    the live projector's batch in flight, then rename both schemas."""
    await conn.execute(
        sql.SQL("UPDATE {} SET projector = %s WHERE projector = %s").format(
            sql.Identifier(live, "projector_offsets")
        ),
        (f"{name}@{retired}", name),
    )
    await carry_lag(conn, live, rebuilt)
    await _note(conn, live, {"retired_by": rebuilt, "retired_as": retired})
    await _note(conn, rebuilt, {"swapped_in_from": rebuilt, "swapped_out": retired})
    await conn.execute(
        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
            sql.Identifier(live), sql.Identifier(retired)
        )
    )
    await conn.execute(
        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
            sql.Identifier(rebuilt), sql.Identifier(live)
        )
    )


async def carry_lag(conn: Conn, live: str, rebuilt: str) -> int:
    """The dashboards' processing lag of the past is what the live projector
    measured, not the rebuild's (events projected hours after they happened):
    copy it for every minute both sets counted the same events of."""
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {r} r SET lag_ms_sum = l.lag_ms_sum, lag_ms_max = l.lag_ms_max FROM {l} l"
            " WHERE r.tenant_id = l.tenant_id AND r.role_id = l.role_id AND r.minute = l.minute"
            " AND r.lag_count = l.lag_count"
        ).format(r=sql.Identifier(rebuilt, "agg_minute"), l=sql.Identifier(live, "agg_minute"))
    )
    return cur.rowcount


async def _note(conn: Conn, schema: str, notes: Mapping[str, str]) -> None:
    """Where a set came from, in its ``store_meta`` (for operators)."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (key, value) SELECT * FROM unnest(%s::text[], %s::text[])"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ).format(sql.Identifier(schema, "store_meta")),
        (list(notes), list(notes.values())),
    )


async def drop_set(conn: Conn, schema: str, live: str) -> None:
    """Drop a table set that is not the live one (autocommit or own transaction)."""
    if schema == live:
        raise ConfigError(
            f"schema {schema!r} is the live context store (ROLEBUS_PG_SCHEMA); refusing to "
            "drop it (swap another set in first, or drop it by hand)"
        )
    cur = await conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
        " AND table_name IN ('store_meta', 'schema_migrations', 'messages') HAVING count(*) = 3",
        (schema,),
    )
    if await cur.fetchone() is None:
        raise StoreError(
            f"schema {schema!r} does not exist or is not a rolebus table set (no store_meta, "
            "schema_migrations and messages tables); nothing dropped"
        )
    await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
