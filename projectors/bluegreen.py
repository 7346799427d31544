"""``rolebus replay projections``: rebuild, verify and swap a table set.

1. rebuild: a fresh schema ``<live>_r<UTC stamp>`` is migrated (embedding
   column sized for the CONFIGURED provider) and filled from offset 0 to the
   end offsets captured at start (``rebuild.Rebuilder``), while the live set
   keeps serving and its projector keeps consuming;
2. sync point (``--verify`` and ``--swap``): the rebuild catches up with the
   live projector's stored offsets, unlocked until the gap is one batch,
   then under ``swap.offsets_of(lock=True)`` exactly (the live projector
   waits in its fence meanwhile: one small batch's time);
3. ``--verify``: still under the lock, a REPEATABLE READ snapshot is taken on
   a third connection; the lock is released and both sets are compared in
   that snapshot, where they hold the same inputs (``compare``);
4. ``--swap``: a second sync point ends with ``swap.swap_sets`` in the
   locking transaction (see ``swap`` for how the live projector follows).

Invariants: nothing is swapped after a difference or an error; a scoped
rebuild (tenant / role) is never swapped in; a new embedding model is
swapped in only while no live projector runs (it would write old-model
vectors into the new set); a sync point waits ``lock_wait_s`` at most for
the live projector's batch in flight; the live set is only read, except for
the swap's offset hand-over and rename.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, StoreError
from rolebus.projectors import db
from rolebus.projectors.compare import Parity, TableDiff, compare_sets, recall_parity
from rolebus.projectors.embeddings import EmbeddingProvider
from rolebus.projectors.rebuild import HNSW_INDEX, Rebuilder, Scope, Tally, deferred_index
from rolebus.projectors.store import TP, Store
from rolebus.projectors.swap import (
    Conn,
    offsets_of,
    projector_names,
    schema_exists,
    set_names,
    swap_sets,
)
from rolebus.wal import reader, topics
from rolebus.wal.connect import admin_client, within
from rolebus.wal.export import Progress

OUTPUT_KINDS = ("changes", "commits", "rejections")


@dataclass(frozen=True)
class RebuildOptions:
    live_schema: str
    projector: str
    """The live projector's name (its consumer group): the new set's offsets go
    under it, so it resumes from them after a swap."""
    scope: Scope = field(default_factory=Scope)
    verify: bool = False
    swap: bool = False
    batch_size: int = 2000
    samples: int = 50
    k: int = 10
    min_parity: float = 0.9
    """Least recall parity accepted when both sets use the same embedding model."""
    live_wait_s: float = 120.0
    """How long ``--verify`` waits for a live projector behind the rebuild."""
    lock_wait_s: float = 30.0
    """How long a sync point waits for the live projector's batch in flight."""


@dataclass
class RebuildReport:
    rebuilt: str
    live: str
    retired: str | None = None
    tally: Tally = field(default_factory=Tally)
    models: tuple[str, str] = ("", "")
    """(live set's embedding model, rebuilt set's)."""
    diffs: list[TableDiff] | None = None
    parity: Parity | None = None
    min_parity: float = 0.9

    @property
    def parity_ok(self) -> bool:
        same_model = self.models[0] == self.models[1]
        return self.parity is None or not same_model or self.parity.mean_overlap >= self.min_parity

    @property
    def ok(self) -> bool:
        return all(d.same for d in self.diffs or ()) and self.parity_ok

    def to_json(self) -> dict[str, Any]:
        t = self.tally
        return {
            "ok": self.ok, "rebuilt": self.rebuilt, "live": self.live, "retired": self.retired,
            "swapped": self.retired is not None, "records": t.records, "events": t.events,
            "messages": t.messages, "commits": t.commits, "rejections": t.rejections,
            "seconds": round(t.seconds, 3),
            "records_per_s": round(t.records / t.seconds, 1) if t.seconds else None,
            "embedding_models": {"live": self.models[0], "rebuilt": self.models[1]},
            "verify": None if self.diffs is None else [_diff_json(d) for d in self.diffs],
            "recall_parity": None if self.parity is None else {
                "samples": self.parity.samples, "k": self.parity.k,
                "mean_overlap": round(self.parity.mean_overlap, 4),
                "worst": [list(w) for w in self.parity.worst],
            },
        }  # fmt: skip

    def summary(self) -> str:
        t = self.tally
        rate = t.records / t.seconds if t.seconds else 0.0
        text = (
            f"rebuilt {self.rebuilt}: {t.records} records in {t.seconds:.1f}s ({rate:,.0f}/s) ->"
            f" {t.events} events, {t.messages} messages, {t.commits} commits,"
            f" {t.rejections} rejections"
        )
        if self.diffs is not None:
            bad = [d.table for d in self.diffs if not d.same]
            text += f"; verify: {'differences in ' + ', '.join(bad) if bad else 'identical'}"
        if self.parity is not None:
            text += f"; recall parity {self.parity.mean_overlap:.3f} (k={self.parity.k})"
        if self.retired is not None:
            text += f"; swapped in as {self.live}, old set kept as {self.retired}"
        return text


