"""The pure parts of `replay projections`: what a rebuild reads up to its
targets, its tenant/role scope, set names, and when a report is good."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from rolebus.errors import ConfigError
from rolebus.projectors.bluegreen import RebuildReport
from rolebus.projectors.compare import Parity, TableDiff
from rolebus.projectors.plan import Fetched, decode_batch
from rolebus.projectors.rebuild import Scope, scoped, take
from rolebus.projectors.swap import set_names
from rolebus.streams.core.log import Folder, WalItem, admit
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import codec, records
from rolebus.wal.events import (
    Author,
    Envelope,
    MessageAppended,
    RoleActivated,
    RoleCreated,
    RoleId,
    TenantId,
    WalPosition,
)
from rolebus.wal.records import ChangeRecord

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("x.changes", 0, offset, 0, 0, None, b"v", None, 0, 1, ())


def test_take_reads_from_the_position_up_to_the_target_only() -> None:
    tp = TopicPartition("x.changes", 0)
    batch = {tp: [record(o) for o in range(3, 12)]}
    fetched, spans = take(batch, {("x.changes", 0): 5}, {("x.changes", 0): 9})
    assert [f.offset for f in fetched] == [5, 6, 7, 8]
    assert spans == {("x.changes", 0): (5, 9)}
    assert take(batch, {("x.changes", 0): 9}, {("x.changes", 0): 9}) == ([], {})


def test_take_ignores_a_partition_without_a_target() -> None:
    tp = TopicPartition("x.changes", 0)
    assert take({tp: [record(0)]}, {("x.changes", 0): 0}, {}) == ([], {})


def fold(*sends: tuple[str, str, object]) -> list[Fetched]:
    folder = Folder(FoldConfig(commit_every=5, message_window=4))
    out: list[Fetched] = []
    for n, (tenant, role, payload) in enumerate(sends, 1):
        env = Envelope(
            uuid.UUID(int=n), TenantId(tenant), RoleId(role), BASE + timedelta(seconds=n),
            "test", payload,  # type: ignore[arg-type]
        )  # fmt: skip
        item = WalItem(WalPosition("x.wal", 0, n), role.encode(), codec.encode(env))
        for rec in folder.apply(item, admit(item)).records:
            kind = "changes" if isinstance(rec, ChangeRecord) else "commits"
            out.append(Fetched(f"x.{kind}", 0, len(out), 0, records.encode(rec)))
    return out


def test_a_scope_keeps_the_inputs_of_its_tenant_and_role() -> None:
    sends = [
        (t, r, p)
        for t, r in (("t-1", "a"), ("t-1", "b"), ("t-2", "c"))
        for p in (RoleCreated(r, "p"), RoleActivated(), MessageAppended("m", Author.USER, "hi"))
    ]
    decoded = decode_batch(fold(*sends))
    whole = scoped(decoded, Scope())
    assert whole is decoded and len(whole.changes) == 9
    tenant = scoped(decoded, Scope(tenant="t-1"))
    assert {(c.record.tenant_id, c.record.role_id) for c in tenant.changes} == {
        ("t-1", "a"), ("t-1", "b"),
    }  # fmt: skip
    role = scoped(decoded, Scope(role="a"))
    assert {c.record.role_id for c in role.changes} == {"a"} and len(role.changes) == 3
    assert scoped(decoded, Scope("t-2", "a")).changes == []
    both = scoped(decoded, Scope("t-2", "c"))
    assert len(both.changes) == 3 and all(c.record.tenant_id == "t-2" for c in both.commits)
    assert Scope().keeps(None, None) and not Scope(tenant="t").keeps(None, None)


def test_set_names_carry_the_time_and_fit_postgres() -> None:
    at = datetime(2026, 11, 29, 18, 5, 7, tzinfo=UTC)
    assert set_names("rolebus", at) == ("rolebus_r20261129180507", "rolebus_o20261129180507")
    with pytest.raises(ConfigError, match="longer than 63"):
        set_names("s" * 50, at)


def diff(table: str, only_live: int = 0) -> TableDiff:
    return TableDiff(table, 10, 10 - only_live, only_live, 0, ())


def test_a_report_fails_on_a_difference_or_a_low_parity_of_the_same_model() -> None:
    report = RebuildReport("s_r1", "s", models=("m", "m"), diffs=[diff("roles")])
    assert report.ok and "verify: identical" in report.summary()
    report.diffs = [diff("roles"), diff("messages", 2)]
    assert not report.ok and "differences in messages" in report.summary()
    report.diffs = [diff("roles")]
    report.parity = Parity(20, 10, 0.5, ())
    assert not report.ok
    report.models = ("m", "other")  # a new model: parity is reported, not required
    assert report.ok and report.to_json()["recall_parity"]["mean_overlap"] == 0.5
