"""The read side's queries over the context store: roles, commit history,
committed states, diffs, rejections and the prompt context (``rolebus role
show|list``, ``log``, ``show``, ``diff``, ``rejections``, ``context``).
``context`` and ``recall`` read a role's messages only through
``recent_visible_messages`` and ``rolebus.projectors.recall`` (migration 010,
``role_lineage``: the one definition of what a role sees after rollbacks and
forks).

A thin SQL shell: each function runs one or two statements and turns rows
into the frozen views of ``rolebus.projectors.views``, where the logic is.

Invariants: every function takes the tenant and every statement filters on
it, so nothing crosses tenants (the store keys roles by tenant and id; the
log itself refuses a role id reused by another tenant); an unknown role or
commit raises ``UnknownRoleError`` / ``UnknownCommitError`` naming it; connections come from
``rolebus.projectors.db.connect`` (search_path = the store schema).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from rolebus.projectors import recall as recall_mod
from rolebus.projectors import seqranges
from rolebus.projectors.context import (
    MESSAGE_OVERHEAD,
    Context,
    TokenCounter,
    Turn,
    assemble,
    render_system,
)
from rolebus.projectors.embeddings import EmbeddingProvider
from rolebus.projectors.tokens import count_tokens
from rolebus.projectors.views import (
    AmbiguousCommitError,
    CommitDiff,
    CommitView,
    LogEntry,
    RoleView,
    UnknownCommitError,
    UnknownRoleError,
    diff_snapshots,
    snapshot_view,
)

Conn = psycopg.AsyncConnection[tuple[object, ...]]
Row = dict[str, Any]

_ROLE_COLUMNS = (
    "SELECT tenant_id, role_id, lifecycle, name, persona, traits, model, skills, seq,"
    " head_commit_id, counters, live, forked_from_role, forked_from_commit, created_at,"
    " updated_at FROM roles"
)
_COMMIT_FIELDS = (
    "SELECT commit_id, tenant_id, role_id, parent_id, seq, kind, label, reason, rollback_to,"
    " occurred_at, state_digest"
)
_COMMIT_COLUMNS = _COMMIT_FIELDS + " FROM commits"
_COMMIT_WITH_SNAPSHOT = _COMMIT_FIELDS + ", snapshot FROM commits"


async def _rows(conn: Conn, query: str, params: tuple[Any, ...] | Mapping[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)  # query: module constants only, never user text
        return await cur.fetchall()


def _role(row: Row) -> RoleView:
    return RoleView(
        tenant_id=row["tenant_id"], role_id=row["role_id"], lifecycle=row["lifecycle"],
        name=row["name"], persona=row["persona"], traits=row["traits"], model=row["model"],
        skills=tuple(row["skills"]), seq=row["seq"], head_commit_id=row["head_commit_id"],
        counters=row["counters"], live=seqranges.from_multirange(row["live"]),
        forked_from_role=row["forked_from_role"], forked_from_commit=row["forked_from_commit"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip


async def role_show(conn: Conn, tenant_id: str, role_id: str) -> RoleView:
    """One role's latest state; ``UnknownRoleError`` if the tenant has no such role."""
    rows = await _rows(
        conn, _ROLE_COLUMNS + " WHERE tenant_id = %s AND role_id = %s", (tenant_id, role_id)
    )
    if not rows:
        raise UnknownRoleError(tenant_id, role_id)
    return _role(rows[0])


async def role_list(conn: Conn, tenant_id: str, state: str | None = None) -> list[RoleView]:
    """The tenant's roles by id, optionally only those in lifecycle ``state``."""
    if state is None:
        rows = await _rows(conn, _ROLE_COLUMNS + " WHERE tenant_id = %s ORDER BY role_id", (
            tenant_id,
        ))  # fmt: skip
    else:
        rows = await _rows(
            conn,
            _ROLE_COLUMNS + " WHERE tenant_id = %s AND lifecycle = %s ORDER BY role_id",
            (tenant_id, state),
        )
    return [_role(row) for row in rows]