def _diff_json(d: TableDiff) -> dict[str, Any]:
    return {
        "table": d.table, "live_rows": d.live_rows, "rebuilt_rows": d.rebuilt_rows,
        "only_live": d.only_live, "only_rebuilt": d.only_rebuilt, "first": list(d.first),
    }  # fmt: skip


async def rebuild_projections(
    settings: Settings,
    ends: Endpoints,
    options: RebuildOptions,
    embedder: EmbeddingProvider,
    progress: Progress,
    now: datetime,
) -> RebuildReport:
    """Rebuild into a new set; verify and swap as asked. The report says what
    was found; errors raise."""
    if options.swap and not options.scope.whole:
        raise ConfigError("--swap rebuilds the whole store: drop --tenant / --role to swap")
    rebuilt, retired = set_names(options.live_schema, now)
    report = RebuildReport(rebuilt, options.live_schema, min_parity=options.min_parity)
    async with (
        db.connect(settings, ends, rebuilt) as wconn,
        db.connect(settings, ends, options.live_schema, autocommit=True) as lconn,
        reader.open_consumer(settings, ends, "rolebus-rebuild") as consumer,
    ):
        await _check_sets(lconn, options, rebuilt)
        report.models = (await _model(lconn, options), embedder.name)
        await _check_swappable(settings, ends, options, report.models)
        await db.migrate(wconn, rebuilt, embedding_dim=embedder.dim, embedding_model=embedder.name)
        store = Store(wconn, options.projector)
        await store.prepare()
        rb = Rebuilder(consumer, store, embedder, options.scope, options.batch_size)
        names = [topics.topic_name(settings, k) for k in OUTPUT_KINDS]
        await rb.assign([tp for n in names for tp in await reader.partitions(consumer._client, n)])
        targets = await rb.end_offsets()
        progress.start(rb.behind(targets))
        async with deferred_index(wconn, rebuilt, HNSW_INDEX, rb.tally):
            await rb.run_to(targets, progress)
        report.tally = rb.tally
        if options.verify:
            report.diffs, report.parity = await _verify(settings, ends, rb, lconn, options, rebuilt)
        if options.swap and report.ok:
            await _check_swappable(settings, ends, options, report.models)
            await _sync(rb, lconn, options, lambda: swap_sets(
                lconn, options.live_schema, rebuilt, retired, options.projector))  # fmt: skip
            report.retired = retired
    return report


async def _check_sets(conn: Conn, options: RebuildOptions, rebuilt: str) -> None:
    if await schema_exists(conn, rebuilt):
        raise StoreError(f"schema {rebuilt!r} exists already; retry in a second")
    if (options.verify or options.swap) and not await schema_exists(conn, options.live_schema):
        raise StoreError(
            f"live schema {options.live_schema!r} does not exist: nothing to verify against or "
            "swap with (check ROLEBUS_PG_SCHEMA)"
        )
    names = (
        await projector_names(conn, options.live_schema)
        if options.verify or options.swap
        else set()
    )
    if names and options.projector not in names:
        raise ConfigError(
            f"live schema {options.live_schema!r} has offsets of projector(s) "
            f"{', '.join(sorted(names))} but none of {options.projector!r}: pass the live "
            "projector's group with --group (ROLEBUS_PROJECTOR_GROUP)"
        )


