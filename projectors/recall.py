"""Semantic recall: a role's nearest visible messages to a query vector.

"Visible" is ``visible_messages(tenant, role[, own_live])`` of migration 010,
the one definition shared with the context query: the role's own messages
that are not superseded (or, as of a commit, whose seq was live at that
commit) plus the history a fork inherited from its sources. ``recall`` orders
those rows by cosine distance (pgvector ``<=>``) and keeps ``k``.

Invariants: nothing crosses the tenant or the role's visible history; rows
without an embedding are skipped; a result is ordered by distance, then by
role and seq (ties are deterministic). Speed: the visibility filter is a plain
predicate on ``messages``, so the planner can walk the HNSW index; pgvector's
iterative scan keeps walking while the filter drops candidates. Small visible
sets are searched exactly instead (see ``HNSW_FACTOR``). recall sets
``hnsw.iterative_scan`` and ``hnsw.ef_search`` on the connection's session
(each result row says which settings it ran with; they are set again when a
rollback undid them), so a search is one statement, one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector import Vector
from psycopg import sql

from rolebus.errors import StoreError
from rolebus.projectors.embeddings import EmbeddingProvider

Conn = psycopg.AsyncConnection[Any]

# Candidates the HNSW search keeps per query (pgvector's default): recall@10
# 0.97 on bench/recall.py, at the raw query's speed.
EF_SEARCH = 40
# relaxed_order: iterative scans may return rows slightly out of order; the outer
# ORDER BY restores exact order over the k rows it keeps.
ITERATIVE_SCAN = "relaxed_order"


@dataclass(frozen=True)
class Recalled:
    """One recalled message."""

    role_id: str
    """The role whose row it is: a fork's inherited messages name their source."""
    seq: int
    """The message's seq in ``role_id``."""
    message_id: str
    author: str
    content: str
    occurred_at: datetime
    distance: float
    """Cosine distance to the query: 0 same direction, 1 unrelated, 2 opposite."""


# Exact search (btree + top-k sort) or HNSW? Exact costs ~extent row reads; an
# HNSW iterative scan ~k / selectivity candidate visits, each dearer (measured
# on 100k rows: a role of 1% of them, exact 5 ms vs HNSW 30 ms; a role of 64%,
# HNSW 2 ms vs exact 60 ms). HNSW pays off when extent^2 >= HNSW_FACTOR * k *
# table rows; pgvector's cost model does not see the filter, so we choose.
HNSW_FACTOR = 10.0

_BRANCH = """
    SELECT v.role_id, v.seq, v.message_id, v.author, v.content, v.occurred_at,
           v.embedding <=> %(query)s AS distance
    FROM visible_messages(%(tenant)s, %(role)s, %(own_live)s::int8multirange) v
    WHERE v.embedding IS NOT NULL
      AND {negate} (SELECT visible_extent(%(tenant)s, %(role)s)::float8 ^ 2
                        >= %(hnsw_factor)s * %(k)s * greatest(c.reltuples, 1)
                    FROM pg_class c WHERE c.oid = 'messages'::regclass)
    ORDER BY {order} LIMIT %(k)s
"""
# Both branches are planned; the one-time filter on visible_extent (an init
# plan) runs exactly one. "+ 0" makes an order the HNSW index cannot serve.
_RECALL = sql.SQL(
    "SELECT *, current_setting('hnsw.ef_search', true),"
    " current_setting('hnsw.iterative_scan', true) FROM (("
    + _BRANCH.format(negate="NOT", order="(v.embedding <=> %(query)s) + 0")
    + ") UNION ALL ("
    + _BRANCH.format(negate="", order="v.embedding <=> %(query)s")
    + ")) nearest ORDER BY distance, role_id, seq"
)


def as_vector(query: npt.ArrayLike) -> Vector:
    """A 1-d float vector for pgvector, or a clear error."""
    array = np.asarray(query, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"recall: the query must be one vector, got shape {array.shape}")
    return Vector(array)


