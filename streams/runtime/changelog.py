"""The state changelog: what a worker stores, and how a worker gets it back.

One compacted topic per app id, ``<app_id>-state-changelog``, co-partitioned
with the WAL: everything about the roles of WAL partition p goes to changelog
partition p, so whoever owns p restores exactly its roles. Two kinds of
records, told apart by their key:

* ``role:<role id>`` -> the role's whole state (``serde.encode_state``:
  logical state, head commit, WAL position, dedupe window);
* ``commit:<commit id>`` -> the offset of that commit's record in partition p
  of the commits OUTPUT topic (the index through which rollback targets are
  read back; snapshots are never kept in memory wholesale).

Invariants: a worker writes a batch's changelog records only after the
batch's output records were delivered, and commits its WAL offsets only
after the changelog records were delivered, so a stored state never
remembers an event whose outputs are not out, and a committed offset never
runs ahead of the stored states. Restore keeps the last value of each key
(compaction keeps at least that one) and decodes a state only when the fold
first needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from rolebus.streams.core.serde import decode_state, encode_state
from rolebus.streams.core.state import RoleState
from rolebus.wal.events import RoleId
from rolebus.wal.records import RecordError

ROLE_PREFIX: Final = b"role:"
COMMIT_PREFIX: Final = b"commit:"


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-state-changelog"


def role_entry(state: RoleState) -> tuple[bytes, bytes]:
    return ROLE_PREFIX + state.role_id.encode(), encode_state(state)


def commit_entry(commit_id: str, offset: int) -> tuple[bytes, bytes]:
    return COMMIT_PREFIX + commit_id.encode(), str(offset).encode()


@dataclass
class PartitionState:
    """The stored roles of one WAL partition, in memory."""

    partition: int
    raw: dict[str, bytes] = field(default_factory=dict)
    """Role id -> encoded state, not decoded yet."""
    states: dict[str, RoleState] = field(default_factory=dict)
    """Role id -> decoded state (moved here from ``raw`` on first use)."""
    index: dict[str, int] = field(default_factory=dict)
    """Commit id -> offset in this partition of the commits topic, as restored
    (the worker moves it into its commit store)."""
    committed: int | None = None
    """The WAL offset this worker last committed for the partition."""

    def state(self, role_id: RoleId) -> RoleState | None:
        found = self.states.get(role_id)
        if found is not None:
            return found
        raw = self.raw.pop(role_id, None)
        if raw is None:
            return None
        state = self.states[role_id] = decode_state(raw)
        return state

    def add(self, key: bytes, value: bytes | None, where: str) -> None:
        if key.startswith(ROLE_PREFIX) and value is not None:
            role_id = key[len(ROLE_PREFIX) :].decode()
            self.states.pop(role_id, None)
            self.raw[role_id] = value
        elif key.startswith(COMMIT_PREFIX) and value is not None:
            self.index[key[len(COMMIT_PREFIX) :].decode()] = int(value)
        else:
            raise RecordError(
                f"{where}: key {key[:40]!r} is not a rolebus state changelog entry (another "
                "program wrote to this topic, or it is an old faust changelog: use a new "
                "ROLEBUS_APP_ID)"
            )

    @property
    def roles(self) -> int:
        return len(self.raw) + len(self.states)


@dataclass(frozen=True)
class Restored:
    partitions: dict[int, PartitionState]
    records: int
    seconds: float


async def restore(consumer: AIOKafkaConsumer, topic: str, partitions: list[int]) -> Restored:
    """Read changelog ``partitions`` from the beginning to their current end.

    ``consumer`` is a started consumer without a group, used only for this."""
    started = time.monotonic()
    if not partitions:
        return Restored({}, 0, 0.0)
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    out = {p: PartitionState(p) for p in partitions}
    count = 0
    remaining = {tp for tp in tps if ends[tp] > 0}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
        for tp, recs in batch.items():
            state = out[tp.partition]
            for rec in recs:
                state.add(rec.key or b"", rec.value, f"{topic}[{tp.partition}]@{rec.offset}")
            count += len(recs)
        remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    return Restored(out, count, time.monotonic() - started)
