"""Committed states by commit id, from the ``commits`` output topic.

The workers keep commits in their ``commits`` table (recovered from its
changelog after restarts and rebalances); this module answers the same
question for tools and the CLI without a worker: scan the commits topic,
match the ``rolebus-commit-id`` header (no value is parsed but the match),
return the record, whose snapshot is the committed logical state.

Invariants: the commits topic keeps records forever (``topics.wanted``), so
every commit ever cut is found; duplicates of a commit are identical, the
first one found is returned; a record whose id, digest and snapshot disagree
raises ``RecordError`` rather than being returned.
"""

from __future__ import annotations

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.streams.commits import is_consistent
from rolebus.streams.serde import commit_from_record
from rolebus.wal import reader, records, topics
from rolebus.wal.records import CommitRecord, RecordError


async def find_commit(settings: Settings, ends: Endpoints, commit_id: str) -> CommitRecord | None:
    """The commit record with this id, or None if no worker has published it."""
    name = topics.topic_name(settings, "commits")
    wanted = commit_id.encode()
    async with reader.open_consumer(settings, ends, "rolebus-snapshots") as consumer:
        tps = await reader.assign_from_beginning(consumer, [name])
        ends_at = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends_at[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for recs in batch.values():
                for rec in recs:
                    if (records.COMMIT_ID_HEADER, wanted) in (rec.headers or ()):
                        return _checked(records.decode_commit(rec.value or b""))
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends_at[tp]}
        return None


def _checked(record: CommitRecord) -> CommitRecord:
    if not is_consistent(commit_from_record(record)):
        raise RecordError(
            f"commit {record.commit_id}: id, digest and snapshot disagree "
            "(the commits topic holds a corrupt or forged record)"
        )
    return record
