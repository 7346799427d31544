"""One ``rolebus worker`` on the real stack: outputs equal the in-process fold,
refusals and undecodable records are published, trace context carries over,
and a restarted worker recovers its tables from the changelogs."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from opentelemetry import trace

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.streams.core.state import FoldConfig, state_digest
from rolebus.streams.runtime.spans import parse_traceparent
from rolebus.wal import codec, records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import CommitId, Envelope, RoleCreated, RoleForked, RoleId, RolledBack
from testkit import harness
from testkit.harness import OutputReader, WorkerProcess
from testkit.workload import Workload, WorkloadSpec

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints
    tmp: Path

    def worker(self, app_id: str, name: str, *args: str) -> WorkerProcess:
        return WorkerProcess(self.settings, self.ends, app_id, self.tmp / f"{name}.log", args)

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        async with RoleClient(self.settings, "tenant-w", endpoints=self.ends) as client:
            for i in range(0, len(envelopes), 500):
                await client.send_many(envelopes[i : i + 500])

    async def send_raw(self, key: bytes | None, value: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.ends.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.topic_name(self.settings, "wal"), value, key=key)
        finally:
            await producer.stop()


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    ends = resolve(settings)  # before data_dir moves: the stack's ports live there
    mine = replace(settings, commit_every=5, message_window=4, data_dir=tmp_path / "data")
    await topics.ensure(mine, ends)
    yield Rig(mine, ends, tmp_path)


def partition_of(role_id: str, partitions: int) -> int:
    """The WAL partition of a role: the producer's default partitioner on the key."""
    return (murmur2(role_id.encode()) & 0x7FFFFFFF) % partitions


def app_id() -> str:
    return f"rb-test-{uuid.uuid4().hex[:8]}"


async def test_worker_outputs_equal_the_reference_fold(rig: Rig) -> None:
    workload = Workload(WorkloadSpec(roles=12, seed=21), FoldConfig.from_settings(rig.settings))
    await rig.send(workload.take(700))
    await rig.send_raw(b"w-00001", b"\x00 definitely not avro")
    misplaced = workload.take(1)[0]
    await rig.send_raw(b"someone-else", codec.encode(misplaced))
    worker = rig.worker(app_id(), "w").start()
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        ref = await harness.reference(rig.settings, rig.ends)
        expected = harness.reference_summary(ref)
        await harness.wait_for_keys(reader, expected.terminal_keys(), 120)
        got = harness.summarize(o.record for o in reader.seen)
        assert got.changes == expected.changes
        assert got.commits == expected.commits
        assert got.rejections == expected.rejections
        harness.check_reference_states(got, ref)
        reasons = {r.reason for r in got.rejections.values()}
        assert {
            records.UNDECODABLE,
            records.KEY_MISMATCH,
            "unknown_role",
            "seq_mismatch",
        } <= reasons
        garbage = next(r for r in got.rejections.values() if r.reason == records.UNDECODABLE)
        assert garbage.original == b"\x00 definitely not avro"
    finally:
        worker.stop()
        await reader.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()[-2000:]
    assert "stopping: the last batch is stored and committed" in worker.log_text()


async def test_outputs_carry_the_batch_span_context(rig: Rig) -> None:
    """The batch span links the producer's span (unit-tested with an exporter);
    here: every output record carries a W3C traceparent and the app header."""
    worker = rig.worker(app_id(), "w").start()
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        async with RoleClient(rig.settings, "tenant-w", endpoints=rig.ends) as client:
            with trace.get_tracer("test").start_as_current_span("caller"):
                sent = await client.create_role("Traced", "p", role_id="traced-1")
        await harness.wait_for_keys(reader, {str(sent.event_id)}, 90)
        (out,) = [o for o in reader.seen if isinstance(o.record, records.ChangeRecord)]
        headers = dict(out.headers)
        assert parse_traceparent(headers["traceparent"]) is not None
        assert headers[records.APP_HEADER].decode() == worker.app_id
    finally:
        worker.stop()
        await reader.stop()


async def test_restart_recovers_tables_and_keeps_commits_retrievable(rig: Rig) -> None:
    workload = Workload(WorkloadSpec(roles=8, seed=5), FoldConfig.from_settings(rig.settings))
    await rig.send(workload.take(400))
    group = app_id()
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        await restart_scenario(rig, workload, group, reader)
    finally:
        await reader.stop()


