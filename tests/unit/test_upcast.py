"""Schema evolution during replay: events written with an older schema decode
under the current one (Avro resolution) and upcasters convert a field whose
meaning changed, in ``codec.decode``, so the fold of a log mixing versions
equals the fold of the same events written today.

The shipped versions v1 and v2 changed no field's meaning, so the upcaster is
exercised with a real older schema kept as a test fixture (never published):
``fixtures/legacy_v0_envelope.avsc``, a pre-v1 envelope without
``expected_seq`` whose ``MessageAppended.tokens_in`` counted prompt AND
completion tokens (v1 onward: prompt tokens only)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from rolebus.errors import DecodeError
from rolebus.streams.core.log import WalItem, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig, state_digest
from rolebus.wal import codec, schema, upcast
from rolebus.wal.events import (
    Author,
    CommitRequested,
    Envelope,
    MessageAppended,
    RoleActivated,
    RoleCreated,
    RoleId,
    TenantId,
    ToolCall,
    WalPosition,
)
from rolebus.wal.upcast import Upcasters, payload_step

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0_envelope.avsc"
T0 = datetime(2025, 6, 1, tzinfo=UTC)


def _prompt_only(fields: dict[str, Any]) -> dict[str, Any]:
    """v0 -> v1: tokens_in held prompt + completion; now it holds the prompt only."""
    return {**fields, "tokens_in": fields["tokens_in"] - fields["tokens_out"]}


V0_STEP = payload_step(schema.NAMESPACE + ".MessageAppended", _prompt_only)


@pytest.fixture
def legacy(monkeypatch: pytest.MonkeyPatch) -> Iterator[schema.SchemaVersion]:
    """The codec as a rolebus that kept v0 would ship it: v0 in the registry, and
    its upcaster registered."""
    v0 = schema.build_version(0, LEGACY.read_text(encoding="utf-8"), str(LEGACY))
    known = {**schema.registry(), v0.fingerprint: v0}
    monkeypatch.setattr(schema, "registry", lambda: known)
    monkeypatch.setattr(upcast, "SHIPPED", Upcasters({0: (V0_STEP,)}))
    yield v0


def envelope(n: int, payload: Any, expected_seq: int | None = None) -> Envelope:
    return Envelope(
        event_id=uuid.UUID(int=n + 1), tenant_id=TenantId("acme"), role_id=RoleId("r-old"),
        occurred_at=T0 + timedelta(seconds=n), producer="old/0", payload=payload,
        expected_seq=expected_seq,
    )  # fmt: skip


def written_with(version: schema.SchemaVersion, env: Envelope) -> bytes:
    """Bytes exactly as a producer on ``version`` wrote them: fastavro, that .avsc."""
    datum = codec.to_datum(env)
    name, fields = datum["payload"]
    known = {f["name"] for f in _record(version, name)["fields"]}
    datum["payload"] = (name, {k: v for k, v in fields.items() if k in known})
    if "expected_seq" not in {f["name"] for f in version.parsed["fields"]}:
        del datum["expected_seq"]
    out = io.BytesIO()
    out.write(version.header)
    schemaless_writer(out, version.parsed, datum)
    return out.getvalue()


def _record(version: schema.SchemaVersion, name: str) -> Mapping[str, Any]:
    (payload,) = [f for f in version.parsed["fields"] if f["name"] == "payload"]
    (found,) = [r for r in payload["type"] if r["name"] == name]
    return dict(found)


def message(n: int, tokens_in: int, tokens_out: int, **more: Any) -> MessageAppended:
    return MessageAppended(f"m-{n}", Author.ASSISTANT, f"answer {n}", tokens_in, tokens_out, **more)


def test_the_shipped_versions_need_no_upcaster() -> None:
    # v1 -> v2 changed no field's meaning: a v1 event decodes to what it said.
    assert upcast.SHIPPED.chain(1, schema.current().version) == ()
    env = envelope(1, message(1, 30, 12), expected_seq=4)
    assert codec.decode(written_with(schema.by_version(1), env)) == env


def test_chain_runs_each_older_version_in_order() -> None:
    seen: list[str] = []

    def step(tag: str) -> upcast.Upcast:
        return lambda d: (seen.append(tag), d)[1]

    table = Upcasters({0: (step("0a"), step("0b")), 1: (step("1"),), 2: (step("2"),)})
    table.apply(0, 2, {})
    assert seen == ["0a", "0b", "1"]
    assert [len(table.chain(v, 2)) for v in (0, 1, 2)] == [3, 1, 0]


def test_v0_bytes_decode_with_the_upcast_value(legacy: schema.SchemaVersion) -> None:
    assert legacy.fingerprint not in {v.fingerprint for v in schema.versions()}
    data = written_with(legacy, envelope(1, message(1, 42, 12)))
    assert data[:10] == legacy.header  # really written with the old writer schema
    decoded = codec.decode(data)
    assert isinstance(decoded.payload, MessageAppended)
    assert (decoded.payload.tokens_in, decoded.payload.tokens_out) == (30, 12)
    assert decoded.expected_seq is None  # a field v0 did not have: its default
    # Current-version bytes are never touched by the old version's upcaster.
    now = envelope(2, message(2, 42, 12))
    assert codec.decode(codec.encode(now)) == now


def test_a_failing_upcaster_is_a_decode_error(
    legacy: schema.SchemaVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(datum: upcast.Datum) -> upcast.Datum:
        raise KeyError("tokens_total")

    monkeypatch.setattr(upcast, "SHIPPED", Upcasters({0: (broken,)}))
    with pytest.raises(DecodeError, match=r"writer schema v0 .*KeyError"):
        codec.decode(written_with(legacy, envelope(1, message(1, 42, 12))))


def test_replaying_a_log_of_mixed_versions(legacy: schema.SchemaVersion) -> None:
    """v0, v1 and v2 events of one role fold to the state and commits of the
    same events written today with the converted values."""
    v1, v2 = schema.by_version(1), schema.current()
    created = RoleCreated("Old", "You help.", {"tone": "calm"})
    log = [  # (writer, event as written, event as meant today)
        (legacy, envelope(0, created), envelope(0, created)),
        (legacy, envelope(1, RoleActivated()), envelope(1, RoleActivated())),
        (legacy, envelope(2, message(2, 100, 40)), envelope(2, message(2, 60, 40))),
        (v1, envelope(3, message(3, 50, 5), 3), envelope(3, message(3, 50, 5), 3)),
        (legacy, envelope(4, message(4, 7, 7)), envelope(4, message(4, 0, 7))),
        (v2, envelope(5, message(5, 9, 1, tool_call=ToolCall("t", "{}"))), None),
        (v1, envelope(6, CommitRequested("mixed")), None),
    ]
    config = FoldConfig(commit_every=2, message_window=3)
    mixed = fold(
        [written_with(w, e) if w is not v2 else codec.encode(e) for w, e, _ in log], config
    )
    today = fold([codec.encode(meant or e) for _, e, meant in log], config)
    state = mixed.states[RoleId("r-old")]
    assert state.seq == 7 and state.counters.tokens_in == 60 + 50 + 0 + 9
    assert state.counters.tokens_out == 40 + 5 + 7 + 1 and state.counters.tool_calls == 1
    assert state_digest(state) == state_digest(today.states[RoleId("r-old")])
    assert sorted(mixed.commits) == sorted(today.commits) and len(mixed.commits) >= 4
    assert [c.seq for c in sorted(mixed.commits.values(), key=lambda c: c.seq)][-1] == 7


def fold(values: list[bytes], config: FoldConfig) -> Any:
    items = [
        WalItem(WalPosition("old.wal", 0, offset), b"r-old", value)
        for offset, value in enumerate(values)
    ]
    return fold_log(items_by_partition(items), config)


def test_payload_step_converts_one_record_type_without_mutation() -> None:
    fields = {"tokens_in": 10, "tokens_out": 4}
    datum = {"payload": (schema.NAMESPACE + ".MessageAppended", fields)}
    assert V0_STEP(datum)["payload"][1]["tokens_in"] == 6
    assert fields["tokens_in"] == 10  # the input is not changed in place
    other = {"payload": (schema.NAMESPACE + ".CommitRequested", {"label": "x"})}
    assert V0_STEP(other) is other
