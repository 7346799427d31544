"""The fold that replay re-runs, imported from ``rolebus.streams`` in this one
module so that a move inside ``rolebus.streams`` is a change here only.

Also the one reader of a commit record's snapshot (``commit_of``)."""

from __future__ import annotations

from rolebus.streams.batch import LogResult, WalItem, admit, fold_log, items_by_partition
from rolebus.streams.commits import NO_COMMITS, Commit, CommitLookup, is_consistent
from rolebus.streams.fold import apply_event
from rolebus.streams.outcome import Accepted
from rolebus.streams.serde import commit_from_record
from rolebus.streams.state import FoldConfig, RoleState, logical_json, state_digest
from rolebus.streams.window import EventWindow
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


def commit_of(record: CommitRecord) -> Commit:
    """The commit a record describes, its snapshot rebuilt (the one place that
    reads ``CommitRecord.snapshot``)."""
    return commit_from_record(record)
