"""Golden log: a fixed event sequence and the exact commit ids it must produce.

tests/unit/golden/events.json is a literal log (fixed uuids, timestamps, WAL
positions, and the commit ids that its rollbacks and forks name);
tests/unit/golden/expected.json holds what folding it must give. A failure here
means replay is no longer stable: existing logs would fold to other ids.

Only when a change of the commit recipe or of the fold's semantics is
intended, regenerate both files and review the diff:

    .venv/bin/python tests/unit/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rolebus.streams.core.commits import Commit
from rolebus.streams.core.log import Folder, WalItem, fold_log, items_by_partition
from rolebus.streams.core.outcome import Accepted, Duplicate, Outcome, Rejected
from rolebus.streams.core.state import FoldConfig, RoleState, state_digest
from rolebus.wal import codec
from rolebus.wal.canonical import plain
from rolebus.wal.events import (
    PAYLOAD_TYPES,
    Author,
    CommitId,
    CommitRequested,
    Envelope,
    Flag,
    MessageAppended,
    Payload,
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleId,
    RoleResumed,
    RoleSuspended,
    RolledBack,
    TenantId,
    ToolCall,
    WalPosition,
)
from testkit.folding import Positioned, fold

GOLDEN = Path(__file__).parent / "golden"
EVENTS_FILE, EXPECTED_FILE = GOLDEN / "events.json", GOLDEN / "expected.json"
HOWTO = (
    "Generated; do not edit by hand. Regenerate only for an intended change of the commit "
    "recipe or fold semantics: .venv/bin/python tests/unit/test_golden.py --regenerate "
    "(then review the diff)."
)
CONFIG = FoldConfig(commit_every=5, message_window=4)

# --- JSON form of the log ------------------------------------------------------


def encode(envelope: Envelope, position: WalPosition | None) -> dict[str, Any]:
    return {
        "event_id": str(envelope.event_id),
        "tenant_id": envelope.tenant_id,
        "role_id": envelope.role_id,
        "occurred_at": envelope.occurred_at.isoformat(),
        "producer": envelope.producer,
        "expected_seq": envelope.expected_seq,
        "position": None if position is None else plain(position),
        "type": envelope.event_type,
        "payload": plain(envelope.payload),
    }


_TYPES = {t.__name__: t for t in PAYLOAD_TYPES}


def decode_payload(kind: str, data: dict[str, Any]) -> Payload:
    fields = dict(data)
    if "skills" in fields and fields["skills"] is not None:
        fields["skills"] = tuple(fields["skills"])
    if kind == "MessageAppended":
        fields["author"] = Author(fields["author"])
        fields["flags"] = frozenset(Flag(f) for f in fields["flags"])
        if fields["tool_call"] is not None:
            fields["tool_call"] = ToolCall(**fields["tool_call"])
    payload: Payload = _TYPES[kind](**fields)
    return payload


def decode(item: dict[str, Any]) -> Positioned:
    envelope = Envelope(
        event_id=uuid.UUID(item["event_id"]),
        tenant_id=TenantId(item["tenant_id"]),
        role_id=RoleId(item["role_id"]),
        occurred_at=datetime.fromisoformat(item["occurred_at"]),
        producer=item["producer"],
        payload=decode_payload(item["type"], item["payload"]),
        expected_seq=item["expected_seq"],
    )
    position = item["position"]
    return envelope, None if position is None else WalPosition(**position)


def summarize(outcome: Outcome) -> str:
    if isinstance(outcome, Accepted):
        kinds = "".join(f" {c.kind}" for c in outcome.commits)
        gone = outcome.superseded
        if gone is not None:
            kinds += " superseded=" + ",".join(f"{r.first}-{r.last}" for r in gone.superseded)
        return f"{outcome.role_id} accepted seq={outcome.seq}{kinds}"
    if isinstance(outcome, Rejected):
        return f"{outcome.role_id} rejected {outcome.reason}"
    assert isinstance(outcome, Duplicate)
    return f"{outcome.role_id} duplicate by {outcome.by}"


def expectations(events: list[Positioned], config: FoldConfig) -> dict[str, Any]:
    result = fold(events, config=config)
    commits = [c for o in result.outcomes if isinstance(o, Accepted) for c in o.commits]
    return {
        "_comment": HOWTO,
        "outcomes": [summarize(o) for o in result.outcomes],
        "commits": [_commit_row(c) for c in commits],
        "final": {role: _final_row(s) for role, s in sorted(result.states.items())},
    }


def _commit_row(commit: Commit) -> dict[str, Any]:
    return {
        "role_id": commit.role_id,
        "seq": commit.seq,
        "kind": commit.kind.value,
        "label": commit.label,
        "parent_id": commit.parent_id,
        "commit_id": commit.commit_id,
    }


def _final_row(state: RoleState) -> dict[str, Any]:
    return {
        "seq": state.seq,
        "lifecycle": state.lifecycle.value,
        "head_commit_id": state.head_commit_id,
        "digest": state_digest(state),
    }


def load_log() -> tuple[list[Positioned], FoldConfig]:
    document = json.loads(EVENTS_FILE.read_text(encoding="utf-8"))
    events = [decode(item) for item in document["events"]]
    return events, FoldConfig(**document["config"])


# --- the tests -------------------------------------------------------------------


def test_golden_log_folds_to_the_recorded_ids() -> None:
    expected = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    actual = expectations(*load_log())
    assert actual["outcomes"] == expected["outcomes"]
    assert actual["commits"] == expected["commits"]
    assert actual["final"] == expected["final"]


def test_fold_log_of_the_golden_wal_cuts_the_recorded_commits() -> None:
    """The whole-log fold that replay and the workers' semantics share gives the
    same commit ids when the golden log is a WAL (Avro records by partition)."""
    expected = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    events, config = load_log()
    items = [
        WalItem(pos, env.role_id.encode(), codec.encode(env))
        for env, pos in events
        if pos is not None
    ]
    result = fold_log(items_by_partition(items), config)
    commits = sorted(result.commits.values(), key=lambda c: (c.role_id, c.seq))
    want = sorted(expected["commits"], key=lambda c: (c["role_id"], c["seq"]))
    assert [_commit_row(c) for c in commits] == want
    final = {role: _final_row(state) for role, state in sorted(result.states.items())}
    assert final == expected["final"]


def test_golden_log_round_trips_through_its_json_form() -> None:
    document = json.loads(EVENTS_FILE.read_text(encoding="utf-8"))
    assert [encode(*decode(item)) for item in document["events"]] == document["events"]


def test_golden_log_covers_every_payload_type() -> None:
    types = {envelope.event_type for envelope, _ in load_log()[0]}
    assert types == set(_TYPES)


# --- regeneration (intentional only) -------------------------------------------


class Script:
    """Writes the golden log, folding as it goes to learn the commit ids it names."""

    def __init__(self) -> None:
        self.events: list[Positioned] = []
        self.folding = Folder(CONFIG)
        self.offsets: dict[int, int] = {}

    def add(self, role: str, payload: Payload, **kw: Any) -> None:
        n = len(self.events) + 1
        at = datetime(2025, 3, 1, 9, tzinfo=UTC) + timedelta(seconds=37 * n, microseconds=1234 * n)
        partition = {"r-tutor": 3, "r-tutor-fr": 7}.get(role, 1)
        offset = self.offsets[partition] = self.offsets.get(partition, -1) + 1
        envelope = Envelope(
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"rolebus:golden:{n}"),
            tenant_id=TenantId(kw.get("tenant", "t-acme")),
            role_id=RoleId(role),
            occurred_at=at,
            producer="golden/1",
            payload=payload,
            expected_seq=kw.get("expected_seq"),
        )  # fmt: skip
        self.push(envelope, WalPosition("rolebus.wal", partition, offset))

    def push(self, envelope: Envelope, position: WalPosition | None) -> None:
        self.events.append((envelope, position))
        self.folding.fold(envelope, position)

    def head(self, role: str) -> CommitId:
        head = self.folding.states[RoleId(role)].head_commit_id
        assert head is not None
        return head


def _msg(i: int, author: Author, content: str, **kw: Any) -> MessageAppended:
    return MessageAppended(message_id=f"msg-{i:03d}", author=author, content=content, **kw)


T, U, A = "r-tutor", Author.USER, Author.ASSISTANT


def build_log() -> list[Positioned]:
    s = Script()
    v1 = _first_session(s)
    _second_session(s, v1)
    _fork_and_retire(s, v1)
    return s.events


def _first_session(s: Script) -> CommitId:
    """Create, activate, messages with flags and a tool call, persona, manual commit."""
    t, u, a = T, U, A
    traits = {"tone": "warm", "language": "en", "level": "beginner"}
    s.add(t, RoleCreated("Ada", "You are Ada, a patient maths tutor.", traits, "llama3:8b",
                         ("calculator", "search")), expected_seq=0)  # fmt: skip
    s.add(t, RoleActivated(reason="launch"))
    s.add(t, _msg(1, u, "What is 7 x 8?", tokens_in=12))
    s.add(t, _msg(2, Author.TOOL, "56", tool_call=ToolCall("calculator", '{"expr": "7*8"}', "56")))
    s.add(t, _msg(3, a, "It is 58.", tokens_in=30, tokens_out=6, latency_ms=840,
                  model="llama3:8b", flags=frozenset({Flag.HALLUCINATION})))  # fmt: skip
    new_traits = {"level": "intermediate", "tone": "warm", "language": "en"}  # other key order
    s.add(t, PersonaUpdated("You are Ada. Check arithmetic with the calculator.", new_traits))
    s.add(t, CommitRequested("v1-checked"))
    return s.head(t)


def _second_session(s: Script, v1: CommitId) -> None:
    """Refusals, suspend/resume, an auto commit, a redelivery, a rollback."""
    t, u, a = T, U, A
    s.add(t, RoleActivated())  # refused: already active
    s.add(t, _msg(4, u, "And 9 x 9?"), expected_seq=3)  # refused: seq is 7
    s.add(t, _msg(5, u, "And 9 x 9?", tokens_in=9), expected_seq=7)
    s.add(t, RoleSuspended(reason="maintenance"))
    s.add(t, _msg(6, u, "Hello?"))  # refused: suspended
    s.add(t, RoleResumed())
    for i, flag in enumerate([Flag.REFUSAL, Flag.SAFETY, Flag.ERROR, Flag.TOOL_ERROR], start=7):
        s.add(
            t, _msg(i, a, f"answer {i}", tokens_out=i, latency_ms=100 * i, flags=frozenset({flag}))
        )
    s.add(t, _msg(11, u, "Thanks!"))
    s.push(*s.events[3])  # redelivery of msg-001
    s.add("r-ghost", _msg(12, u, "anyone?"))  # refused: unknown role
    s.add(t, RoleCreated("Ada again", "dup"))  # refused: exists
    s.add(t, RolledBack(v1, reason="hallucinated arithmetic"))
    s.add(t, _msg(13, u, "Let's start over: 6 x 7?"))


def _fork_and_retire(s: Script, v1: CommitId) -> None:
    """A fork and its refusals, then archive and delete the source role."""
    t, u = T, U
    s.add("r-tutor-fr", RoleForked(RoleId(t), v1, "Ada (français)"))
    s.add("r-tutor-fr", PersonaUpdated("Tu es Ada, une tutrice patiente.",
                                       traits={"tone": "warm", "language": "fr"}))  # fmt: skip
    s.add("r-tutor-fr", RoleActivated())
    s.add("r-tutor-fr", _msg(14, u, "Combien font 6 x 7 ?"))
    s.add("r-other", RoleForked(RoleId(t), v1, "thief"), tenant="t-other")  # refused
    s.add(t, RolledBack(CommitId("0" * 64)))  # refused: unknown commit
    s.add("r-tutor-fr", RolledBack(v1))  # refused: not one of its commits (unknown_commit)
    s.add(t, RoleArchived())
    s.add(t, PersonaUpdated("too late"))  # refused: archived
    s.add(t, _msg(15, u, "still there?"))  # refused: not active
    s.add(t, RoleDeleted(reason="gdpr request"))
    s.add(t, RolledBack(v1))  # refused: deleted
    s.add(t, RoleResumed())  # refused: deleted is terminal
    s.add("r-tutor-fr", CommitRequested("fr-launch"))


def regenerate() -> None:
    events = build_log()
    document = {"_comment": HOWTO, "config": plain(CONFIG),
                "events": [encode(e, p) for e, p in events]}  # fmt: skip
    for path, data in ((EVENTS_FILE, document), (EXPECTED_FILE, expectations(events, CONFIG))):
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()
