"""The projector's writes: one PostgreSQL transaction per batch.

``Store.write`` applies a ``Plan`` and the batch's consumed offsets together:

1. fence: lock this projector's ``projector_offsets`` rows of the batch's
   partitions and check they still hold the offsets the batch started from
   (another process that took the partitions over moved them: ``Fenced``);
2. insert events, rejections, rollbacks and commits with ON CONFLICT DO
   NOTHING RETURNING their keys: what comes back is new, the rest was
   projected before (at-least-once inputs);
3. from the NEW inputs only: messages, superseded flags, roles (read FOR
   UPDATE, merged by ``roles.plan_roles``, upserted), aggregates (added);
4. the offsets; commit.

Bulk rows go through COPY into per-connection temp tables, then one
INSERT ... SELECT per table. ``fill_forks`` (its own short transaction)
gives forks whose source commit arrived after them their ``forked_live``.

Invariants: a batch's rows and offsets commit together or not at all; an
input already in the store changes nothing (not even an aggregate);
statements are composed with ``psycopg.sql`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from rolebus.errors import StoreError
from rolebus.projectors import rollup, seqranges
from rolebus.projectors.plan import CommitRow, EventRow, MessageRow, Plan, RejectionRow, RollbackRow
from rolebus.projectors.roles import Flip, RoleRow, plan_roles, plan_supersede, superseded_now
from rolebus.projectors.staging import (
    AGG_COLUMNS,
    AGG_UPSERT,
    MESSAGE_COLUMNS,
    ROLE_COLUMNS,
    Vectored,
    copy_messages,
    copy_rows,
    create_stages,
    ids,
    role_row,
    role_tuple,
)
from rolebus.wal.events import RoleForked

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
TP = tuple[str, int]


class Fenced(StoreError):
    """Another projector process moved these partitions' offsets: re-seek."""


@dataclass(frozen=True)
class Written:
    """What one batch added (new rows only)."""

    events: int
    messages: int
    commits: int
    rejections: int


