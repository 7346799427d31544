"""Bulk writes of the projector: per-connection temp staging tables, COPY
into them, and the column lists and row conversions the store needs.

Each staging table is ``LIKE`` its target (same columns and types) and is
emptied at every commit, so a batch's rows go in with one COPY and reach the
target with one INSERT ... SELECT (deduplicated there by ON CONFLICT).

Invariants: column lists match the row tuples built here; messages are copied
in binary (vectors as packed floats), everything else as text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from rolebus.projectors import rollup, seqranges
from rolebus.projectors.plan import MessageRow
from rolebus.projectors.roles import RoleRow
from rolebus.wal.snapshot import Counters, counters_json, parse_counters

Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
Vectored = tuple[Any, str | None]
"""(embedding or None, embedding error or None)."""

ROLE_COLUMNS: Final[tuple[str, ...]] = (
    "tenant_id",
    "role_id",
    "lifecycle",
    "name",
    "persona",
    "traits",
    "model",
    "skills",
    "seq",
    "head_commit_id",
    "counters",
    "live",
    "forked_from_role",
    "forked_from_commit",
    "forked_live",
    "created_at",
    "updated_at",
    "lifecycle_seq",
    "name_seq",
    "persona_seq",
)
MESSAGE_COLUMNS: Final = (*MessageRow._fields, "superseded", "embedding", "embedding_error")
MESSAGE_TYPES: Final = (
    "text", "text", "int8", "text", "uuid", "text", "text", "int4", "int4", "int4", "text",
    "text[]", "jsonb", "timestamptz", "bool", "vector", "text",
)  # fmt: skip
AGG_COLUMNS: Final = (
    "tenant_id",
    "role_id",
    "minute",
    *rollup.COUNT_COLUMNS,
    "lag_ms_max",
    "latency_hist",
)
_STAGES: Final[dict[str, LiteralString]] = {
    "stage_events": "events", "stage_messages": "messages", "stage_commits": "commits",
    "stage_rejections": "rejections", "stage_rollbacks": "rollbacks", "stage_roles": "roles",
    "stage_agg": "agg_minute", "stage_agg_rej": "agg_rejections_minute",
}  # fmt: skip


def ids(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


async def create_stages(cur: Cursor) -> None:
    """The temp staging tables of this connection (emptied at each commit)."""
    for stage, table in _STAGES.items():
        await cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS"
            ).format(sql.Identifier(stage), sql.Identifier(table))
        )
    await cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_flips (tenant_id text, role_id text,"
        " value boolean, first bigint, last bigint) ON COMMIT DELETE ROWS"
    )


async def copy_rows(
    cur: Cursor, stage: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage), ids(columns))
    async with cur.copy(stmt) as copy:
        for row in rows:
            await copy.write_row(row)


async def copy_messages(
    cur: Cursor,
    rows: Sequence[MessageRow],
    embedded: Mapping[str, Vectored],
    gone: Callable[[str, str, int], bool],
) -> None:
    """Messages into ``stage_messages``; ``gone`` tells the superseded flag."""
    stmt = sql.SQL("COPY stage_messages ({}) FROM STDIN (FORMAT BINARY)").format(
        ids(MESSAGE_COLUMNS)
    )
    # Binary: the vectors go as packed floats (text would format every float).
    async with cur.copy(stmt) as copy:
        copy.set_types(MESSAGE_TYPES)
        for m in rows:
            vector, error = embedded.get(m.event_id, (None, "not embedded"))
            tool = None if m.tool_call is None else Jsonb(m.tool_call, dumps=_as_is)
            flag = gone(m.tenant_id, m.role_id, m.seq)
            row = (
                *m[:4],
                uuid.UUID(m.event_id),
                *m[5:12],
                tool,
                m.occurred_at,
                flag,
                vector,
                error,
            )
            await copy.write_row(row)


def _as_is(text: Any) -> str:
    """JSON text already encoded by the planner."""
    return str(text)


def _add(column: str) -> sql.Composed:
    return sql.SQL("{0} = a.{0} + EXCLUDED.{0}").format(sql.Identifier(column))


AGG_UPSERT: Final = sql.SQL(
    "INSERT INTO agg_minute AS a ({c}) SELECT {c} FROM stage_agg"
    " ORDER BY tenant_id, role_id, minute"
    " ON CONFLICT (tenant_id, role_id, minute) DO UPDATE SET {adds},"
    " lag_ms_max = GREATEST(a.lag_ms_max, EXCLUDED.lag_ms_max),"
    " latency_hist = ARRAY(SELECT COALESCE(x, 0) + COALESCE(y, 0)"
    " FROM unnest(a.latency_hist, EXCLUDED.latency_hist) WITH ORDINALITY AS h(x, y, i)"
    " ORDER BY i)"
).format(c=ids(AGG_COLUMNS), adds=sql.SQL(", ").join(_add(c) for c in rollup.COUNT_COLUMNS))


def role_tuple(r: RoleRow) -> tuple[Any, ...]:
    return (
        r.tenant_id,
        r.role_id,
        r.lifecycle,
        r.name,
        r.persona,
        json.dumps(dict(r.traits)),
        r.model,
        list(r.skills),
        r.seq,
        r.head_commit_id,
        json.dumps(counters_json(r.counters)),
        seqranges.literal(r.live),
        r.forked_from_role,
        r.forked_from_commit,
        None if r.forked_live is None else seqranges.literal(r.forked_live),
        r.created_at,
        r.updated_at,
        r.lifecycle_seq,
        r.name_seq,
        r.persona_seq,
    )


def role_row(v: Sequence[Any]) -> RoleRow:
    return RoleRow(
        tenant_id=v[0],
        role_id=v[1],
        lifecycle=v[2],
        name=v[3],
        persona=v[4],
        traits=dict(v[5]),
        model=v[6],
        skills=tuple(v[7]),
        seq=int(v[8]),
        head_commit_id=v[9],
        counters=parse_counters(v[10]) if v[10] else Counters(),
        live=seqranges.from_multirange(v[11]),
        forked_from_role=v[12],
        forked_from_commit=v[13],
        forked_live=None if v[14] is None else seqranges.from_multirange(v[14]),
        created_at=v[15],
        updated_at=v[16],
        lifecycle_seq=int(v[17]),
        name_seq=int(v[18]),
        persona_seq=int(v[19]),
    )
