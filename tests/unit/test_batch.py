"""The worker's pure core: batches, redelivery and fork visibility across partitions."""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence

from rolebus.streams.core.commits import Commit
from rolebus.streams.core.log import Folder, WalItem, admit, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig, RoleState, state_digest
from rolebus.wal import codec
from rolebus.wal.events import (
    CommitId,
    Envelope,
    RoleCreated,
    RoleForked,
    RoleId,
    WalPosition,
)
from rolebus.wal.records import (
    KEY_MISMATCH,
    UNDECODABLE,
    ChangeRecord,
    OutputRecord,
    RejectionRecord,
)
from testkit.workload import Workload, WorkloadSpec

CONFIG = FoldConfig(commit_every=5, message_window=4)
PARTITIONS = 4


def to_items(envelopes: Sequence[Envelope], partitions: int = PARTITIONS) -> list[WalItem]:
    """Place envelopes like a keyed producer would (stable hash of the role id)."""
    offsets = [0] * partitions
    items = []
    for env in envelopes:
        p = zlib.crc32(env.role_id.encode()) % partitions
        position = WalPosition("t.wal", p, offsets[p])
        offsets[p] += 1
        items.append(WalItem(position, env.role_id.encode(), codec.encode(env)))
    return items


def workload(events: int = 2000) -> tuple[Workload, list[WalItem]]:
    w = Workload(WorkloadSpec(roles=25, seed=11), CONFIG)
    return w, to_items(w.take(events))


def logical(states: Mapping[RoleId, RoleState]) -> dict[RoleId, tuple[str, str | None]]:
    return {r: (state_digest(s), s.head_commit_id) for r, s in states.items()}


def test_fold_log_matches_the_producers_sequential_fold() -> None:
    w, items = workload()
    result = fold_log(items_by_partition(items), CONFIG)
    assert logical(result.states) == logical(w.states)
    assert set(result.commits) == set(w.commits)
    changes = [r for r in result.records if isinstance(r, ChangeRecord)]
    assert len({c.event_id for c in changes}) == len(changes)


def run_in_batches(
    items_of: Sequence[WalItem],
    rng: random.Random,
    redeliver: bool,
    others: Mapping[CommitId, Commit],
) -> tuple[dict[RoleId, RoleState], dict[CommitId, Commit], list[OutputRecord]]:
    """Fold one partition in random batches, storing states between batches like the
    worker; optionally "crash" after a batch (outputs sent, state not stored) and redo it.
    ``others``: the commits of other partitions (fork sources)."""
    table: dict[RoleId, RoleState] = {}
    commits: dict[CommitId, Commit] = dict(others)
    out: list[OutputRecord] = []
    i = 0
    while i < len(items_of):
        batch = items_of[i : i + rng.randint(1, 40)]
        crash = redeliver and rng.random() < 0.3
        folder = Folder(CONFIG, commits, table.get)
        for item in batch:
            out.extend(folder.apply(item, admit(item)).records)
        if crash:
            continue  # same batch again, from the stored state
        table.update(folder.states)
        commits.update(folder.commits)
        i += len(batch)
    return table, commits, out


def test_batch_boundaries_and_redelivery_do_not_change_the_records() -> None:
    _, items = workload()
    reference = fold_log(items_by_partition(items), CONFIG)
    rng = random.Random(5)
    for p, part in items_by_partition(items).items():
        expected = [r for r in reference.records if r.position.partition == p]  # type: ignore[union-attr]
        for redeliver in (False, True):
            states, _, out = run_in_batches(part, rng, redeliver, reference.commits)
            assert {k: v for k, v in reference.states.items() if k in states} == states
            assert set(map(repr, out)) == set(map(repr, expected))
            if not redeliver:
                assert out == expected


def test_redelivered_batch_after_the_state_was_stored_emits_nothing() -> None:
    _, items = workload(300)
    part = items_by_partition(items)[0]
    folder = Folder(CONFIG)
    for item in part:
        folder.apply(item, admit(item))
    again = Folder(CONFIG, source=folder.states.get)
    steps = [again.apply(item, admit(item)) for item in part]
    assert {s.outcome for s in steps} <= {"duplicate", "undecodable", "key_mismatch"}
    assert not [r for s in steps for r in s.records if not isinstance(r, RejectionRecord)]


def test_undecodable_and_misplaced_records_are_rejected_with_their_bytes() -> None:
    pos = WalPosition("t.wal", 1, 7)
    garbage = admit(WalItem(pos, b"r-1", b"\x00not avro"))
    assert isinstance(garbage, RejectionRecord)
    assert (garbage.reason, garbage.original, garbage.event_id) == (
        UNDECODABLE,
        b"\x00not avro",
        None,
    )
    assert "t.wal[1]@7" in garbage.message
    env = Workload(WorkloadSpec(roles=1)).take(1)[0]
    misplaced = admit(WalItem(pos, b"someone-else", codec.encode(env)))
    assert isinstance(misplaced, RejectionRecord)
    assert misplaced.reason == KEY_MISMATCH
    assert misplaced.event_id == str(env.event_id)
    assert "key = role id" in misplaced.message


def _item(env: Envelope, partition: int, offset: int) -> WalItem:
    return WalItem(WalPosition("t.wal", partition, offset), env.role_id.encode(), codec.encode(env))


def test_fork_waits_for_a_commit_cut_on_another_partition() -> None:
    w = Workload(WorkloadSpec(roles=1, refusals=0), CONFIG)
    (create,) = w.take(1)
    (source,) = w.commits.values()
    fork = w._envelope(RoleId("w-fork"), RoleForked(create.role_id, source.commit_id, "f"))
    ghost = w._envelope(RoleId("w-ghost"), RoleForked(create.role_id, CommitId("0" * 64), "g"))
    # the fork sits first in partition 0, its source is cut later in partition 1
    log = {0: [_item(fork, 0, 0), _item(ghost, 0, 1)], 1: [_item(create, 1, 0)]}
    folder = Folder(CONFIG)
    assert folder.waits_for(fork) == source.commit_id
    result = fold_log(log, CONFIG)
    kinds = {(r.role_id, type(r).__name__) for r in result.records}
    assert ("w-fork", "ChangeRecord") in kinds
    assert ("w-ghost", "RejectionRecord") in kinds
    assert result.states[RoleId("w-fork")].head_commit_id in result.commits


def test_cyclic_forks_are_released_as_unknown_commits() -> None:
    w = Workload(WorkloadSpec(roles=0), CONFIG)
    a, b = (w._envelope(RoleId(r), RoleCreated(r, "p")) for r in ("a", "b"))
    # commit ids are content addressed: fold a and b alone to learn their first commits
    solo = fold_log({0: [_item(a, 0, 1)], 1: [_item(b, 1, 1)]}, CONFIG).commits.values()
    first = {c.role_id: c.commit_id for c in solo}
    fork_a = w._envelope(RoleId("fa"), RoleForked(RoleId("b"), first["b"], "x"))
    fork_b = w._envelope(RoleId("fb"), RoleForked(RoleId("a"), first["a"], "y"))
    log = {0: [_item(fork_a, 0, 0), _item(a, 0, 1)], 1: [_item(fork_b, 1, 0), _item(b, 1, 1)]}
    result = fold_log(log, CONFIG)
    rejected = {r.role_id for r in result.records if isinstance(r, RejectionRecord)}
    assert rejected == {"fa", "fb"}
    assert {"a", "b"} <= set(result.states)
