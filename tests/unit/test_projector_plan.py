"""The projector's pure planning: records from the real pure fold -> rows,
role rows in any arrival order, superseded flags, aggregates, idempotence."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from rolebus.projectors import seqranges
from rolebus.projectors.aggregates import bucket_of
from rolebus.projectors.plan import Decoded, Fetched, Plan, decode_batch, plan_batch
from rolebus.projectors.roles import RoleRow, plan_roles, plan_supersede, superseded_now
from rolebus.projectors.rollup import plan_minutes, plan_rejection_minutes
from rolebus.streams.core.log import Folder, WalItem, admit
from rolebus.streams.core.state import FoldConfig, RoleState, logical_json
from rolebus.wal import codec, records
from rolebus.wal.events import (
    Author,
    CommitId,
    CommitRequested,
    Envelope,
    Flag,
    MessageAppended,
    Payload,
    PersonaUpdated,
    RoleActivated,
    RoleCreated,
    RoleForked,
    RoleId,
    RolledBack,
    TenantId,
    WalPosition,
)
from rolebus.wal.records import ChangeRecord, CommitRecord, OutputRecord, RecordError
from rolebus.wal.snapshot import counters_json, live_ranges

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Script:
    """Events folded one by one by the real pure fold; their output records."""

    folder: Folder = field(
        default_factory=lambda: Folder(FoldConfig(commit_every=5, message_window=4))
    )
    records: list[OutputRecord] = field(default_factory=list)
    n: int = 0

    def send(self, role: str, payload: Payload, tenant: str = "t-1") -> None:
        self.n += 1
        env = Envelope(
            uuid.UUID(int=self.n), TenantId(tenant), RoleId(role),
            BASE + timedelta(seconds=7 * self.n), "test", payload,
        )  # fmt: skip
        item = WalItem(WalPosition("x.wal", 0, self.n), role.encode(), codec.encode(env))
        step = self.folder.apply(item, admit(item))
        assert step.outcome == "accepted", step
        self.records.extend(step.records)

    def say(self, role: str, text: str, author: Author = Author.USER, **kw: object) -> None:
        self.send(role, MessageAppended(f"m{self.n}", author, text, **kw))  # type: ignore[arg-type]

    def head(self, role: str) -> CommitId:
        found = self.folder.states[RoleId(role)].head_commit_id
        assert found is not None
        return found

    def state(self, role: str) -> RoleState:
        return self.folder.states[RoleId(role)]


def fetched(recs: Sequence[OutputRecord]) -> list[Fetched]:
    out = []
    for i, rec in enumerate(recs):
        kind = "changes" if isinstance(rec, ChangeRecord) else "commits"
        out.append(Fetched(f"x.{kind}", 0, i, 1_767_268_800_000, records.encode(rec)))
    return out


def plan_of(recs: Sequence[OutputRecord]) -> Plan:
    return plan_batch(decode_batch(fetched(recs)))


def conversation() -> Script:
    """r-1: created, active, 6 messages, a rollback to seq 4, 2 messages, a
    rollback to the abandoned branch (restores what the first one superseded)."""
    s = Script()
    s.send("r-1", RoleCreated("Ada", "You are Ada.", {"tone": "dry"}, "m-1", ("search",)))
    s.send("r-1", RoleActivated())
    s.say("r-1", "hello")
    s.send("r-1", CommitRequested("greeted"))  # seq 4
    greeted = s.head("r-1")
    for i in range(3):
        s.say("r-1", f"q{i}")
        s.say(
            "r-1",
            f"a{i}",
            Author.ASSISTANT,
            latency_ms=40 * (i + 1),
            flags=frozenset([Flag.HALLUCINATION]),
        )
    s.send("r-1", CommitRequested("six"))  # seq 11
    six = s.head("r-1")
    s.send("r-1", RolledBack(greeted, "hallucinated"))  # seq 12: supersedes 5..11
    s.say("r-1", "again")  # seq 13
    s.send("r-1", PersonaUpdated("You are Ada, careful."))  # seq 14
    s.send("r-1", RolledBack(six, "it was fine"))  # seq 15: restores 5..11, supersedes 12..14
    s.say("r-1", "after")  # seq 16
    return s


def test_rows_from_records() -> None:
    s = conversation()
    plan = plan_of(s.records)
    assert [e.seq for e in plan.event_rows()] == list(range(1, 17))
    msgs = plan.message_rows()
    assert [m.seq for m in msgs] == [3, 5, 6, 7, 8, 9, 10, 13, 16]
    assert msgs[2].author == "assistant" and msgs[2].flags == ["hallucination"]
    backs = plan.rollback_rows()
    assert [(r.seq, r.superseded, r.restored) for r in backs] == [
        (12, "{[5,12)}", "{}"), (15, "{[12,15)}", "{[5,12)}"),
    ]  # fmt: skip
    assert backs[0].reason == "hallucinated" and backs[0].live == "{[1,5),[12,13)}"
    commits = plan.commit_rows()
    assert {c.kind for c in commits} >= {"created", "lifecycle", "manual", "rollback"}
    assert all(c.live.startswith("{[1,") for c in commits)


def test_duplicates_are_planned_once_and_only_new_filters() -> None:
    s = conversation()
    plan = plan_of([*s.records, *s.records[:10]])
    assert len(plan.changes) == 16
    first = plan.changes[0].record.event_id
    assert plan.only_new({first}, (), ()).changes == (plan.changes[0],)
    assert plan.only_new(set(), (), ()).commits == ()


def test_a_corrupt_output_record_fails_loudly_with_its_position() -> None:
    good = fetched(conversation().records[:1])
    bad = Fetched("x.changes", 3, 77, 0, b'{"v":1,"type":"change"}')
    with pytest.raises(RecordError, match=r"x.changes\[3\]@77"):
        decode_batch([*good, bad])


def final_rows(
    recs: Sequence[OutputRecord], order: str, seed: int = 0
) -> dict[tuple[str, str], RoleRow]:
    """Role rows after projecting ``recs`` in batches, changes and commits
    arriving in the given relative order (changes keep their own order)."""
    changes = [r for r in recs if isinstance(r, ChangeRecord)]
    commits = [r for r in recs if isinstance(r, CommitRecord)]
    if order == "changes-first":
        stream: list[OutputRecord] = [*changes, *commits]
    elif order == "commits-first":
        stream = [*commits, *changes]
    else:  # random interleaving, each topic in its own order
        rng = random.Random(seed)
        a, b, stream = list(changes), list(commits), []
        while a or b:
            stream.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
    rows: dict[tuple[str, str], RoleRow] = {}
    rng = random.Random(seed + 1)
    i = 0
    while i < len(stream):
        size = rng.randint(1, 6)
        plan = plan_of(stream[i : i + size])
        i += size
        keys = {(c.record.tenant_id, c.record.role_id) for c in (*plan.changes, *plan.commits)}
        current = {k: rows[k] for k in keys if k in rows}
        rows.update(plan_roles(current, plan.changes, plan.commits, {}))
    return rows


@pytest.mark.parametrize("order", ["changes-first", "commits-first", "mixed-1", "mixed-2"])
def test_role_rows_end_the_same_in_any_arrival_order(order: str) -> None:
    s = conversation()
    row = final_rows(s.records, order, seed=len(order))[("t-1", "r-1")]
    state = s.state("r-1")
    assert row.seq == state.seq == 16
    assert row.head_commit_id == state.head_commit_id
    assert (row.lifecycle, row.name, row.persona) == ("active", "Ada", "You are Ada.")
    assert (dict(row.traits), row.model, row.skills) == ({"tone": "dry"}, "m-1", ("search",))
    assert counters_json(row.counters) == logical_json(state)["counters"]
    assert row.live == tuple(tuple(r) for r in live_ranges(state))
    assert row.created_at == BASE + timedelta(seconds=7)


def test_superseded_flags_match_the_live_ranges_however_batches_cut() -> None:
    s = conversation()
    seqs = [m.seq for m in plan_of(s.records).message_rows()]
    live = live_ranges(s.state("r-1"))
    expected = {q: not any(a <= q <= b for a, b in live) for q in seqs}
    assert {q for q, gone in expected.items() if gone} == {13}
    for cut in range(1, len(s.records)):
        flags = dict.fromkeys(seqs, False)
        for part in (s.records[:cut], s.records[cut:]):
            for flip in plan_supersede(plan_of(part).changes):
                for a, b in flip.ranges:
                    flags.update({q: flip.value for q in seqs if a <= q <= b})
        assert flags == expected, cut


def test_after_the_first_rollback_exactly_its_range_is_superseded() -> None:
    s = conversation()
    first_back = next(
        i for i, r in enumerate(s.records) if isinstance(r, ChangeRecord) and r.seq == 12
    )
    flips = plan_supersede(plan_of(s.records[: first_back + 1]).changes)
    assert [(f.value, f.ranges) for f in flips] == [(True, ((5, 11),))]


def test_a_fork_gets_its_source_and_the_source_commits_live_ranges() -> None:
    s = conversation()
    source = s.head("r-1")
    s.send("f-1", RoleForked(RoleId("r-1"), source, "Ada II"))
    plan = plan_of(s.records)
    lives = {c.record.commit_id: c.snapshot.live for c in plan.commits}
    rows = plan_roles({}, plan.changes, plan.commits, lives)
    fork = rows[("t-1", "f-1")]
    assert (fork.forked_from_role, fork.forked_from_commit) == ("r-1", source)
    assert fork.forked_live == ((1, 11), (15, 15))
    assert fork.persona == "You are Ada." and fork.name == "Ada II" and fork.seq == 1
    assert counters_json(fork.counters)["messages"] == {}
    unknown = plan_roles({}, plan.changes, plan.commits, {})[("t-1", "f-1")]
    assert unknown.forked_live is None  # filled when the source commit is projected


def test_aggregates_count_each_input_once_however_batches_cut() -> None:
    s = conversation()
    at = BASE + timedelta(minutes=5)
    whole = plan_minutes(plan_of(s.records).changes, (), at)
    total = {k: dict(v.counts) for k, v in whole.items()}
    assert sorted(k[2].minute for k in whole) == [0, 1]  # events 7 s apart span two minutes
    counts = {c: sum(v.counts[c] for v in whole.values()) for c in total[next(iter(total))]}
    assert counts["msg_assistant"] == 3 and counts["flag_hallucination"] == 3
    assert counts["rollbacks"] == 2 and counts["commits_requested"] == 2
    assert counts["created"] == 1 and counts["activated"] == 1 and counts["persona_updates"] == 1
    hist = [sum(col) for col in zip(*(v.latency_hist for v in whole.values()), strict=True)]
    assert sum(hist) == 3 and hist[bucket_of(40)] == 1 and hist[bucket_of(120)] == 1
    assert counts["events"] == 16 and counts["lag_count"] == 16
    for cut in (3, 9, 20):
        split: dict[tuple[str, str, datetime], dict[str, int]] = {}
        for part in (s.records[:cut], s.records[cut:]):
            for k, v in plan_minutes(plan_of(part).changes, (), at).items():
                into = split.setdefault(k, dict.fromkeys(v.counts, 0))
                for col, n in v.counts.items():
                    into[col] += n
        assert split == total


def test_rejections_without_a_role_count_under_empty_tenant_and_role() -> None:
    rec = records.RejectionRecord(WalPosition("x.wal", 1, 9), "undecodable", "bad", b"\x00")
    decoded = decode_batch([Fetched("x.rejections", 1, 0, 1_767_268_861_000, records.encode(rec))])
    (row,) = plan_batch(decoded).rejection_rows()
    assert row.tenant_id is None and row.original == b"\x00"
    minute = datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    assert plan_rejection_minutes(decoded.rejections) == {(("", "", minute), "undecodable"): 1}
    aggs = plan_minutes((), decoded.rejections, BASE)
    assert aggs[("", "", minute)].counts["rejections"] == 1


def test_range_literals_round_trip() -> None:
    assert seqranges.literal([(5, 7), (1, 2), (3, 3)]) == "{[1,4),[5,8)}"
    assert seqranges.subtract([(1, 10)], [(3, 4), (8, 20)]) == ((1, 2), (5, 7))
    assert seqranges.literal(()) == "{}"


def test_empty_batch_plans_nothing() -> None:
    plan = plan_batch(Decoded())
    assert plan.event_rows() == [] and plan_supersede(plan.changes) == []
    assert list(itertools.chain(plan.commit_rows(), plan.rejection_rows())) == []


def test_messages_a_rollback_of_the_same_batch_supersedes_go_in_flagged() -> None:
    s = conversation()
    plan = plan_of(s.records)
    gone = superseded_now(plan_supersede(plan.changes))
    flagged = {m.seq for m in plan.message_rows() if gone(m.tenant_id, m.role_id, m.seq)}
    assert flagged == {13}
    assert not gone("t-1", "other", 13)
