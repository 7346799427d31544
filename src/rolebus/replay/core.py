"""The fold that replay re-runs, imported from ``rolebus.streams`` in this one
module so that a move inside ``rolebus.streams`` is a change here only.

Also the one reader of a commit record's snapshot (``commit_of``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from rolebus.streams.core.commits import NO_COMMITS, Commit, CommitLookup, is_consistent
from rolebus.streams.core.fold import apply_event
from rolebus.streams.core.log import LogResult, WalItem, admit, fold_log, items_by_partition
from rolebus.streams.core.outcome import Accepted
from rolebus.streams.core.serde import commit_from_record, state_from_snapshot
from rolebus.streams.core.state import FoldConfig, RoleState, logical_json, state_digest
from rolebus.streams.core.window import EventWindow
from rolebus.streams.runtime.process import GC_YOUNG_THRESHOLD
from rolebus.wal.records import CommitRecord

__all__ = [
    "NO_COMMITS",
    "Accepted",
    "Commit",
    "CommitLookup",
    "EventWindow",
    "FoldConfig",
    "LogResult",
    "RoleState",
    "WalItem",
    "admit",
    "apply_event",
    "commit_of",
    "fold_log",
    "is_consistent",
    "items_by_partition",
    "logical_json",
    "state_digest",
]


@contextmanager
def fold_gc() -> Iterator[None]:
    """The worker's collector setting for a whole-log fold: the fold allocates
    many short-lived objects, and the default young-generation threshold made
    the collector a third of the folding time."""
    old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def state_at_commit(commit: Commit, **bookkeeping: object) -> RoleState:
    """The role's state as the commit recorded it (head = the commit), plus
    the given bookkeeping (WAL position, dedupe window)."""
    return state_from_snapshot(commit.snapshot, head_commit_id=commit.commit_id, **bookkeeping)


def commit_of(record: CommitRecord) -> Commit:
    """The commit a record describes, its snapshot rebuilt (the one place that
    reads ``CommitRecord.snapshot``)."""
    return commit_from_record(record)
