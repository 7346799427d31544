"""The per-partition bookkeeping of a worker: what was folded since the last
checkpoint, and the small value types the pipeline passes around.

``Pending`` belongs to one partition task (one WAL partition assigned to
this worker). It holds the states and commits folded since the partition's
last checkpoint, the records to acknowledge once they are stored, the
partition's ``Sequencer`` and its inbox. When a rebalance takes the
partition away the task and its ``Pending`` are dropped; if the partition
comes back, a new ``Pending`` starts from the stored states: progress that
was never stored is folded again, never carried over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rolebus.streams.batch import Folder
from rolebus.streams.commits import Commit
from rolebus.streams.ordering import Sequencer
from rolebus.streams.state import RoleState
from rolebus.streams.tables import RoleStore
from rolebus.wal.events import CommitId, RoleId, WalPosition
from rolebus.wal.records import CommitRecord, OutputRecord, RejectionRecord


class Abandon(Exception):
    """A rebalance started: drop the batch in flight, store and acknowledge nothing."""


@dataclass(frozen=True)
class OutputTopics:
    wal: str
    changes: str
    commits: str
    rejections: str

    def of(self, rec: OutputRecord) -> str:
        if isinstance(rec, CommitRecord):
            return self.commits
        if isinstance(rec, RejectionRecord):
            return self.rejections
        return self.changes


@dataclass(frozen=True)
class WorkerOptions:
    """Knobs of a worker process that are not part of the fold's replay contract.
    (Defined here, not in ``app``, so the pipeline can take them without a cycle.)"""

    batch_size: int = 1000
    """Most WAL records folded per batch (per partition)."""
    batch_wait_s: float = 0.05
    """Longest wait for a batch to fill before folding what arrived."""
    fork_wait_s: float = 60.0
    """How long a fork waits for its source commit to become visible."""
    web_port: int | None = None
    """faust's web server on 127.0.0.1:<port>; None disables it."""
    replication_factor: int = 1
    """Of the changelog topics (``worker.prepare`` derives it from the cluster)."""
    min_insync_replicas: int = 1
    session_timeout_s: float = 10.0
    """A silent worker is replaced after this long (kill -9 failover time)."""
    checkpoint_s: float = 1.0
    """Longest time folded records wait to be stored in the tables and acknowledged."""
    progress_every_s: float = 10.0
    checkpoint_records: int = 20_000
    """Folded records that trigger a checkpoint before ``checkpoint_s``."""
    fork_poll_s: float = 0.05
    """How often a waiting fork asks the commit directory again."""


@dataclass
class Stats:
    """Counters since the worker started (logged by ``Pipeline.report``)."""

    events: int = 0
    batches: int = 0
    checkpoints: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    fork_waits: int = 0
    abandoned: int = 0
    seeks: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    """Per partition: the offset of the last folded record."""
    started: float = field(default_factory=time.monotonic)
    reported_events: int = 0
    reported_at: float = field(default_factory=time.monotonic)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass
class Pending:
    """A partition's progress since its last checkpoint (module docstring)."""

    topic: str
    partition: int
    roles: RoleStore
    states: dict[RoleId, RoleState] = field(default_factory=dict)
    commits: dict[CommitId, tuple[Commit, WalPosition]] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    since: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sequencer: Sequencer = field(default_factory=Sequencer)
    sought: int | None = None
    """The offset this actor last asked faust to read from again."""
    sought_at: float = 0.0
    doing: str = "idle"
    """What the partition task awaits right now (for the debug log)."""
    inbox: asyncio.Queue[list[Any]] = field(default_factory=asyncio.Queue)
    """Deliveries handed over by the agent, in arrival order."""
    queued: int = 0
    """Records in the inbox."""
    task: asyncio.Task[None] | None = None
    delivered_at: float = field(default_factory=time.monotonic)
    """When faust last delivered records of this partition (or the task started)."""
    watched_at: float = 0.0

    @property
    def started(self) -> bool:
        """True once the task knows where the stored state of its partition ends."""
        return self.sequencer.next_offset is not None

    def start_offset(self) -> int:
        """Where the stored state of the partition ends: the roles marker, read
        into the sequencer once (folding moves it on from there)."""
        if self.sequencer.next_offset is None:
            marker = self.roles.marker(self.partition)
            self.sequencer.next_offset = 0 if marker is None else marker
        return self.sequencer.next_offset

    def state(self, role_id: RoleId, /) -> RoleState | None:
        found = self.states.get(role_id)
        return found if found is not None else self.roles.state(role_id)

    def get(self, commit_id: CommitId, /) -> Commit | None:
        found = self.commits.get(commit_id)
        return None if found is None else found[0]

    def absorb(self, folder: Folder, events: Sequence[Any]) -> None:
        if not events:
            return
        if not self.events:
            self.since = time.monotonic()
        self.states.update(folder.states)
        self.commits.update(folder.commits)
        self.events.extend(events)

    def reset(self) -> None:
        self.states, self.commits, self.events = {}, {}, []

    def due(self, options: WorkerOptions) -> bool:
        if not self.events:
            return False
        age = time.monotonic() - self.since
        return age >= options.checkpoint_s or len(self.events) >= options.checkpoint_records
