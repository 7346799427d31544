"""Reads of the dashboard aggregates: the I/O shell around ``dashboard.summarize``.

``read_summary`` sums ``agg_minute`` over the roles in scope, per minute
(one row per minute, never a scan of ``messages``), adds the latency
histograms element-wise in SQL, reads ``agg_rejections_minute`` by reason and
the roles' current lifecycle states, and hands them to the pure core.

Invariants: every statement is composed with ``psycopg.sql``; tenant and role
filters are bound parameters (NULL = all); the connection's search_path is
the store schema (``rolebus.projectors.db.connect``).
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from rolebus.errors import StoreError
from rolebus.projectors.dashboard import SUMMED, MinuteRow, Summary, Window, summarize

Conn = psycopg.AsyncConnection[tuple[object, ...]]

_SCOPE = sql.SQL(
    "minute >= %(start)s AND minute < %(end)s"
    " AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
    " AND (%(role)s::text IS NULL OR role_id = %(role)s)"
)
_SUMS = sql.SQL(", ").join(sql.SQL("sum({})::bigint").format(sql.Identifier(c)) for c in SUMMED)


def _params(window: Window) -> dict[str, object]:
    return {"start": window.start, "end": window.end, "tenant": window.tenant, "role": window.role}


async def _fetch(
    conn: Conn, query: sql.SQL | sql.Composed, params: dict[str, object]
) -> list[tuple[object, ...]]:
    try:
        cur = await conn.execute(query, params)
        return await cur.fetchall()
    except psycopg.Error as exc:
        raise StoreError(
            f"dashboard query failed: {exc} (is the context store migrated? `rolebus db migrate`)"
        ) from exc


async def _minute_counts(conn: Conn, window: Window) -> dict[datetime, tuple[dict[str, int], int]]:
    query = sql.SQL(
        "SELECT minute, max(lag_ms_max)::bigint, {} FROM agg_minute WHERE {}"
        " GROUP BY minute ORDER BY minute"
    ).format(_SUMS, _SCOPE)
    found = {}
    for minute, lag_max, *sums in await _fetch(conn, query, _params(window)):
        counts = {name: int(str(v)) for name, v in zip(SUMMED, sums, strict=True)}
        found[_ts(minute)] = (counts, int(str(lag_max)))
    return found


async def _minute_hists(conn: Conn, window: Window) -> dict[datetime, list[int]]:
    # Element-wise sum of bigint[]: unnest with the bucket index, group by it.
    query = sql.SQL(
        "SELECT minute, h.i, sum(h.c)::bigint FROM agg_minute,"
        " unnest(latency_hist) WITH ORDINALITY AS h(c, i) WHERE {}"
        " GROUP BY minute, h.i"
    ).format(_SCOPE)
    hists: dict[datetime, list[int]] = {}
    for minute, index, count in await _fetch(conn, query, _params(window)):
        hist = hists.setdefault(_ts(minute), [])
        i = int(str(index)) - 1
        hist.extend([0] * (i + 1 - len(hist)))
        hist[i] = int(str(count))
    return hists


async def _minute_rejections(conn: Conn, window: Window) -> dict[datetime, dict[str, int]]:
    query = sql.SQL(
        "SELECT minute, reason, sum(count)::bigint FROM agg_rejections_minute WHERE {}"
        " GROUP BY minute, reason"
    ).format(_SCOPE)
    found: dict[datetime, dict[str, int]] = {}
    for minute, reason, count in await _fetch(conn, query, _params(window)):
        found.setdefault(_ts(minute), {})[str(reason)] = int(str(count))
    return found


async def _roles_by_state(conn: Conn, window: Window) -> dict[str, int]:
    query = sql.SQL(
        "SELECT lifecycle, count(*) FROM roles"
        " WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
        " AND (%(role)s::text IS NULL OR role_id = %(role)s) GROUP BY lifecycle"
    )
    rows = await _fetch(conn, query, _params(window))
    return {str(state): int(str(n)) for state, n in rows}


def _ts(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise StoreError(f"agg_minute.minute: expected a timestamptz, got {value!r}")
    return value


async def read_rows(conn: Conn, window: Window) -> list[MinuteRow]:
    """The window's minute rows (summed over the roles in scope)."""
    counts = await _minute_counts(conn, window)
    hists = await _minute_hists(conn, window)
    rejections = await _minute_rejections(conn, window)
    rows = []
    for minute in sorted(set(counts) | set(rejections)):
        minute_counts, lag_max = counts.get(minute, ({}, 0))
        rows.append(
            MinuteRow(
                minute, minute_counts, lag_max, hists.get(minute, []), rejections.get(minute, {})
            )
        )
    return rows


async def read_summary(conn: Conn, window: Window) -> Summary:
    """Every dashboard figure over ``window``."""
    rows = await read_rows(conn, window)
    return summarize(window, rows, await _roles_by_state(conn, window))
