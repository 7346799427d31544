"""The read side's pure parts: snapshot reading, seq ranges, commit diffs."""

from __future__ import annotations

from typing import Any

from rolebus.projectors.views import (
    FieldChange,
    diff_snapshots,
    snapshot_view,
)


def _msg(seq: int, content: str, role: str = "r1") -> dict[str, Any]:
    return {
        "message_id": f"m{seq}", "seq": seq, "role_id": role, "author": "user",
        "content": content, "occurred_at": 0, "flags": [], "tool_call": None,
    }  # fmt: skip


def _snap(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "role_id": "r1", "tenant_id": "t", "lifecycle": "active", "name": "Ada",
        "persona": "You help.", "traits": {"tone": "warm"}, "model": None, "skills": [],
        "seq": 5, "counters": {"messages": {"user": 2}, "tokens_in": 10, "tokens_out": 0,
        "tool_calls": 0, "flags": {}, "persona_updates": 0, "rollbacks": 0},
        "messages": [_msg(3, "hi"), _msg(4, "there")],
        "lineage": {"closed": [], "branch_start": 1},
    }  # fmt: skip
    doc.update(over)
    return doc


def test_snapshot_view_reads_lineage_as_live_ranges() -> None:
    snap = snapshot_view(_snap(seq=12, lineage={"closed": [[1, 4]], "branch_start": 9}))
    assert snap.live == ((1, 4), (9, 12))
    assert [m.seq for m in snap.messages] == [3, 4]
    assert snap.traits == {"tone": "warm"}


def test_diff_of_a_commit_with_itself_is_empty() -> None:
    a = snapshot_view(_snap())
    assert diff_snapshots("c1", a, "c1", a).empty


def test_diff_names_fields_traits_counters_and_messages() -> None:
    a = snapshot_view(_snap())
    b_doc = _snap(
        persona="You help, briefly.", lifecycle="suspended", seq=7,
        traits={"tone": "dry", "lang": "en"},
        messages=[_msg(4, "there"), _msg(6, "new")],
    )  # fmt: skip
    b_doc["counters"] = {**b_doc["counters"], "messages": {"user": 3}, "tokens_in": 12}
    d = diff_snapshots("ca", a, "cb", snapshot_view(b_doc))
    assert FieldChange("persona", "You help.", "You help, briefly.") in d.changes
    assert FieldChange("lifecycle", "active", "suspended") in d.changes
    assert FieldChange("traits.tone", "warm", "dry") in d.changes
    assert FieldChange("traits.lang", None, "en") in d.changes
    assert FieldChange("counters.messages.user", 2, 3) in d.changes
    assert FieldChange("counters.tokens_in", 10, 12) in d.changes
    assert [m.seq for m in d.only_in_a] == [3]
    assert [m.seq for m in d.only_in_b] == [6]
    assert d.live_only_in_b == ((6, 7),) and d.live_only_in_a == ()


def test_diff_after_rollback_shows_superseded_seqs() -> None:
    before = snapshot_view(_snap(seq=9, messages=[_msg(8, "wrong")]))
    after = snapshot_view(
        _snap(seq=10, messages=[_msg(4, "there")],
              lineage={"closed": [[1, 5]], "branch_start": 10})
    )  # fmt: skip
    d = diff_snapshots("a", before, "b", after)
    assert d.live_only_in_a == ((6, 9),)
    assert [m.content for m in d.only_in_a] == ["wrong"]


def test_same_seq_of_another_role_is_another_message() -> None:
    a = snapshot_view(_snap(messages=[_msg(3, "hi", role="src")]))
    b = snapshot_view(_snap(messages=[_msg(3, "hi", role="r1")]))
    d = diff_snapshots("a", a, "b", b)
    assert len(d.only_in_a) == 1 and len(d.only_in_b) == 1
