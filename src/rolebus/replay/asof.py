"""``asof``: a role's state as of a commit, a WAL offset or an event time.

From the nearest commit at or before the point, never from genesis when one
exists: the role's commits live in one partition of the commits topic (the
one numbered like its WAL partition), read backwards from the end in growing
chunks until a commit of the role at or before the point turns up (``--commit``
matches the ``rolebus-commit-id`` header without parsing). Then the role's WAL
records after the commit's position, up to the point, are folded onto its
snapshot (``points.state_at``), after reading back the role's last
``dedupe_window`` records before the commit for the dedupe window (ids only,
nothing folded; skipped when the tail is empty). One consumer does it all; the
offsets of both partitions are looked up before anything is assigned.

Costs: the commits partition from its end back to the commit found, the WAL
partition from the commit back to the window start, and the tail. Limits: a
commit record must be self-consistent (``is_consistent``) to be used; a
rollback in the tail to a commit older than the one used is resolved only if
the scan saw it, which matters only when the commits topic lags the WAL (a
rollback the worker accepted cuts a commit, which would then be the nearest).
The worker's dedupe window holds at least the last ``dedupe_window`` ids and up
to two chunks (128) more; a redelivery of an event exactly that far back, or of
an event refused before the role was created, can be judged differently here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, DecodeError
from rolebus.replay import scan
from rolebus.replay.core import (
    Commit,
    FoldConfig,
    RoleState,
    WalItem,
    commit_of,
    is_consistent,
    logical_json,
    state_at_commit,
    state_digest,
)
from rolebus.replay.points import (
    AtCommit,
    AtOffset,
    AtTime,
    Point,
    covers,
    describe,
    start_state,
    state_at,
    window_ids,
)
from rolebus.wal import codec, records, topics
from rolebus.wal.events import CommitId, WalPosition
from rolebus.wal.records import CommitRecord, RecordError


@dataclass(frozen=True)
class AsOf:
    role_id: str
    point: Point
    state: RoleState
    snapshot: CommitRecord
    """The commit the state was computed from."""
    tail_events: int
    """WAL records of the role folded after the snapshot."""
    window_events: int
    """Event ids read back for the dedupe window."""
    commits_cut: tuple[str, ...] = ()
    """Commits the tail cut that the commits topic does not hold yet."""

    def json(self) -> dict[str, Any]:
        return {
            "role_id": self.role_id, "point": describe(self.point), "seq": self.state.seq,
            "head_commit_id": self.state.head_commit_id,
            "state_digest": state_digest(self.state), "state": logical_json(self.state),
            "computed": {
                "snapshot_commit_id": self.snapshot.commit_id,
                "snapshot_seq": self.snapshot.seq,
                "tail_events": self.tail_events,
                "window_events": self.window_events,
                "commits_cut": list(self.commits_cut),
            },
        }  # fmt: skip


async def asof(settings: Settings, ends: Endpoints, role_id: str, point: Point) -> AsOf:
    """The role's state as of ``point`` (module docstring)."""
    config = FoldConfig.from_settings(settings)
    wal = topics.topic_name(settings, "wal")
    async with scan.open_reader(settings, ends, "rolebus-asof") as consumer:
        part = scan.partition_of(role_id, await scan.partition_count(consumer, wal))
        if isinstance(point, AtOffset) and point.partition != part:
            raise ConfigError(
                f"--offset {point.partition}:{point.offset}: role '{role_id}' lives in WAL "
                f"partition {part} (give an offset of partition {part})"
            )
        tp = TopicPartition(wal, part)
        span = await scan.bounds(consumer, tp)  # before any assignment narrows the metadata
        found, known = await find_snapshot(consumer, settings, part, role_id, point)
        commit = _checked(found)
        if isinstance(point, AtCommit):
            return AsOf(role_id, point, state_at_commit(commit), found, 0, 0)
        if found.position is None:
            raise RecordError(f"commit {found.commit_id}: the record has no WAL position")
        tail = await read_tail(consumer, tp, span[1], found.position, role_id, point)
        window = []  # only a tail can hold redeliveries the window must catch
        if tail:
            window = await read_window(consumer, tp, span[0], found.position, role_id, config)
    start = start_state(commit, found.position, window, config)
    rebuilt = state_at(start, role_id, tail, config, _Known(known))
    cut = tuple(c.commit_id for c in rebuilt.commits_cut)
    return AsOf(role_id, point, rebuilt.state, found, rebuilt.tail_events, len(window), cut)


