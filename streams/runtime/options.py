"""The knobs of one worker process (not part of the fold's replay contract)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerOptions:
    batch_max: int = 5000
    """Most WAL records one ``getmany`` returns (and one batch folds)."""
    batch_wait_s: float = 0.2
    """How long an idle worker waits for records; never applies when records
    are already there (``getmany`` returns what it has at once)."""
    fork_wait_s: float = 60.0
    """How long a fork waits for its source commit to become visible."""
    session_timeout_s: float = 10.0
    """A silent worker is replaced after this long (kill -9 failover time)."""
    progress_every_s: float = 10.0
    """Progress lines on stderr at most this often."""
    commit_cache: int = 1024
    """Commits kept decoded in memory (rollback targets, fork sources); about
    10 kB each with a full message window."""
    compression: str | None = "lz4"
    """Of the output and changelog records (None: off). lz4 costs the worker about
    10% of its CPU but keeps the forever-retained output topics small."""
    replication_factor: int = 1
    """Of the changelog topic (``process.prepare`` derives it from the cluster)."""
    min_insync_replicas: int = 1
