"""Two workers in one group, one killed with SIGKILL mid-stream while events keep
flowing: the outputs must equal a pure fold of the WAL and a fresh single
worker's run, with no event lost and none applied twice; then every worker is
restarted and must continue from the changelogs, not from scratch."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import Envelope
from testkit import harness
from testkit.harness import OutputReader, Summary, WorkerProcess
from testkit.workload import Workload, WorkloadSpec

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(400)]
log = logging.getLogger(__name__)
WORKER_ARGS = ("--session-timeout", "6", "--fork-wait", "60")


@dataclass
class Cluster:
    settings: Settings
    ends: Endpoints
    tmp: Path
    workload: Workload
    reader: OutputReader
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, app_id: str, name: str) -> WorkerProcess:
        path = self.tmp / f"{name}.log"
        self.workers.append(WorkerProcess(self.settings, self.ends, app_id, path, WORKER_ARGS))
        return self.workers[-1]

    async def send(self, envelopes: Sequence[Envelope], pause_s: float = 0.0) -> None:
        async with RoleClient(self.settings, "tenant-w", endpoints=self.ends) as client:
            for i in range(0, len(envelopes), 100):
                await client.send_many(envelopes[i : i + 100])
                await asyncio.sleep(pause_s)

    async def settle(self, app_id: str, timeout_s: float = 150) -> Summary:
        """Wait until ``app_id`` published an output for every WAL record; its summary."""
        ref = await harness.reference(self.settings, self.ends)
        expected = harness.reference_summary(ref)
        keys = expected.terminal_keys()
        try:
            await harness.wait_for_keys(self.reader, keys, timeout_s, app_id=app_id)
        except TimeoutError as exc:  # say what the workers were doing (a CI run has no shell)
            tails = "\n".join(
                f"--- {w.log_path.name} ({w.app_id}):\n{w.log_text()[-2500:]}"
                for w in self.workers if w.app_id == app_id
            )  # fmt: skip
            raise TimeoutError(f"{exc}\n{tails}") from None
        got = harness.summarize(o.record for o in self.reader.seen if o.app_id == app_id)
        assert_same(got, expected)
        harness.check_reference_states(got, ref)
        return got


def assert_same(got: Summary, expected: Summary) -> None:
    assert set(got.changes) == set(expected.changes), "accepted events differ"
    assert got.changes == expected.changes
    assert got.commits == expected.commits
    assert got.rejections == expected.rejections
    assert got.final() == expected.final()
    assert got.commit_ids() == expected.commit_ids()


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path) -> AsyncIterator[Cluster]:
    ends = resolve(settings)
    mine = replace(
        settings, wal_partitions=8, commit_every=5, message_window=4, data_dir=tmp_path / "data"
    )
    await topics.ensure(mine, ends)
    workload = Workload(WorkloadSpec(roles=40, seed=99), FoldConfig.from_settings(mine))
    reader = await OutputReader(mine, ends).start()
    try:
        yield Cluster(mine, ends, tmp_path, workload, reader)
    finally:
        await reader.stop()


async def test_kill_one_of_two_workers_mid_stream(
    cluster: Cluster, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    group = f"rb-failover-{uuid.uuid4().hex[:8]}"
    await cluster.send(cluster.workload.take(1200))
    a, b = cluster.worker(group, "a").start(), cluster.worker(group, "b").start()
    workers = [a, b]
    try:
        await a.wait_for_log("ready:", 60)
        await b.wait_for_log("ready:", 60)
        flowing = asyncio.create_task(cluster.send(cluster.workload.take(1500), pause_s=0.2))
        await asyncio.sleep(1.5)
        assert not flowing.done(), "the kill must happen while events flow"
        a.kill()
        killed_at = time.monotonic()
        await flowing
        await cluster.send(cluster.workload.take(600))
        await cluster.send(cluster.workload.commit_all())
        two = await cluster.settle(group)
        log.info("survivor caught up %.1fs after the kill", time.monotonic() - killed_at)
        assert two.duplicates >= 0  # at-least-once: duplicates allowed, identical
        forks = [c for c in two.changes.values() if c.event_type == "RoleForked"]
        assert forks, "the workload must exercise forks across partitions"

        fresh = f"rb-single-{uuid.uuid4().hex[:8]}"
        single = cluster.worker(fresh, "single").start()
        workers.append(single)
        one = await cluster.settle(fresh)
        assert_same(one, two)
        single.stop()

        await restart_all(cluster, group, b, workers)
        # The determinism proof on a WAL written by workers killed and restarted.
        env = harness.worker_env(cluster.settings, cluster.ends, group)
        proof = await asyncio.to_thread(
            run_cli, "replay", "fold", "--verify", "--json", env=env, timeout=300
        )
        assert proof.returncode == 0, proof.stdout[-2000:] + proof.stderr[-2000:]
    finally:
        for worker in workers:
            worker.stop(10)


async def restart_all(
    cluster: Cluster, group: str, b: WorkerProcess, workers: list[WorkerProcess]
) -> None:
    """Stop the survivor, start two new processes of the same group: they recover
    the tables from the changelogs and continue; old records are not folded again."""
    assert b.stop() == 0, b.log_text()[-3000:]
    mark = len(cluster.reader.seen) + len(await cluster.reader.poll())
    c, d = cluster.worker(group, "c").start(), cluster.worker(group, "d").start()
    workers += [c, d]
    ready = [await w.wait_for_log("ready:", 90) for w in (c, d)]
    old = {o.record.idempotency_key for o in cluster.reader.seen[:mark]}
    more = cluster.workload.take(300) + cluster.workload.commit_all("after-restart")
    await cluster.send(more)
    await cluster.settle(group)
    again = [o for o in cluster.reader.seen[mark:] if o.app_id == group]
    folded = [o.record for o in again if not isinstance(o.record, records.CommitRecord)]
    assert folded, "the restarted workers folded nothing"
    refolded = [r for r in folded if r.idempotency_key in old]
    assert refolded == [], f"restarted workers folded {len(refolded)} old records again"
    assert max(ready) < 60, ready


async def test_a_worker_joins_and_another_leaves_under_load(cluster: Cluster) -> None:
    """Rebalance under load: a third worker joins mid-stream, then one of the
    first two leaves with SIGTERM; the outputs equal the pure fold and a fresh
    single worker's, and the worker that left stopped cleanly."""
    group = f"rb-join-{uuid.uuid4().hex[:8]}"
    await cluster.send(cluster.workload.take(800))
    a, b = cluster.worker(group, "a").start(), cluster.worker(group, "b").start()
    try:
        await a.wait_for_log("ready:", 60)
        await b.wait_for_log("ready:", 60)
        flowing = asyncio.create_task(cluster.send(cluster.workload.take(2000), pause_s=0.5))
        await asyncio.sleep(1.0)
        c = cluster.worker(group, "c").start()
        await c.wait_for_log("ready:", 60)
        assert not flowing.done(), "the join must happen while events flow"
        assert a.stop() == 0, a.log_text()[-3000:]
        await flowing
        await cluster.send(cluster.workload.commit_all())
        three = await cluster.settle(group)
        assert "stopping: the last batch is stored and committed" in a.log_text()
        fresh = f"rb-single-{uuid.uuid4().hex[:8]}"
        cluster.worker(fresh, "single").start()
        assert_same(await cluster.settle(fresh), three)
    finally:
        for worker in cluster.workers:
            worker.stop(10)