def _checked(record: CommitRecord) -> Commit:
    commit = commit_of(record)
    if not is_consistent(commit):
        raise RecordError(
            f"commit {record.commit_id} of role '{record.role_id}': id, digest and snapshot "
            "disagree (a corrupt or forged record; run `rolebus replay fold --verify`)"
        )
    return commit


async def find_snapshot(
    consumer: AIOKafkaConsumer, settings: Settings, part: int, role_id: str, point: Point
) -> tuple[CommitRecord, dict[str, CommitRecord]]:
    """The role's latest commit at or before ``point``, and the role's commits read."""
    tp = TopicPartition(topics.topic_name(settings, "commits"), part)
    key, known = role_id.encode(), {}
    parsed: dict[int, CommitRecord | None] = {}

    def hit(rec: scan.Record) -> CommitRecord | None:
        if rec.offset not in parsed:
            parsed[rec.offset] = _parse(rec, key, point)
        found = parsed[rec.offset]
        if found is not None:
            known[found.commit_id] = found
        return found if found is not None and covers(point, found) else None

    def enough(recs: list[scan.Record]) -> bool:
        return any(hit(rec) is not None for rec in reversed(recs))

    first, end = await scan.bounds(consumer, tp)
    recs = await scan.read_back(consumer, tp, first, end, enough)
    chosen = next((c for c in map(hit, reversed(recs)) if c is not None), None)
    if chosen is None:
        raise _not_found(role_id, point, part, bool(known) or any(r.key == key for r in recs))
    return chosen, known


def _parse(rec: scan.Record, key: bytes, point: Point) -> CommitRecord | None:
    if rec.key != key:
        return None
    wanted = (
        (records.COMMIT_ID_HEADER, point.commit_id.encode())
        if isinstance(point, AtCommit)
        else None
    )
    if wanted is not None and wanted not in (rec.headers or ()):
        return None  # --commit: match the header, parse the one record
    return records.decode_commit(rec.value or b"")


def _not_found(role_id: str, point: Point, part: int, role_known: bool) -> ConfigError:
    if not role_known:
        return ConfigError(
            f"role '{role_id}': unknown (no commit of it in partition {part} of the commits "
            "topic; check the role id, or wait for a worker to fold its events)"
        )
    if isinstance(point, AtCommit):
        return ConfigError(
            f"commit {point.commit_id}: not a commit of role '{role_id}' (its commits: "
            f"`rolebus wal tail --topic commits --from-beginning --role {role_id}`)"
        )
    return ConfigError(f"role '{role_id}' did not exist yet at {describe(point)}")


async def read_window(
    consumer: AIOKafkaConsumer, tp: TopicPartition, first: int, cut_at: WalPosition,
    role_id: str, config: FoldConfig,
) -> list[uuid.UUID]:  # fmt: skip
    """Ids of the role's last ``dedupe_window`` records up to the commit's own event."""
    key, size = role_id.encode(), config.dedupe_window

    def enough(recs: list[scan.Record]) -> bool:
        return sum(1 for r in recs if r.key == key) >= size

    recs = await scan.read_back(consumer, tp, first, cut_at.offset + 1, enough)
    return window_ids([_item(r) for r in recs if r.key == key], role_id, size)


async def read_tail(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, cut_at: WalPosition,
    role_id: str, point: Point,
) -> list[WalItem]:  # fmt: skip
    """The role's records after the commit's event, up to ``point``."""
    key = role_id.encode()
    stop = min(end, point.offset + 1) if isinstance(point, AtOffset) else end
    later = _later_than(point, key) if isinstance(point, AtTime) else None
    recs = await scan.read_range(consumer, tp, cut_at.offset + 1, stop, later)
    return [_item(r) for r in recs if r.key == key]


def _later_than(point: AtTime, key: bytes) -> Callable[[scan.Record], bool]:
    def later(rec: scan.Record) -> bool:
        if rec.key != key:
            return False
        try:
            return codec.decode(rec.value or b"").occurred_at > point.time
        except DecodeError:
            return False  # undecodable: a rejection, it does not end the prefix

    return later


def _item(rec: scan.Record) -> WalItem:
    return WalItem(WalPosition(rec.topic, rec.partition, rec.offset), rec.key, rec.value or b"")


class _Known:
    """The role's commits the scan read, as a commit lookup for the tail."""

    def __init__(self, known: dict[str, CommitRecord]) -> None:
        self._known = known

    def get(self, commit_id: CommitId, /) -> Commit | None:
        found = self._known.get(commit_id)
        return None if found is None else commit_of(found)
