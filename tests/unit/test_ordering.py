"""Offset order within a partition, whatever order faust delivers in."""

from __future__ import annotations

from dataclasses import dataclass

from rolebus.streams.ordering import Sequencer, offset_of


@dataclass(frozen=True)
class Msg:
    offset: int


@dataclass(frozen=True)
class Ev:
    message: Msg
    copy: int = 0


def evs(*offsets: int, copy: int = 0) -> list[Ev]:
    return [Ev(Msg(o), copy) for o in offsets]


def offsets(events: list[Ev]) -> list[int]:
    return [offset_of(e) for e in events]


def test_a_fresh_sequencer_starts_at_its_first_record() -> None:
    seq = Sequencer()
    plan = seq.plan(evs(7, 8, 9))
    assert (offsets(plan.fold), plan.seen, plan.held, plan.next_offset) == ([7, 8, 9], [], {}, 10)


def test_records_beyond_a_gap_wait_until_it_fills() -> None:
    seq = Sequencer(next_offset=10)
    first = seq.plan(evs(10, 11, 15, 16))
    assert offsets(first.fold) == [10, 11] and sorted(first.held) == [15, 16]
    seq.commit(first, now=0.0)
    second = seq.plan(evs(12, 13, 14))
    assert offsets(second.fold) == [12, 13, 14, 15, 16]
    seq.commit(second, now=1.0)
    assert (seq.next_offset, seq.held, seq.held_since) == (17, {}, None)


def test_prefetched_records_then_the_re_read_from_the_committed_offset() -> None:
    """faust hands over records fetched before its seek, then re-reads from the
    committed offset: the early ones wait, the re-read ones fold once each."""
    seq = Sequencer(next_offset=20)
    early = seq.plan(evs(30, 31))
    assert early.fold == [] and sorted(early.held) == [30, 31]
    seq.commit(early, now=0.0)
    reread = seq.plan(evs(*range(15, 32), copy=1))
    assert offsets(reread.fold) == list(range(20, 32))
    assert sorted(offsets(reread.seen)) == [*range(15, 20), 30, 31]  # acked, not folded
    assert all(e.copy == 1 for e in reread.fold if offset_of(e) < 30)


def test_uncommitted_plans_change_nothing() -> None:
    seq = Sequencer(next_offset=5)
    seq.plan(evs(5, 6, 9))
    assert (seq.next_offset, seq.held) == (5, {})


def test_a_gap_that_never_fills_is_accepted_after_the_timeout() -> None:
    seq = Sequencer(next_offset=3, gap_timeout_s=10.0)
    plan = seq.plan(evs(8, 9))
    seq.commit(plan, now=100.0)
    assert not seq.gap_expired(105.0)
    assert seq.gap_expired(110.0)
    accepted = seq.plan([], accept_gap=True)
    assert offsets(accepted.fold) == [8, 9] and accepted.next_offset == 10


def test_every_record_lands_in_exactly_one_bucket() -> None:
    seq = Sequencer(next_offset=50)
    delivered = evs(40, 50, 50, 51, 53, 60)
    plan = seq.plan(delivered)
    buckets = [*plan.fold, *plan.seen, *plan.held.values()]
    assert sorted(map(id, buckets)) == sorted(map(id, delivered))
    assert offsets(plan.fold) == [50, 51] and sorted(plan.held) == [53, 60]
