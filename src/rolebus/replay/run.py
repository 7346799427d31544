"""``replay fold``: re-fold the whole WAL in process with a fresh state and,
with ``verify``, compare with the live output topics.

The fold is ``fold_log``, the one the workers' semantics are defined by, over
the WAL read to the end offsets seen at start; nothing is written anywhere.
With ``role``, only that role and the roles it depends on are folded
(``points.fork_closure``) and compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError
from rolebus.replay import scan
from rolebus.replay.core import (
    FoldConfig,
    LogResult,
    WalItem,
    fold_gc,
    fold_log,
    items_by_partition,
)
from rolebus.replay.points import fork_closure, only_roles
from rolebus.replay.verify import Live, Report, collect_live, compare
from rolebus.wal import records, topics
from rolebus.wal.events import WalPosition


class Meter(Protocol):
    """Progress of one phase at a time (the CLI draws a bar; tests pass none)."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


class Quiet:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


@dataclass
class FoldRun:
    events: int = 0
    """WAL records read."""
    folded: int = 0
    """WAL records folded (fewer than ``events`` with a role)."""
    roles: int = 0
    commits: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """read / fold / verify."""
    report: Report | None = None
    result: LogResult | None = None

    @property
    def ok(self) -> bool:
        return self.report is None or not self.report.divergences

    @property
    def events_per_s(self) -> float:
        spent = self.seconds.get("read", 0.0) + self.seconds.get("fold", 0.0)
        return self.events / spent if spent > 0 else 0.0

    def json(self) -> dict[str, Any]:
        report = self.report
        return {
            "ok": self.ok, "events": self.events, "folded": self.folded, "roles": self.roles,
            "commits": self.commits, "events_per_s": round(self.events_per_s),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "verified": report is not None,
            "roles_compared": None if report is None else report.roles,
            "duplicate_records": None if report is None else report.duplicates,
            "divergences": [] if report is None else [d.json() for d in report.divergences],
        }  # fmt: skip


async def replay_fold(
    settings: Settings, ends: Endpoints, *, verify: bool = False, role: str | None = None,
    meter: Meter | None = None,
) -> FoldRun:  # fmt: skip
    meter = meter or Quiet()
    run, config = FoldRun(), FoldConfig.from_settings(settings)
    started = time.perf_counter()
    spans, items = await read_wal(settings, ends, meter)
    run.seconds["read"] = time.perf_counter() - started
    run.events = len(items)
    started = time.perf_counter()
    roles, result = fold(run, items, role, config, meter)
    run.seconds["fold"] = time.perf_counter() - started
    if verify:
        started = time.perf_counter()
        limit = {tp.partition: end for tp, (_, end) in spans.items()}
        live = await read_live(settings, ends, limit, roles, meter)
        run.report = compare(result, live, config, roles)
        run.seconds["verify"] = time.perf_counter() - started
    return run


async def read_wal(
    settings: Settings, ends: Endpoints, meter: Meter
) -> tuple[scan.Spans, list[WalItem]]:
    """Every WAL record up to the end offsets seen at start, and those offsets."""
    async with scan.open_reader(settings, ends) as consumer:
        spans = await scan.sizes(consumer, topics.topic_name(settings, "wal"))
        meter.phase("reading the WAL", sum(end - first for first, end in spans.values()))
        recs = await scan.read_topic(consumer, spans, meter.advance)
    items = [WalItem(WalPosition(r.topic, r.partition, r.offset), r.key, r.value or b"")
             for r in recs]  # fmt: skip
    return spans, items


def fold(
    run: FoldRun, items: list[WalItem], role: str | None, config: FoldConfig, meter: Meter
) -> tuple[set[str] | None, LogResult]:
    """``fold_log`` over the items (of ``role``'s closure only, with a role)."""
    partitions: Mapping[int, Sequence[WalItem]] = items_by_partition(items)
    roles = None
    if role is not None:
        roles = fork_closure(partitions, role)
        partitions = only_roles(partitions, roles)
        if not any(it.key == role.encode() for items in partitions.values() for it in items):
            raise ConfigError(f"--role {role}: the WAL holds no record of this role")
    run.folded = sum(map(len, partitions.values()))
    meter.phase("folding", run.folded)
    with fold_gc():
        result = fold_log({p: Counted(i, meter) for p, i in partitions.items()}, config)
    run.result, run.roles, run.commits = result, len(result.states), len(result.commits)
    return roles, result


async def read_live(
    settings: Settings, ends: Endpoints, limit: Mapping[int, int], roles: set[str] | None,
    meter: Meter,
) -> Live:  # fmt: skip
    """The live commits and changes of ``roles`` (all: None) for WAL records
    before the ``limit`` offsets (the WAL end read; later ones were not replayed)."""
    got: dict[str, list[scan.Record]] = {}
    for kind in ("commits", "changes"):
        async with scan.open_reader(settings, ends) as consumer:
            spans = await scan.sizes(consumer, topics.topic_name(settings, kind))
            meter.phase(f"reading {kind}", sum(end - first for first, end in spans.values()))
            got[kind] = await scan.read_topic(consumer, spans, meter.advance)
    wanted = None if roles is None else {r.encode() for r in roles}
    mine = [r.value or b"" for r in got["commits"] if wanted is None or r.key in wanted]
    commits = [c for c in map(records.decode_commit, mine) if _before(c.position, limit)]
    mine = [r.value or b"" for r in got["changes"] if wanted is None or r.key in wanted]
    changes = [c for c in map(records.decode_change, mine) if _before(c.position, limit)]
    return collect_live(commits, changes)


def _before(position: WalPosition | None, limit: Mapping[int, int]) -> bool:
    return position is None or position.offset < limit.get(position.partition, 0)


class Counted(Sequence[WalItem]):
    """A partition's items that report folding progress as they are read."""

    EVERY = 2048

    def __init__(self, items: Sequence[WalItem], meter: Meter) -> None:
        self._items, self._meter, self._reads = items, meter, 0

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> WalItem: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[WalItem]: ...

    def __getitem__(self, index: int | slice) -> WalItem | Sequence[WalItem]:
        if isinstance(index, slice):
            return self._items[index]
        self._reads += 1
        if self._reads % self.EVERY == 0:
            self._meter.advance(self.EVERY)
        return self._items[index]

    def __iter__(self) -> Iterator[WalItem]:
        return iter(self._items)