async def recall(
    conn: Conn,
    tenant_id: str,
    role_id: str,
    query_vector: npt.ArrayLike,
    k: int = 5,
    *,
    as_of: str | None = None,
    ef_search: int = EF_SEARCH,
    hnsw_factor: float = HNSW_FACTOR,
) -> list[Recalled]:
    """The ``k`` visible messages of the role nearest to ``query_vector``;
    ``as_of`` (a commit id of this role) recalls what was live at that commit."""
    if k < 1:
        raise ValueError(f"recall: k must be >= 1 (got {k})")
    vector = as_vector(query_vector)
    if not vector.to_numpy().any():
        return []  # nothing to compare with (e.g. an empty text): every distance is NaN
    params = {
        "query": vector,
        "tenant": tenant_id,
        "role": role_id,
        "k": k,
        "hnsw_factor": hnsw_factor,
        "own_live": None if as_of is None else await live_at(conn, tenant_id, role_id, as_of),
    }
    tuning = (str(max(ef_search, k)), ITERATIVE_SCAN)
    rows = await _nearest(conn, params)
    if not rows or rows[0][-2:] != tuning:
        # A fresh connection, or a rollback undid the settings: set them for
        # the session (one statement per query afterwards) and search again.
        await conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, false),"
            " set_config('hnsw.iterative_scan', %s, false)",
            tuning,
        )
        rows = await _nearest(conn, params)
    return [Recalled(*row[:-2]) for row in rows]


async def _nearest(conn: Conn, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
    """The search; each row ends with the HNSW settings it ran with."""
    try:
        async with conn.cursor() as cur:
            await cur.execute(_RECALL, params)
            return await cur.fetchall()
    except psycopg.errors.DataException as exc:
        # e.g. "different vector dimensions 3 and 256": a query from another model.
        raise StoreError(
            f"recall: {exc.diag.message_primary or exc} (embed the query with the provider "
            "the store was built with, see store_meta.embedding_model)"
        ) from exc


async def recall_text(
    conn: Conn,
    provider: EmbeddingProvider,
    tenant_id: str,
    role_id: str,
    text: str,
    k: int = 5,
    *,
    as_of: str | None = None,
) -> list[Recalled]:
    """``recall`` for a text, embedded with the store's provider."""
    vectors = await provider.embed([text])
    return await recall(conn, tenant_id, role_id, vectors[0], k, as_of=as_of)


async def live_at(conn: Conn, tenant_id: str, role_id: str, commit_id: str) -> str:
    """The role's live seqs at one of its commits, as an int8multirange literal."""
    cur = await conn.execute(
        "SELECT snapshot FROM commits WHERE commit_id = %s AND tenant_id = %s AND role_id = %s",
        (commit_id, tenant_id, role_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise StoreError(
            f"commit {commit_id!r} is not a commit of role {role_id!r} in tenant "
            f"{tenant_id!r} (see `rolebus log {role_id}` for its commits)"
        )
    return multirange_literal(snapshot_live_ranges(row[0]))


def snapshot_live_ranges(snapshot: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Live seq ranges (inclusive) of a committed state: the lineage's closed
    ranges plus the current branch up to the snapshot's seq.

    The one place that reads the commit snapshot's shape for recall."""
    lineage = snapshot.get("lineage") or {}
    closed = [(int(first), int(last)) for first, last in lineage.get("closed", [])]
    branch = (int(lineage.get("branch_start", 1)), int(snapshot["seq"]))
    return [r for r in (*closed, branch) if r[0] <= r[1]]


def multirange_literal(ranges: Iterable[tuple[int, int]]) -> str:
    """``{[a,b],[c,d]}`` (inclusive bounds) for an ``::int8multirange`` cast."""
    return "{" + ",".join(f"[{first},{last}]" for first, last in ranges) + "}"
