"""Folding lists of envelopes in input order, for the pure-core tests.

The product's whole-log fold is ``rolebus.streams.core.log.fold_log`` (WAL
records by partition); the core tests fold hand-made envelope sequences, so
this is the ``Folder`` step in a loop, with the outcomes kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rolebus.streams.core.commits import NO_COMMITS, Commit, CommitLookup
from rolebus.streams.core.fold import DEFAULT_CONFIG
from rolebus.streams.core.log import Folder
from rolebus.streams.core.outcome import Outcome
from rolebus.streams.core.state import FoldConfig, RoleState
from rolebus.wal.events import CommitId, Envelope, RoleId, WalPosition

Positioned = tuple[Envelope, WalPosition | None]
"""An envelope with the WAL position it was read from (None when unknown)."""


@dataclass(frozen=True)
class FoldResult:
    states: Mapping[RoleId, RoleState]
    outcomes: tuple[Outcome, ...]
    """One per input event, in input order."""
    commits: Mapping[CommitId, Commit]

    def commits_of(self, role_id: str) -> tuple[Commit, ...]:
        """The commits of one role cut during this fold, in seq order."""
        mine = (c for c in self.commits.values() if c.role_id == role_id)
        return tuple(sorted(mine, key=lambda c: c.seq))


def fold(
    events: Iterable[Envelope | Positioned],
    states: Iterable[RoleState] = (),
    *,
    lookup: CommitLookup = NO_COMMITS,
    config: FoldConfig = DEFAULT_CONFIG,
) -> FoldResult:
    """Fold ``events`` in input order, starting from ``states``."""
    folder = Folder(config, lookup)
    folder.states.update({state.role_id: state for state in states})
    outcomes = [
        folder.fold(*(item if isinstance(item, tuple) else (item, None))) for item in events
    ]
    return FoldResult(folder.states, tuple(outcomes), folder.commits)