async def _check_swappable(
    settings: Settings, ends: Endpoints, options: RebuildOptions, models: tuple[str, str]
) -> None:
    """A new embedding model is swapped in only while the live projector is
    stopped: a running one would write the old model's vectors into the new set."""
    if not options.swap or models[0] in ("", models[1]):
        return
    members = await group_members(settings, ends, options.projector)
    if members:
        raise ConfigError(
            f"the rebuilt set embeds with {models[1]!r}, the live set with {models[0]!r}, and "
            f"the live projector (group {options.projector!r}) has {members} running "
            "member(s): stop `rolebus project`, swap, then start it with the new "
            "ROLEBUS_EMBEDDINGS"
        )


async def group_members(settings: Settings, ends: Endpoints, group: str) -> int:
    """How many processes are members of a consumer group now."""
    async with admin_client(settings, ends) as admin:
        answers = await within(
            settings, ends, admin.describe_consumer_groups([group]), "describing group " + group
        )
    # DescribeGroups v0+: (error_code, group_id, state, protocol_type, protocol, members, ...)
    return sum(len(g[5]) for answer in answers for g in answer.groups)


async def _model(conn: Conn, options: RebuildOptions) -> str:
    if not await schema_exists(conn, options.live_schema):
        return ""
    cur = await conn.execute("SELECT value FROM store_meta WHERE key = 'embedding_model'")
    row = await cur.fetchone()
    return "" if row is None else str(row[0])


async def _close_gap(rb: Rebuilder, conn: Conn, options: RebuildOptions) -> dict[TP, int]:
    """Catch up with the live offsets without locking, until one batch is left."""
    live: dict[TP, int] = {}
    for _ in range(20):
        live = _known(rb, await offsets_of(conn, options.live_schema, options.projector))
        if rb.behind(live) <= options.batch_size:
            break
        await rb.run_to(live)
    return live


def _known(rb: Rebuilder, offsets: Mapping[TP, int]) -> dict[TP, int]:
    return {tp: n for tp, n in offsets.items() if tp in rb.positions}


async def _sync(
    rb: Rebuilder, conn: Conn, options: RebuildOptions, then: Callable[[], Awaitable[None]]
) -> None:
    """Close the gap, then in one transaction: lock the live offsets, catch up to
    them exactly, run ``then()`` (the live projector waits until it commits)."""
    await _close_gap(rb, conn, options)
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{int(options.lock_wait_s * 1000)}",)
        )
        try:
            held = await offsets_of(conn, options.live_schema, options.projector, lock=True)
        except psycopg.errors.LockNotAvailable as exc:
            raise StoreError(
                f"live projector {options.projector!r} (schema {options.live_schema}) held its "
                f"offsets locked for over {options.lock_wait_s:g}s (a batch stuck in a "
                "transaction?); the rebuilt set is kept and nothing was swapped: retry later"
            ) from exc
        await rb.run_to(_known(rb, held))
        await then()


async def _wait_live(rb: Rebuilder, conn: Conn, options: RebuildOptions) -> None:
    """Verification compares equal inputs: wait until the live projector has
    stored at least the rebuild's offsets on every partition."""
    deadline = time.monotonic() + options.live_wait_s
    while True:
        live = await offsets_of(conn, options.live_schema, options.projector)
        short = {tp: n for tp, n in rb.positions.items() if live.get(tp, 0) < n}
        if not short:
            return
        if time.monotonic() > deadline:
            raise StoreError(
                f"live projector {options.projector!r} (schema {options.live_schema}) is behind "
                f"the rebuild on {len(short)} partitions after {options.live_wait_s:g}s: is "
                "`rolebus project` running with that group (--group)?"
            )
        await asyncio.sleep(0.2)


async def _verify(
    settings: Settings,
    ends: Endpoints,
    rb: Rebuilder,
    lconn: Conn,
    options: RebuildOptions,
    rebuilt: str,
) -> tuple[list[TableDiff], Parity]:
    await _wait_live(rb, lconn, options)
    async with db.connect(settings, ends, rebuilt) as cconn:
        await cconn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)

        async def snapshot() -> None:
            await cconn.execute("SELECT 1")  # the snapshot both sets are read in

        await _sync(rb, lconn, options, snapshot)
        live = options.live_schema
        diffs = await compare_sets(cconn, live, rebuilt, options.scope)
        parity = await recall_parity(
            cconn, live, rebuilt, options.scope, options.samples, options.k
        )
        await cconn.rollback()
    return diffs, parity