def _entry(row: Row) -> LogEntry:
    return LogEntry(
        commit_id=row["commit_id"], role_id=row["role_id"], parent_id=row["parent_id"],
        seq=row["seq"], kind=row["kind"], label=row["label"], reason=row["reason"],
        rollback_to=row["rollback_to"], occurred_at=row["occurred_at"],
        state_digest=row["state_digest"],
    )  # fmt: skip


async def log(conn: Conn, tenant_id: str, role_id: str) -> list[LogEntry]:
    """A role's commits, newest first (like ``git log``)."""
    await role_show(conn, tenant_id, role_id)  # unknown role: a clear error, not []
    rows = await _rows(
        conn,
        _COMMIT_COLUMNS + " WHERE tenant_id = %s AND role_id = %s ORDER BY seq DESC, commit_id",
        (tenant_id, role_id),
    )
    return [_entry(row) for row in rows]


_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX: Final = 6
"""Shortest commit id prefix accepted (like ``git show 1a2b3c``)."""


async def _commit(conn: Conn, tenant_id: str, commit_id: str) -> Row:
    """The commit with this id, or the only one whose id starts with it."""
    rows = await _rows(
        conn,
        _COMMIT_WITH_SNAPSHOT + " WHERE tenant_id = %s AND commit_id = %s",
        (tenant_id, commit_id),
    )
    if not rows and len(commit_id) >= MIN_PREFIX and _HEX.match(commit_id):
        # A hex prefix holds no LIKE wildcard; commits_by_tenant_prefix serves it.
        rows = await _rows(
            conn,
            _COMMIT_WITH_SNAPSHOT + " WHERE tenant_id = %s AND commit_id LIKE %s LIMIT 2",
            (tenant_id, commit_id + "%"),
        )
        if len(rows) > 1:
            raise AmbiguousCommitError(tenant_id, commit_id)
    if not rows:
        raise UnknownCommitError(tenant_id, commit_id)
    return rows[0]


async def show_commit(conn: Conn, tenant_id: str, commit_id: str) -> CommitView:
    """A commit and the state it records."""
    row = await _commit(conn, tenant_id, commit_id)
    return CommitView(entry=_entry(row), tenant_id=row["tenant_id"], snapshot=row["snapshot"])


async def diff(conn: Conn, tenant_id: str, commit_a: str, commit_b: str) -> CommitDiff:
    """What changed from ``commit_a`` to ``commit_b`` (any two commits of the tenant)."""
    a = await _commit(conn, tenant_id, commit_a)
    b = await _commit(conn, tenant_id, commit_b)
    return diff_snapshots(commit_a, snapshot_view(a["snapshot"]), commit_b, snapshot_view(
        b["snapshot"]
    ))  # fmt: skip


@dataclass(frozen=True)
class RejectionView:
    """A refused WAL record (``rolebus rejections``)."""

    wal_topic: str
    wal_partition: int
    wal_offset: int
    reason: str
    message: str
    original: bytes
    event_id: str | None
    tenant_id: str | None
    role_id: str | None
    event_type: str | None
    occurred_at: datetime | None
    projected_at: datetime


async def rejections(
    conn: Conn,
    tenant_id: str,
    role_id: str | None = None,
    reason: str | None = None,
    limit: int = 50,
) -> list[RejectionView]:
    """The tenant's most recent refusals, newest first, optionally for one role
    and/or one reason code. Undecodable records have no tenant and never show."""
    rows = await _rows(
        conn,
        "SELECT wal_topic, wal_partition, wal_offset, reason, message, original, event_id,"
        " tenant_id, role_id, event_type, occurred_at, projected_at FROM rejections"
        " WHERE tenant_id = %s AND (%s::text IS NULL OR role_id = %s)"
        " AND (%s::text IS NULL OR reason = %s)"
        " ORDER BY projected_at DESC, wal_topic, wal_partition, wal_offset DESC LIMIT %s",
        (tenant_id, role_id, role_id, reason, reason, limit),
    )
    return [_rejection(row) for row in rows]


