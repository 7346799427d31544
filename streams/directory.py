"""Where to find commits cut on other partitions: fork sources.

A fork names another role's commit, and that role may live on a partition
another worker owns, so the local ``commits`` table may not have it. The
directory tails the ``commits`` OUTPUT topic (every worker publishes each
commit there before it stores the state that follows it) and keeps an index
commit id -> (partition, offset), read from the ``rolebus-commit-id`` header
without parsing values. A lookup fetches the one record it needs.

Why not a faust GlobalTable: it would hold every snapshot in every worker's
memory and re-read the whole commits changelog (every partition) before each
rebalance completes, delaying every worker's readiness; forks are rare, so a
small index and a fetch per fork cost far less.

Invariants: the index only grows (commits are immutable and content
addressed, so a duplicate record names the same commit); a commit is visible
here only after it was delivered to the commits topic. The directory starts
tailing on first use and stops with the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.structs import ConsumerRecord

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import SchemaError, TransportError
from rolebus.streams.commits import Commit
from rolebus.streams.serde import commit_from_record
from rolebus.wal import reader, records, topics

log = logging.getLogger("rolebus.streams.directory")


class CommitDirectory:
    """Index of the commits topic; see the module docstring."""

    def __init__(self, settings: Settings, endpoints: Endpoints) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.topic = topics.topic_name(settings, "commits")
        self._index: dict[str, tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    async def find(self, commit_id: str) -> Commit | None:
        """The commit if the commits topic has it (as far as indexed), else None."""
        self._ensure_tailing()
        where = self._index.get(commit_id)
        if where is None:
            return None
        rec = await reader.read_at(self.settings, self.endpoints, self.topic, *where)
        try:
            return commit_from_record(records.decode_commit(rec.value))
        except SchemaError as exc:
            raise TransportError(
                f"{self.topic}[{where[0]}]@{where[1]}: commit {commit_id} is unreadable: {exc}",
                retriable=False,
            ) from exc

    def _ensure_tailing(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._tail())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _tail(self) -> None:
        client_id = "rolebus-commit-directory"
        async with reader.open_consumer(self.settings, self.endpoints, client_id) as consumer:
            # The commits topic may be moments old when the first fork asks.
            await reader.assign_from_beginning(consumer, [self.topic], wait_s=5.0)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for recs in batch.values():
                    self._add(recs)

    def _add(self, recs: list[ConsumerRecord[bytes, bytes]]) -> None:
        for rec in recs:
            for name, value in rec.headers or ():
                if name == records.COMMIT_ID_HEADER:
                    self._index[value.decode()] = (rec.partition, rec.offset)
