"""Compare two table sets of the context store row by row, and their recall.

Both sets live in one PostgreSQL database, so each table is compared inside
the server: ``EXCEPT ALL`` both ways over the compared columns, counted, plus
the first differing rows. Columns the projection fills from the wall clock
(``projected_at``, the lag columns of ``agg_minute``) and the embeddings
(compared through recall instead) are left out. The caller runs this in one
REPEATABLE READ transaction taken while both sets held the same inputs, so a
live projector that keeps writing does not show up as a difference.

Recall parity: for a sample of messages, each set recalls the ``k`` nearest
visible messages of the same role by the message's OWN embedding in that set;
parity is the mean overlap of the two result sets (1.0: same neighbours).
It works across embedding models and dimensions.

Invariants: read only; a scope filters both sides the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from rolebus.projectors.rebuild import Scope
from rolebus.projectors.recall import recall

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

MESSAGE_COLUMNS: Final = (
    "tenant_id", "role_id", "seq", "message_id", "event_id", "author", "content", "tokens_in",
    "tokens_out", "latency_ms", "model", "flags", "tool_call", "occurred_at", "superseded",
)  # fmt: skip
TABLES: Final[dict[str, tuple[str, ...]]] = {
    "roles": (
        "tenant_id", "role_id", "lifecycle", "name", "persona", "traits", "model", "skills",
        "seq", "head_commit_id", "counters", "live", "forked_from_role", "forked_from_commit",
        "forked_live", "created_at", "updated_at", "lifecycle_seq", "name_seq", "persona_seq",
    ),
    "events": (
        "event_id", "tenant_id", "role_id", "seq", "event_type", "occurred_at",
        "wal_partition", "wal_offset", "head_commit_id",
    ),
    "messages": MESSAGE_COLUMNS,
    "commits": (
        "commit_id", "tenant_id", "role_id", "parent_id", "seq", "kind", "label", "reason",
        "rollback_to", "state_digest", "occurred_at", "event_id", "snapshot", "live",
    ),
    "rollbacks": (
        "event_id", "tenant_id", "role_id", "seq", "to_commit_id", "reason", "after_seq",
        "superseded", "restored", "live", "occurred_at",
    ),
    "rejections": (
        "wal_topic", "wal_partition", "wal_offset", "reason", "message", "original",
        "event_id", "tenant_id", "role_id", "event_type", "occurred_at",
    ),
    "agg_minute": (
        "tenant_id", "role_id", "minute", "events", "msg_user", "msg_assistant", "msg_system",
        "msg_tool", "tokens_in", "tokens_out", "flag_hallucination", "flag_refusal",
        "flag_error", "flag_tool_error", "flag_safety", "created", "activated", "suspended",
        "resumed", "archived", "deleted", "forked", "rollbacks", "commits_requested",
        "persona_updates", "rejections", "latency_hist", "lag_count",
    ),
    "agg_rejections_minute": ("tenant_id", "role_id", "minute", "reason", "count"),
}  # fmt: skip
"""Compared columns per table: all but wall-clock and embedding columns."""


@dataclass(frozen=True)
class TableDiff:
    table: str
    live_rows: int
    rebuilt_rows: int
    only_live: int
    """Rows of the live set missing from the rebuilt one (compared columns)."""
    only_rebuilt: int
    first: tuple[dict[str, Any], ...]
    """The first differing rows, each with ``side`` = "live" or "rebuilt"."""

    @property
    def same(self) -> bool:
        return self.only_live == 0 and self.only_rebuilt == 0


def _scope_filter(scope: Scope) -> sql.Composable:
    parts: list[sql.Composable] = [sql.SQL("true")]
    if scope.tenant is not None:
        parts.append(sql.SQL("tenant_id = {}").format(sql.Literal(scope.tenant)))
    if scope.role is not None:
        parts.append(sql.SQL("role_id = {}").format(sql.Literal(scope.role)))
    return sql.SQL(" AND ").join(parts)


def _side(schema: str, table: str, columns: Sequence[str], scope: Scope) -> sql.Composed:
    return sql.SQL("SELECT {c} FROM {t} WHERE {w}").format(
        c=sql.SQL(", ").join(map(sql.Identifier, columns)),
        t=sql.Identifier(schema, table),
        w=_scope_filter(scope),
    )


async def compare_table(
    conn: Conn, live: str, rebuilt: str, table: str, scope: Scope, show: int = 5
) -> TableDiff:
    columns = TABLES[table]
    a, b = _side(live, table, columns, scope), _side(rebuilt, table, columns, scope)
    counts = await conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM ({a}) x), (SELECT count(*) FROM ({b}) y),"
            " (SELECT count(*) FROM ({a} EXCEPT ALL {b}) p),"
            " (SELECT count(*) FROM ({b} EXCEPT ALL {a}) q)"
        ).format(a=a, b=b)
    )
    n_live, n_rebuilt, only_live, only_rebuilt = await counts.fetchone() or (0, 0, 0, 0)
    first: list[dict[str, Any]] = []
    if only_live or only_rebuilt:
        for side, x, y in (("live", a, b), ("rebuilt", b, a)):
            cur = await conn.execute(
                sql.SQL("SELECT * FROM ({x} EXCEPT ALL {y}) d ORDER BY 1, 2, 3 LIMIT {n}").format(
                    x=x, y=y, n=sql.Literal(show)
                )
            )
            first += [
                {"side": side, **dict(zip(columns, row, strict=True))}
                for row in await cur.fetchall()
            ]
    return TableDiff(table, n_live, n_rebuilt, only_live, only_rebuilt, tuple(first))


async def compare_sets(conn: Conn, live: str, rebuilt: str, scope: Scope) -> list[TableDiff]:
    return [await compare_table(conn, live, rebuilt, t, scope) for t in TABLES]


@dataclass(frozen=True)
class Parity:
    samples: int
    k: int
    mean_overlap: float
    worst: tuple[tuple[str, str, int, float], ...]
    """(tenant, role, seq, overlap) of the least similar samples."""


async def recall_parity(
    conn: Conn, live: str, rebuilt: str, scope: Scope, samples: int = 50, k: int = 10
) -> Parity:
    """Mean overlap of both sets' top-k recall for a sample of live messages."""
    pick = await conn.execute(
        sql.SQL(
            "SELECT tenant_id, role_id, seq FROM {} WHERE NOT superseded AND embedding IS NOT"
            " NULL AND {} ORDER BY md5(event_id::text) LIMIT {}"
        ).format(sql.Identifier(rebuilt, "messages"), _scope_filter(scope), sql.Literal(samples))
    )
    scores = []
    for tenant, role, seq in await pick.fetchall():
        a = await _neighbours(conn, live, str(tenant), str(role), int(seq), k)
        b = await _neighbours(conn, rebuilt, str(tenant), str(role), int(seq), k)
        overlap = len(a & b) / max(len(a), len(b), 1)
        scores.append((str(tenant), str(role), int(seq), overlap))
    mean = sum(s[3] for s in scores) / len(scores) if scores else 1.0
    return Parity(len(scores), k, mean, tuple(sorted(scores, key=lambda s: s[3])[:3]))


async def _neighbours(
    conn: Conn, schema: str, tenant: str, role: str, seq: int, k: int
) -> set[tuple[str, int]]:
    """The role's top-k by this message's own embedding in ``schema``."""
    await conn.execute(
        sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema))
    )
    cur = await conn.execute(
        "SELECT embedding FROM messages WHERE tenant_id = %s AND role_id = %s AND seq = %s",
        (tenant, role, seq),
        prepare=False,  # the two sets' embedding columns may differ in type (dimension)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return set()
    return {(r.role_id, r.seq) for r in await recall(conn, tenant, role, row[0].to_numpy(), k)}