class Store:
    """Writes of one projector (``name`` = its consumer group) on one connection."""

    def __init__(self, conn: Conn, name: str) -> None:
        self.conn = conn
        self.name = name

    async def prepare(self) -> None:
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await create_stages(cur)

    async def stored_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        """Each partition's next offset to project (0 for a new one, recorded now)."""
        topics, parts = [t for t, _ in tps], [p for _, p in tps]
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO projector_offsets (projector, topic, partition, next_offset)"
                " SELECT %s, t, p, 0 FROM unnest(%s::text[], %s::int[]) AS x(t, p)"
                " ON CONFLICT DO NOTHING",
                (self.name, topics, parts),
            )
            await cur.execute(
                "SELECT topic, partition, next_offset FROM projector_offsets WHERE projector = %s"
                " AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
                (self.name, topics, parts),
            )
            return {(str(t), int(p)): int(n) for t, p, n in await cur.fetchall()}

    async def write(
        self,
        plan: Plan,
        embedded: Mapping[str, Vectored],
        offsets: Mapping[TP, tuple[int, int]],
        projected_at: datetime,
    ) -> Written:
        """Rows + offsets in one transaction. ``embedded``: event id -> (vector,
        error); ``offsets``: partition -> (offset the batch starts from, next)."""
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await self._fence(cur, offsets)
            new_events = await self._insert_keys(
                cur, "events", EventRow._fields, plan.event_rows(), "event_id::text"
            )
            new_rejections = await self._insert_keys(
                cur,
                "rejections",
                RejectionRow._fields,
                plan.rejection_rows(),
                "wal_topic || '/' || wal_partition || '/' || wal_offset",
            )
            new = plan.only_new(new_events, (), new_rejections)
            await self._rollbacks(cur, new.rollback_rows())
            new_commits = await self._commits(cur, plan.commit_rows())
            new = plan.only_new(new_events, new_commits, new_rejections)
            flips = plan_supersede(new.changes)
            messages = await self._messages(cur, new.message_rows(), embedded, flips)
            await self._flips(cur, flips)
            await self._roles(cur, new)
            await self._aggregates(cur, new, projected_at)
            await self._advance(cur, offsets)
        return Written(len(new.changes), messages, len(new.commits), len(new.rejections))

    # --- steps -------------------------------------------------------------------------

    async def _fence(self, cur: Cursor, offsets: Mapping[TP, tuple[int, int]]) -> None:
        tps = sorted(offsets)
        await cur.execute(
            "SELECT topic, partition, next_offset FROM projector_offsets WHERE projector = %s"
            " AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))"
            " ORDER BY topic, partition FOR UPDATE",
            (self.name, [t for t, _ in tps], [p for _, p in tps]),
        )
        stored = {(str(t), int(p)): int(n) for t, p, n in await cur.fetchall()}
        moved = {tp: stored.get(tp) for tp in tps if stored.get(tp) != offsets[tp][0]}
        if moved:
            raise Fenced(
                f"projector {self.name}: stored offsets {moved} differ from this process's "
                "positions (another process projected these partitions); re-seeking"
            )

    async def _insert_keys(
        self,
        cur: Cursor,
        table: LiteralString,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        key: LiteralString,
    ) -> set[str]:
        """Insert what is missing; the keys of the rows inserted now."""
        if not rows:
            return set()
        await copy_rows(cur, f"stage_{table}", columns, rows)
        await cur.execute(
            sql.SQL(
                "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT DO NOTHING RETURNING {k}"
            ).format(
                t=sql.Identifier(table),
                c=ids(columns),
                s=sql.Identifier(f"stage_{table}"),
                k=sql.SQL(key),
            )
        )
        return {str(row[0]) for row in await cur.fetchall()}

    async def _rollbacks(self, cur: Cursor, rows: Sequence[RollbackRow]) -> None:
        """Record new rollbacks; give their commits (if projected) reason and target."""
        if not rows:
            return
        await self._insert_keys(cur, "rollbacks", RollbackRow._fields, rows, "event_id")
        await cur.execute(
            "UPDATE commits c SET reason = r.reason, rollback_to = r.to_commit_id"
            " FROM stage_rollbacks r WHERE c.event_id = r.event_id AND c.kind = 'rollback'"
        )

    async def _commits(self, cur: Cursor, rows: Sequence[CommitRow]) -> set[str]:
        if not rows:
            return set()
        await copy_rows(cur, "stage_commits", CommitRow._fields, rows)
        await cur.execute(
            sql.SQL(
                "INSERT INTO commits ({c}, reason, rollback_to) SELECT {sc}, r.reason,"
                " r.to_commit_id FROM stage_commits s LEFT JOIN rollbacks r"
                " ON r.event_id = s.event_id AND s.kind = 'rollback'"
                " ON CONFLICT DO NOTHING RETURNING commit_id"
            ).format(
                c=ids(CommitRow._fields),
                sc=sql.SQL(", ").join(sql.Identifier("s", n) for n in CommitRow._fields),
            )
        )
        return {str(row[0]) for row in await cur.fetchall()}

    async def _messages(
        self,
        cur: Cursor,
        rows: Sequence[MessageRow],
        embedded: Mapping[str, Vectored],
        flips: Sequence[Flip],
    ) -> int:
        """Insert new messages. One a rollback of the same batch supersedes goes in
        flagged: updating it later would write a second tuple to every index
        (HNSW included: ``superseded`` is in an index predicate, so no HOT update)."""
        if not rows:
            return 0
        await copy_messages(cur, rows, embedded, superseded_now(flips))
        await cur.execute(
            sql.SQL(
                "INSERT INTO messages ({c}) SELECT {c} FROM stage_messages ON CONFLICT DO NOTHING"
            ).format(c=ids(MESSAGE_COLUMNS))
        )
        return cur.rowcount

    async def _flips(self, cur: Cursor, flips: Sequence[Flip]) -> None:
        if not flips:
            return
        rows = [(f.tenant_id, f.role_id, f.value, a, b) for f in flips for a, b in f.ranges]
        await copy_rows(
            cur, "stage_flips", ("tenant_id", "role_id", "value", "first", "last"), rows
        )
        await cur.execute(
            "UPDATE messages m SET superseded = f.value FROM stage_flips f"
            " WHERE m.tenant_id = f.tenant_id AND m.role_id = f.role_id"
            " AND m.seq BETWEEN f.first AND f.last AND m.superseded IS DISTINCT FROM f.value"
        )

    async def _roles(self, cur: Cursor, new: Plan) -> None:
        keys = {(c.record.tenant_id, c.record.role_id) for c in new.changes}
        keys |= {(c.record.tenant_id, c.record.role_id) for c in new.commits}
        if not keys:
            return
        current = await self._current_roles(cur, sorted(keys))
        sources = [c.envelope.payload for c in new.changes]
        wanted = [p.source_commit_id for p in sources if isinstance(p, RoleForked)]
        lives = await self._commit_lives(cur, wanted) if wanted else {}
        rows = plan_roles(current, new.changes, new.commits, lives)
        await copy_rows(cur, "stage_roles", ROLE_COLUMNS, (role_tuple(r) for r in rows.values()))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in ROLE_COLUMNS[2:]
        )
        await cur.execute(
            sql.SQL(
                "INSERT INTO roles ({c}) SELECT {c} FROM stage_roles"
                " ON CONFLICT (tenant_id, role_id) DO UPDATE SET {u}"
            ).format(c=ids(ROLE_COLUMNS), u=updates)
        )

    async def _current_roles(
        self, cur: Cursor, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RoleRow]:
        """The stored rows, locked. Missing ones are first inserted as placeholders
        (seq -1, replaced in this transaction): a process creating the same role
        concurrently then waits for this one instead of overwriting it."""
        await cur.execute(
            "INSERT INTO roles (tenant_id, role_id, lifecycle, name, persona, seq, created_at,"
            " updated_at) SELECT t, r, 'created', '', '', -1, 'epoch', 'epoch'"
            " FROM unnest(%s::text[], %s::text[]) AS k(t, r) ORDER BY t, r ON CONFLICT DO NOTHING",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        await cur.execute(
            sql.SQL(
                "SELECT {c} FROM roles WHERE (tenant_id, role_id) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))"
                " ORDER BY tenant_id, role_id FOR UPDATE"
            ).format(c=ids(ROLE_COLUMNS)),
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        rows = [role_row(r) for r in await cur.fetchall()]
        return {(r.tenant_id, r.role_id): r for r in rows if r.seq >= 0}

    async def _commit_lives(
        self, cur: Cursor, commit_ids: Sequence[str]
    ) -> dict[str, seqranges.Ranges]:
        await cur.execute(
            "SELECT commit_id, live FROM commits WHERE commit_id = ANY(%s) AND live IS NOT NULL",
            (list(commit_ids),),
        )
        return {str(cid): seqranges.from_multirange(live) for cid, live in await cur.fetchall()}

    async def _aggregates(self, cur: Cursor, new: Plan, projected_at: datetime) -> None:
        minutes = rollup.plan_minutes(new.changes, new.rejections, projected_at)
        if minutes:
            rows = [
                (
                    *key,
                    *(agg.counts[c] for c in rollup.COUNT_COLUMNS),
                    agg.lag_ms_max,
                    agg.latency_hist,
                )
                for key, agg in sorted(minutes.items())
            ]
            await copy_rows(cur, "stage_agg", AGG_COLUMNS, rows)
            await cur.execute(AGG_UPSERT)
        reasons = rollup.plan_rejection_minutes(new.rejections)
        if reasons:
            rows2 = [(*key, reason, n) for (key, reason), n in sorted(reasons.items())]
            await copy_rows(
                cur, "stage_agg_rej", ("tenant_id", "role_id", "minute", "reason", "count"), rows2
            )
            await cur.execute(
                "INSERT INTO agg_rejections_minute AS a SELECT * FROM stage_agg_rej"
                " ORDER BY tenant_id, role_id, minute, reason"
                " ON CONFLICT (tenant_id, role_id, minute, reason)"
                " DO UPDATE SET count = a.count + EXCLUDED.count"
            )

    async def _advance(self, cur: Cursor, offsets: Mapping[TP, tuple[int, int]]) -> None:
        tps = sorted(offsets)
        await cur.execute(
            "UPDATE projector_offsets o SET next_offset = v.n, updated_at = now()"
            " FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS v(t, p, n)"
            " WHERE o.projector = %s AND o.topic = v.t AND o.partition = v.p",
            ([t for t, _ in tps], [p for _, p in tps], [offsets[tp][1] for tp in tps], self.name),
        )

    async def fill_forks(self) -> int:
        """Forks projected before their source commit get ``forked_live`` now.
        Rows another transaction holds are skipped (the next call takes them)."""
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await cur.execute(
                "WITH pending AS (SELECT r.tenant_id, r.role_id, c.live FROM roles r"
                " JOIN commits c ON c.commit_id = r.forked_from_commit"
                " WHERE r.forked_live IS NULL AND r.forked_from_commit IS NOT NULL"
                " AND c.live IS NOT NULL FOR UPDATE OF r SKIP LOCKED)"
                " UPDATE roles r SET forked_live = p.live FROM pending p"
                " WHERE r.tenant_id = p.tenant_id AND r.role_id = p.role_id"
            )
            return cur.rowcount