async def restart_scenario(rig: Rig, workload: Workload, group: str, reader: OutputReader) -> None:
    first = rig.worker(group, "first").start()
    try:
        ref = await harness.reference(rig.settings, rig.ends)
        await harness.wait_for_keys(reader, harness.reference_summary(ref).terminal_keys(), 120)
    finally:
        assert first.stop() == 0, first.log_text()[-2000:]
    before = len(await reader.poll())  # anything flushed while stopping
    seen_before = len(reader.seen)
    # a commit cut before the restart, of a role that is still alive
    role, state = next((r, s) for r, s in workload.states.items() if s.lifecycle.value == "active")
    target = workload.commits[state.head_commit_id]  # type: ignore[index]

    second = rig.worker(group, "second").start()
    try:
        ready = await second.wait_for_log("ready:", 90)
        recovered = re.search(r": (\d+) roles, (\d+) commits indexed", second.log_text())
        assert recovered is not None and int(recovered[1]) >= 8 and int(recovered[2]) > 0
        rollback = workload._envelope(role, RolledBack(target.commit_id, "after restart"))
        fresh = workload._envelope(RoleId("after-restart"), RoleCreated("new", "p"))
        await rig.send([rollback, fresh])
        await harness.wait_for_keys(reader, {str(rollback.event_id), str(fresh.event_id)}, 90)
    finally:
        assert second.stop() == 0, second.log_text()[-2000:]
    after = [o.record for o in reader.seen[seen_before:]]
    new_events = {str(rollback.event_id), str(fresh.event_id)}
    folded = [r for r in after if isinstance(r, records.ChangeRecord | records.RejectionRecord)]
    refolded = [r for r in folded if r.event_id not in new_events]
    assert refolded == [], f"restart folded {len(refolded)} old records again ({before=})"
    (change,) = [r for r in folded if r.event_id == str(rollback.event_id)]
    assert isinstance(change, records.ChangeRecord) and change.seq == state.seq + 1
    assert change.superseded is not None and change.superseded.after_seq == target.seq
    found = [
        o.record for o in reader.seen
        if isinstance(o.record, records.CommitRecord) and o.record.commit_id == target.commit_id
    ]  # fmt: skip
    assert found and all(state_digest(f.snapshot) == target.state_digest for f in found)
    assert ready < 60


async def test_a_fork_waits_for_its_source_then_folds(rig: Rig) -> None:
    """A fork whose source commit is not cut yet holds its partition back (others
    go on) until the source is published, or until --fork-wait runs out."""
    wl = Workload(WorkloadSpec(roles=2, seed=11), FoldConfig.from_settings(rig.settings))
    created = wl.take(4)
    source = next(iter(wl.commits.values()))
    home = partition_of(source.role_id, rig.settings.wal_partitions)
    fork_id, ghost_id = [
        RoleId(name) for name in (f"fork-{i}" for i in range(1000))
        if partition_of(name, rig.settings.wal_partitions) != home
    ][:2]  # fmt: skip
    fork = wl._envelope(fork_id, RoleForked(source.role_id, source.commit_id, "f"))
    ghost = wl._envelope(ghost_id, RoleForked(source.role_id, CommitId("0" * 64), "g"))
    worker = rig.worker(app_id(), "w", "--fork-wait", "4").start()
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        await rig.send([fork, ghost])
        await worker.wait_for_log("waits for source commit", 60)
        await rig.send(created)  # the source commit is cut now
        keys = {str(e.event_id) for e in [*created, fork]}
        await harness.wait_for_keys(reader, keys, 60)
        await harness.wait_for_keys(reader, set(), 1)
        got = harness.summarize(o.record for o in reader.seen)
        assert got.changes[str(fork.event_id)].event_type == "RoleForked"
        waited = time.monotonic()
        while not any(r.event_id == str(ghost.event_id) for r in got.rejections.values()):
            assert time.monotonic() - waited < 30, worker.log_text()[-3000:]
            await reader.poll()
            got = harness.summarize(o.record for o in reader.seen)
        refused = next(r for r in got.rejections.values() if r.event_id == str(ghost.event_id))
        assert refused.reason == "unknown_commit"
    finally:
        worker.stop()
        await reader.stop()
