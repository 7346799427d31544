"""Replay's pure core: snapshot + tail equals the fold of the prefix, the
verification finds forged and missing records, one role folds like the log."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import pytest

from rolebus.replay.core import (
    NO_COMMITS,
    LogResult,
    WalItem,
    commit_of,
    fold_log,
    items_by_partition,
    state_digest,
)
from rolebus.replay.points import (
    AtOffset,
    fork_closure,
    only_roles,
    parse_offset,
    start_state,
    state_at,
    window_ids,
)
from rolebus.replay.scan import partition_of
from rolebus.replay.verify import collect_live, compare
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import codec
from rolebus.wal.events import Envelope, WalPosition
from rolebus.wal.records import ChangeRecord, CommitRecord
from testkit.workload import Workload, WorkloadSpec

CONFIG = FoldConfig(commit_every=5, message_window=4)
PARTITIONS = 3


def to_items(envelopes: Sequence[Envelope]) -> list[WalItem]:
    offsets = [0] * PARTITIONS
    items = []
    for env in envelopes:
        p = zlib.crc32(env.role_id.encode()) % PARTITIONS
        items.append(WalItem(WalPosition("t.wal", p, offsets[p]), env.role_id.encode(),
                             codec.encode(env)))  # fmt: skip
        offsets[p] += 1
    return items


@pytest.fixture(scope="module")
def log() -> tuple[list[WalItem], LogResult]:
    items = to_items(Workload(WorkloadSpec(roles=8, seed=3), CONFIG).take(1500))
    return items, fold_log(items_by_partition(items), CONFIG)


def live_of(result: LogResult) -> tuple[list[CommitRecord], list[ChangeRecord]]:
    commits = [r for r in result.records if isinstance(r, CommitRecord)]
    return commits, [r for r in result.records if isinstance(r, ChangeRecord)]


def test_snapshot_plus_tail_equals_the_fold_of_the_prefix(
    log: tuple[list[WalItem], LogResult],
) -> None:
    items, result = log
    commits, _ = live_of(result)
    role = max(result.states, key=lambda r: result.states[r].seq)
    mine = [c for c in commits if c.role_id == role]
    assert len(mine) > 5
    by_part = items_by_partition(items)
    for rec in mine[:: max(1, len(mine) // 8)]:
        assert rec.position is not None
        part = by_part[rec.position.partition]
        before = [it for it in part if it.position.offset <= rec.position.offset]
        ids = window_ids(
            [it for it in before if it.key == role.encode()], role, CONFIG.dedupe_window
        )
        start = start_state(commit_of(rec), rec.position, ids, CONFIG)
        for extra in (0, 3, 11):
            stop = rec.position.offset + extra
            tail = [it for it in part if rec.position.offset < it.position.offset <= stop]
            got = state_at(start, role, tail, CONFIG, NO_COMMITS).state
            prefix = {
                **by_part,
                rec.position.partition: [it for it in part if it.position.offset <= stop],
            }
            want = fold_log(prefix, CONFIG).states[role]
            assert (got.seq, got.head_commit_id, state_digest(got)) == (
                want.seq, want.head_commit_id, state_digest(want))  # fmt: skip


def test_the_window_makes_old_redeliveries_duplicates(log: tuple[list[WalItem], LogResult]) -> None:
    items, result = log
    commits, changes = live_of(result)
    rec = next(c for c in commits if c.kind == "auto" and c.position is not None)
    assert rec.position is not None
    message = [c for c in changes if c.role_id == rec.role_id and c.seq < rec.seq
               and c.event_type == "MessageAppended"][-1]  # fmt: skip
    later = dataclasses.replace(rec.position, offset=10**6)
    redelivery = WalItem(later, rec.role_id.encode(), message.event)
    before = [it for it in items if it.key == rec.role_id.encode()
              and it.position.partition == rec.position.partition
              and it.position.offset <= rec.position.offset]  # fmt: skip
    ids = window_ids(before, rec.role_id, CONFIG.dedupe_window)
    start = start_state(commit_of(rec), rec.position, ids, CONFIG)
    assert state_at(start, rec.role_id, [redelivery], CONFIG, NO_COMMITS).state.seq == rec.seq
    # Without the window the snapshot would take the message a second time.
    blind = start_state(commit_of(rec), rec.position, (), CONFIG)
    again = state_at(blind, rec.role_id, [redelivery], CONFIG, NO_COMMITS).state
    assert again.seq == rec.seq + 1


def test_verify_passes_on_identical_outputs_with_duplicates(
    log: tuple[list[WalItem], LogResult],
) -> None:
    _, result = log
    commits, changes = live_of(result)
    report = compare(result, collect_live(commits + commits[:20], changes + changes[:50]), CONFIG)
    assert report.divergences == ()
    assert report.duplicates == 70
    assert report.roles == len({c.role_id for c in changes})
    assert report.commits == len(commits)


def test_verify_reports_a_forged_commit_id(log: tuple[list[WalItem], LogResult]) -> None:
    _, result = log
    commits, changes = live_of(result)
    victim = commits[len(commits) // 2]
    forged = dataclasses.replace(victim, commit_id="f" * 64)
    report = compare(result, collect_live([*commits, forged], changes), CONFIG)
    found = {(d.role_id, d.seq, d.what.split(" (")[0]) for d in report.divergences}
    assert (victim.role_id, victim.seq, "corrupt commit record") in found
    assert (victim.role_id, victim.seq, "commit differs") in found
    line = next(d for d in report.divergences if d.what == "commit differs")
    assert line.event_id == victim.event_id and line.position == victim.position
    assert victim.commit_id in line.line() and "f" * 64 in line.line()


def test_verify_reports_a_forged_digest_under_a_real_id(
    log: tuple[list[WalItem], LogResult],
) -> None:
    _, result = log
    commits, changes = live_of(result)
    victim = commits[3]
    forged = dataclasses.replace(victim, state_digest="0" * 64)
    report = compare(result, collect_live([*commits, forged], changes), CONFIG)
    whats = {d.what.split(" for ")[0].split(" (")[0] for d in report.divergences
             if (d.role_id, d.seq) == (victim.role_id, victim.seq)}  # fmt: skip
    assert whats == {"two different commit records", "corrupt commit record"}


def test_verify_reports_missing_and_changed_events(log: tuple[list[WalItem], LogResult]) -> None:
    _, result = log
    commits, changes = live_of(result)
    gone = changes[-1]
    report = compare(result, collect_live(commits, changes[:-1]), CONFIG)
    (divergence,) = report.divergences
    assert (divergence.role_id, divergence.seq, divergence.found) == (
        gone.role_id,
        gone.seq,
        "none",
    )
    assert divergence.event_id == gone.event_id


def test_one_role_folds_like_the_whole_log(log: tuple[list[WalItem], LogResult]) -> None:
    items, result = log
    parts = items_by_partition(items)
    for role in sorted(result.states)[::3]:
        roles = fork_closure(parts, role)
        assert role in roles
        alone = fold_log(only_roles(parts, roles), CONFIG)
        assert state_digest(alone.states[role]) == state_digest(result.states[role])
        assert alone.states[role].head_commit_id == result.states[role].head_commit_id
    forked = [r for r in result.states if "-f" in r]
    for role in forked:
        assert len(fork_closure(parts, role)) > 1


def test_points_and_partitions() -> None:
    assert parse_offset("3:1042") == AtOffset(3, 1042)
    with pytest.raises(Exception, match="PARTITION:OFFSET"):
        parse_offset("3-1042")
    # Java's Utils.murmur2 test vectors (Kafka's UtilsTest), made positive as
    # the Java producer's partitioner does: the partition any Kafka client picks.
    for key, java in (("21", -973932308), ("foobar", -790332482), ("abc", 479470107)):
        assert partition_of(key, 1000) == (java & 0x7FFFFFFF) % 1000
    assert {partition_of(f"r-{i}", 12) for i in range(200)} == set(range(12))