def _rejection(row: Mapping[str, Any]) -> RejectionView:
    event_id = row["event_id"]
    return RejectionView(
        **{**row, "event_id": None if event_id is None else str(event_id),
           "original": bytes(row["original"])},
    )  # fmt: skip


# --- recall and prompt context ------------------------------------------------------

DEFAULT_MAX_TOKENS: Final = 2000
DEFAULT_RECALL_K: Final = 5

_RECENT = (
    # The newest visible messages, newest first, each with its depth on the fork
    # chain (for conversation order); recent_visible_messages stops each level's
    # index scan at what is still wanted.
    "SELECT v.role_id, v.seq, v.author, v.content, l.depth"
    " FROM recent_visible_messages(%(tenant)s, %(role)s, %(limit)s) WITH ORDINALITY v"
    " JOIN role_lineage(%(tenant)s, %(role)s) l ON l.role_id = v.role_id"
    " ORDER BY v.ordinality"
)


async def recall(
    conn: Conn,
    provider: EmbeddingProvider,
    tenant_id: str,
    role_id: str,
    text: str,
    k: int = DEFAULT_RECALL_K,
    *,
    as_of: str | None = None,
) -> list[recall_mod.Recalled]:
    """The ``k`` visible messages of a known role nearest in meaning to ``text``;
    with ``as_of`` (one of the role's commit ids), among those live at that commit."""
    await role_show(conn, tenant_id, role_id)  # unknown role: a clear error, not []
    return await recall_mod.recall_text(conn, provider, tenant_id, role_id, text, k, as_of=as_of)


async def context(
    conn: Conn,
    provider: EmbeddingProvider | None,
    tenant_id: str,
    role_id: str,
    query: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    *,
    k: int = DEFAULT_RECALL_K,
    count: TokenCounter = count_tokens,
) -> Context:
    """Chat messages for an LLM: persona, recent visible messages and those
    recalled for ``query``, within ``max_tokens`` (``rolebus.projectors.context``).
    ``provider`` embeds the query; it may be None when there is no query."""
    role = await role_show(conn, tenant_id, role_id)
    # No message costs less than its overhead: more rows than this never fit.
    params = {"tenant": tenant_id, "role": role_id, "limit": max_tokens // MESSAGE_OVERHEAD + 1}
    rows = await _rows(conn, _RECENT, params)
    depth = {str(r["role_id"]): int(r["depth"]) for r in rows}
    recent = [_turn(r["role_id"], r["seq"], r["author"], r["content"], depth) for r in rows]
    recalled: list[Turn] = []
    if query:
        if provider is None:
            raise ValueError("context: a query needs an embedding provider")
        hits = await recall_mod.recall_text(conn, provider, tenant_id, role_id, query, k)
        depth.update(await _depths(conn, tenant_id, role_id))
        recalled = [_turn(h.role_id, h.seq, h.author, h.content, depth) for h in hits]
    system = render_system(role.persona, role.traits)
    return assemble(system, recent, recalled, max_tokens=max_tokens, count=count)


async def _depths(conn: Conn, tenant_id: str, role_id: str) -> dict[str, int]:
    """How many forks up each role of the lineage is (0: the role itself)."""
    rows = await _rows(
        conn, "SELECT role_id, depth FROM role_lineage(%s, %s)", (tenant_id, role_id)
    )
    return {str(r["role_id"]): int(r["depth"]) for r in rows}


def _turn(role_id: str, seq: int, author: str, content: str, depth: Mapping[str, int]) -> Turn:
    """A message in conversation order: a fork's sources (deepest first), then its own."""
    return Turn(role_id, seq, (-depth.get(role_id, 0), seq), author, content)
