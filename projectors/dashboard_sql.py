"""Reads of the dashboard aggregates: the I/O shell around ``dashboard.summarize``.

``read_summary`` sums ``agg_minute`` over the roles in scope, per minute
(one row per minute, never a scan of ``messages``), adds the latency
histograms element-wise in SQL, reads ``agg_rejections_minute`` by reason and
the roles' current lifecycle states, and hands them to the pure core.
``read_totals`` and ``read_tenants_now`` give ``/metrics`` its all-time
counters per tenant, role and model (a scrape never goes backwards, so they
sum every minute) and the recent lag.

Invariants: every statement is composed with ``psycopg.sql``; tenant and role
filters are bound parameters (NULL = all); the connection's search_path is
the store schema (``rolebus.projectors.db.connect``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from rolebus.errors import StoreError
from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS
from rolebus.projectors.dashboard import SUMMED, MinuteRow, Summary, Window, summarize

Conn = psycopg.AsyncConnection[tuple[object, ...]]

_SCOPE = sql.SQL(
    "minute >= %(start)s AND minute < %(end)s"
    " AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
    " AND (%(role)s::text IS NULL OR role_id = %(role)s)"
)
_BUCKETS = len(LATENCY_BUCKETS_MS)
# Counters, then the histogram summed bucket by bucket (latency_hist[i] of a
# shorter array is NULL, which sum() skips): one pass, no unnest.
_SUMS = sql.SQL(", ").join(
    [
        *(sql.SQL("sum({})::bigint").format(sql.Identifier(c)) for c in SUMMED),
        *(
            sql.SQL("coalesce(sum(latency_hist[{}]), 0)::bigint").format(sql.Literal(i + 1))
            for i in range(_BUCKETS)
        ),
    ]
)


def _split_sums(sums: list[object]) -> tuple[dict[str, int], list[int]]:
    """A row's ``_SUMS`` as (counters by name, histogram)."""
    values = [int(str(v)) for v in sums]
    return dict(zip(SUMMED, values[: len(SUMMED)], strict=True)), values[len(SUMMED) :]


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


MinuteSums = dict[datetime, tuple[dict[str, int], int, list[int]]]


async def _minute_sums(conn: Conn, window: Window) -> MinuteSums:
    """Per minute: counters, the largest lag and the latency histogram."""
    query = sql.SQL(
        "SELECT minute, max(lag_ms_max)::bigint, {} FROM agg_minute WHERE {}"
        " GROUP BY minute ORDER BY minute"
    ).format(_SUMS, _SCOPE)
    found = {}
    for minute, lag_max, *sums in await _fetch(conn, query, _params(window)):
        counts, hist = _split_sums(sums)
        found[_ts(minute)] = (counts, int(str(lag_max)), hist)
    return found


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
    sums = await _minute_sums(conn, window)
    rejections = await _minute_rejections(conn, window)
    rows = []
    for minute in sorted(set(sums) | set(rejections)):
        counts, lag_max, hist = sums.get(minute, ({}, 0, []))
        rows.append(MinuteRow(minute, counts, lag_max, hist, rejections.get(minute, {})))
    return rows


@asynccontextmanager
async def snapshot(conn: Conn) -> AsyncIterator[None]:
    """One read-only REPEATABLE READ transaction: the several reads of one page
    or scrape see the same committed projector batches (counts and histograms agree)."""
    try:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
    except psycopg.Error as exc:
        raise StoreError(f"dashboard read failed: {exc}") from exc


async def read_summary(conn: Conn, window: Window) -> Summary:
    """Every dashboard figure over ``window``, from one snapshot of the store."""
    async with snapshot(conn):
        rows = await read_rows(conn, window)
        roles = await _roles_by_state(conn, window)
    return summarize(window, rows, roles)


# ------------------------------------------------------------- /metrics totals

_TENANT = sql.SQL("(%(tenant)s::text IS NULL OR a.tenant_id = %(tenant)s)")


@dataclass(frozen=True)
class RoleTotals:
    """All-time figures of one role (``/metrics`` counters never go backwards)."""

    tenant: str
    role: str
    model: str
    """The role's model from ``roles`` ("" when the role row is not projected yet)."""
    counts: dict[str, int]
    hist: list[int]
    rejections_by_reason: dict[str, int]


@dataclass(frozen=True)
class TenantNow:
    """A tenant's recent lag and its roles by lifecycle state."""

    tenant: str
    lag_ms_max: int | None
    """Largest projection lag of the last ``RECENT`` of event time (None: no events)."""
    roles_by_state: dict[str, int]


RECENT = "5 minutes"


async def _role_sums(
    conn: Conn, tenant: str | None
) -> dict[tuple[str, str], tuple[str, dict[str, int], list[int]]]:
    query = sql.SQL(
        "SELECT a.tenant_id, a.role_id, coalesce(max(r.model), ''), {} FROM agg_minute a"
        " LEFT JOIN roles r ON r.tenant_id = a.tenant_id AND r.role_id = a.role_id"
        " WHERE {} GROUP BY a.tenant_id, a.role_id"
    ).format(_SUMS, _TENANT)
    found = {}
    for t, r, model, *sums in await _fetch(conn, query, {"tenant": tenant}):
        counts, hist = _split_sums(sums)
        found[(str(t), str(r))] = (str(model), counts, hist)
    return found


async def _role_rejections(conn: Conn, tenant: str | None) -> dict[tuple[str, str], dict[str, int]]:
    query = sql.SQL(
        "SELECT a.tenant_id, a.role_id, a.reason, sum(a.count)::bigint"
        " FROM agg_rejections_minute a WHERE {} GROUP BY a.tenant_id, a.role_id, a.reason"
    ).format(_TENANT)
    found: dict[tuple[str, str], dict[str, int]] = {}
    for t, r, reason, count in await _fetch(conn, query, {"tenant": tenant}):
        found.setdefault((str(t), str(r)), {})[str(reason)] = int(str(count))
    return found


async def read_totals(conn: Conn, tenant: str | None = None) -> list[RoleTotals]:
    """Every role's all-time counters, latency histogram and rejections by reason."""
    sums = await _role_sums(conn, tenant)
    rejections = await _role_rejections(conn, tenant)
    totals = []
    for key in sorted(set(sums) | set(rejections)):
        model, counts, hist = sums.get(key, ("", {}, [0] * _BUCKETS))
        totals.append(RoleTotals(*key, model, counts, hist, rejections.get(key, {})))
    return totals


async def read_tenants_now(conn: Conn, tenant: str | None = None) -> list[TenantNow]:
    """Per tenant: the recent maximum lag and the roles by lifecycle state."""
    lag_query = sql.SQL(
        "SELECT a.tenant_id, max(a.lag_ms_max)::bigint FROM agg_minute a WHERE {}"
        " AND a.lag_count > 0 AND a.minute >= date_trunc('minute', now()) - {}::interval"
        " GROUP BY a.tenant_id"
    ).format(_TENANT, sql.Literal(RECENT))
    state_query = sql.SQL(
        "SELECT a.tenant_id, a.lifecycle, count(*) FROM roles a WHERE {}"
        " GROUP BY a.tenant_id, a.lifecycle"
    ).format(_TENANT)
    lags = {str(t): int(str(v)) for t, v in await _fetch(conn, lag_query, {"tenant": tenant})}
    states: dict[str, dict[str, int]] = {}
    for t, state, n in await _fetch(conn, state_query, {"tenant": tenant}):
        states.setdefault(str(t), {})[str(state)] = int(str(n))
    return [TenantNow(t, lags.get(t), states.get(t, {})) for t in sorted(set(lags) | set(states))]
