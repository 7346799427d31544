"""The context store's connection and schema: ``connect`` and ``migrate``.

Every projector and query reaches PostgreSQL through ``connect``: an async
psycopg connection with pgvector's types registered and ``search_path`` set
to one store schema (``Settings.pg_schema``, or another name for a replay
that rebuilds into a fresh schema). ``migrate`` applies the versioned SQL
files of ``rolebus.projectors.migrations`` in order, once each, inside that
schema, then makes sure ``messages.embedding`` is ``vector(D)`` for the
embedding provider's dimension D.

Invariants: migrations are idempotent (a version is applied at most once,
recorded in ``schema_migrations`` in the same transaction as its DDL);
concurrent ``migrate`` calls serialize on an advisory lock; a store whose
embedding column has another dimension than the provider's is refused with
both numbers, never altered; SQL is composed with ``psycopg.sql``, never by
string formatting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import sql

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, StoreError

MIGRATIONS_PACKAGE = "rolebus.projectors.migrations"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """The packaged migration files, by version."""
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"{MIGRATIONS_PACKAGE}: two migration files share a version {versions}")
    return found


@asynccontextmanager
async def connect(
    settings: Settings, ends: Endpoints, schema: str | None = None, *, autocommit: bool = False
) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """A connection whose ``search_path`` is the store schema (then public, where
    the ``vector`` extension lives); closed on exit."""
    target = schema or settings.pg_schema
    try:
        conn = await psycopg.AsyncConnection.connect(
            ends.pg_dsn, autocommit=autocommit, connect_timeout=int(settings.connect_timeout_s)
        )
    except psycopg.OperationalError as exc:
        origin = "ROLEBUS_PG_DSN" if ends.pg_external else "the local stack (`rolebus stack up`)"
        raise StoreError(f"PostgreSQL at {origin} is unreachable: {exc}") from exc
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await cur.execute(
                sql.SQL("SET search_path TO {}, public").format(sql.Identifier(target))
            )
        if not autocommit:
            await conn.commit()
        await register_vector_async(conn)
        yield conn
    finally:
        await conn.close()


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"rolebus-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def migrate(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    *,
    embedding_dim: int,
    embedding_model: str,
) -> list[Migration]:
    """Apply what is missing in ``schema``; return the migrations applied now."""
    applied_now = []
    async with conn.transaction():
        cur = conn.cursor()
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        await cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await cur.execute(
            sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema))
        )
        await cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for migration in migrations():
            if migration.version in done:
                continue
            await cur.execute(sql.SQL(migration.text))  # a packaged file
            await cur.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration)
        await _ensure_embedding_column(cur, schema, embedding_dim, embedding_model)
    return applied_now


async def _ensure_embedding_column(
    cur: psycopg.AsyncCursor[tuple[object, ...]], schema: str, dim: int, model: str
) -> None:
    await cur.execute("SELECT value FROM store_meta WHERE key = 'embedding_dim'")
    row = await cur.fetchone()
    if row is not None and int(str(row[0])) != dim:
        raise ConfigError(
            f"context store schema '{schema}': messages.embedding is vector({row[0]}) but the "
            f"embedding provider {model!r} makes {dim}-dim vectors (configure the provider the "
            "store was built with, or rebuild into a new schema with `rolebus replay projections`)"
        )
    if row is None:
        await cur.execute(
            sql.SQL("ALTER TABLE messages ADD COLUMN IF NOT EXISTS embedding vector({})").format(
                sql.Literal(dim)
            )
        )
        await cur.execute(
            "CREATE INDEX IF NOT EXISTS messages_embedding_hnsw ON messages"
            " USING hnsw (embedding vector_cosine_ops)"
        )
        await cur.execute(
            "INSERT INTO store_meta (key, value) VALUES ('embedding_dim', %s),"
            " ('embedding_model', %s)",
            (str(dim), model),
        )
