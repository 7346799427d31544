"""Replay on the real stack: one worker folds a workload, then ``replay fold
--verify`` proves the outputs, ``asof`` equals the pure fold of the log's
prefix, and a forged commit record is reported with its role and seq."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.replay.asof import asof
from rolebus.replay.core import WalItem, fold_log, items_by_partition, state_digest
from rolebus.replay.points import AtCommit, AtOffset, AtTime, Point
from rolebus.replay.scan import partition_of
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import codec, records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.records import CommitRecord
from testkit import harness
from testkit.harness import OutputReader, WorkerProcess
from testkit.workload import Workload, WorkloadSpec

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(400)]
RunCli = Callable[..., CompletedProcess[str]]


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints
    items: list[WalItem]
    commits: list[CommitRecord]
    """Every commit record the worker wrote."""
    env: dict[str, str]
    workload: Workload
    tmp: Path

    @property
    def config(self) -> FoldConfig:
        return FoldConfig.from_settings(self.settings)

    def partitions(self) -> dict[int, list[WalItem]]:
        return items_by_partition(self.items)

    def prefix_state(self, role: str, last_offset: int) -> tuple[int, str | None, str]:
        """The pure fold of the WAL up to ``last_offset`` of the role's partition."""
        parts = self.partitions()
        p = partition_of(role, self.settings.wal_partitions)
        parts[p] = [it for it in parts[p] if it.position.offset <= last_offset]
        state = fold_log(parts, self.config).states[role]  # type: ignore[index]
        return state.seq, state.head_commit_id, state_digest(state)


@pytest.fixture(scope="module")
async def rig(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("replay")
    base = replace(stack, topic_prefix=f"t{uuid.uuid4().hex[:10]}", wal_partitions=4)
    ends = resolve(base)  # before data_dir moves: the stack's ports live there
    settings = replace(base, commit_every=5, message_window=4, data_dir=tmp / "data")
    await topics.ensure(settings, ends)
    workload = Workload(WorkloadSpec(roles=10, seed=31), FoldConfig.from_settings(settings))
    async with RoleClient(settings, "tenant-w", endpoints=ends) as client:
        envelopes = workload.take(700)
        for i in range(0, len(envelopes), 350):
            await client.send_many(envelopes[i : i + 350])
    app_id = f"rb-replay-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(settings, ends, app_id, tmp / "worker.log").start()
    reader = await OutputReader(settings, ends).start()
    try:
        ref = await harness.reference(settings, ends)
        await harness.wait_for_keys(reader, harness.reference_summary(ref).terminal_keys(), 180)
    finally:
        assert worker.stop() == 0, worker.log_text()[-2000:]
        await reader.poll()
        await reader.stop()
    items = await harness.read_wal(settings, ends)
    commits = [o.record for o in reader.seen if isinstance(o.record, CommitRecord)]
    env = harness.worker_env(settings, ends, app_id)
    yield Rig(settings, ends, items, commits, env, workload, tmp)


def cli(rig: Rig, run_cli: RunCli, *args: str) -> CompletedProcess[str]:
    return run_cli(*args, env=rig.env, timeout=180)


def as_json(done: CompletedProcess[str]) -> Any:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def last(done: CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


# --- replay fold ---------------------------------------------------------------------


async def test_replay_fold_verify_passes(rig: Rig, run_cli: RunCli) -> None:
    done = cli(rig, run_cli, "replay", "fold", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    summary = as_json(done)
    assert summary["ok"] and summary["verified"] and summary["divergences"] == []
    assert summary["events"] == len(rig.items)
    assert summary["commits"] == len({c.commit_id for c in rig.commits})
    assert "verified:" in last(done) and "identical" in last(done)


async def test_replay_fold_one_role_with_its_fork_sources(rig: Rig, run_cli: RunCli) -> None:
    forks = sorted({c.role_id for c in rig.commits if c.kind == "fork"})
    role = forks[0] if forks else rig.commits[0].role_id
    done = cli(rig, run_cli, "replay", "fold", "--verify", "--role", role, "--json")
    assert done.returncode == 0, done.stderr
    summary = as_json(done)
    assert summary["ok"] and summary["folded"] < summary["events"]
    assert summary["roles_compared"] >= (2 if forks else 1)
    ghost = cli(rig, run_cli, "replay", "fold", "--role", "no-such-role")
    assert ghost.returncode == 2 and "no record of this role" in ghost.stderr


# --- asof ------------------------------------------------------------------------------


def busiest(rig: Rig) -> str:
    counts: dict[str, int] = {}
    for c in rig.commits:
        counts[c.role_id] = counts.get(c.role_id, 0) + 1
    return max(sorted(counts), key=lambda r: counts[r])


def role_items(rig: Rig, role: str) -> list[WalItem]:
    return [it for it in rig.items if it.key == role.encode()]


async def check(rig: Rig, role: str, point: Point, last_offset: int) -> Mapping[str, Any]:
    got = await asof(rig.settings, rig.ends, role, point)
    want = rig.prefix_state(role, last_offset)
    assert (got.state.seq, got.state.head_commit_id, state_digest(got.state)) == want
    return got.json()


async def test_asof_offset_equals_the_fold_of_the_prefix(rig: Rig) -> None:
    role = busiest(rig)
    mine = role_items(rig, role)
    used_tails = []
    for item in mine[5 :: max(1, len(mine) // 12)]:
        pos = item.position
        found = await check(rig, role, AtOffset(pos.partition, pos.offset), pos.offset)
        used_tails.append(found["computed"]["tail_events"])
    assert max(used_tails) > 0, "every point hit a commit exactly: no tail was folded"
    assert max(used_tails) < rig.settings.commit_every * 3, "folded from far back"


async def test_asof_commit_and_time(rig: Rig) -> None:
    role = busiest(rig)
    theirs = sorted({c.commit_id: c for c in rig.commits if c.role_id == role}.values(),
                    key=lambda c: c.seq)  # fmt: skip
    for rec in theirs[:: max(1, len(theirs) // 5)]:
        assert rec.position is not None
        found = await check(rig, role, AtCommit(rec.commit_id), rec.position.offset)
        assert found["computed"]["snapshot_commit_id"] == rec.commit_id
        assert found["computed"]["tail_events"] == 0
    for item in role_items(rig, role)[3::17]:
        env = codec.decode(item.value)
        await check(rig, role, AtTime(env.occurred_at), item.position.offset)


async def test_asof_cli_and_its_errors(rig: Rig, run_cli: RunCli) -> None:
    role = busiest(rig)
    item = role_items(rig, role)[-3]
    where = f"{item.position.partition}:{item.position.offset}"
    done = cli(rig, run_cli, "asof", role, "--offset", where, "--json")
    assert done.returncode == 0, done.stderr
    data = as_json(done)
    assert (data["seq"], data["head_commit_id"], data["state_digest"]) == rig.prefix_state(
        role, item.position.offset
    )
    assert data["state"]["role_id"] == role and data["computed"]["snapshot_commit_id"]
    human = cli(rig, run_cli, "asof", role, "--commit", data["computed"]["snapshot_commit_id"])
    assert human.returncode == 0 and role in human.stdout, human.stderr
    unknown = cli(rig, run_cli, "asof", "no-such-role", "--time", "2030-01-01T00:00:00Z")
    assert unknown.returncode != 0 and "unknown" in unknown.stderr
    other = next(c.commit_id for c in rig.commits if c.role_id != role)
    foreign = cli(rig, run_cli, "asof", role, "--commit", other)
    assert foreign.returncode != 0 and "not a commit of role" in foreign.stderr
    early = cli(rig, run_cli, "asof", role, "--time", "2000-01-01T00:00:00Z")
    assert early.returncode != 0 and "did not exist yet" in early.stderr
    wrong = (item.position.partition + 1) % rig.settings.wal_partitions
    elsewhere = cli(rig, run_cli, "asof", role, "--offset", f"{wrong}:0")
    assert elsewhere.returncode != 0 and f"partition {item.position.partition}" in elsewhere.stderr


# --- workers killed and restarted (after the asof tests: it appends to the WAL) -----------


async def until_new_outputs(reader: OutputReader, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await reader.poll(idle_ms=200):
        assert asyncio.get_running_loop().time() < deadline, "no worker output"


async def test_verify_after_a_killed_and_restarted_worker(rig: Rig, run_cli: RunCli) -> None:
    app_id = rig.env["ROLEBUS_APP_ID"]
    more = rig.workload.take(300)
    reader = await OutputReader(rig.settings, rig.ends).start()
    await reader.poll()  # the outputs so far
    first = WorkerProcess(rig.settings, rig.ends, app_id, rig.tmp / "killed.log").start()
    second = WorkerProcess(rig.settings, rig.ends, app_id, rig.tmp / "restarted.log")
    try:
        async with RoleClient(rig.settings, "tenant-w", endpoints=rig.ends) as client:
            await client.send_many(more[:100])
            await until_new_outputs(reader, 120)  # the first worker is folding
            await client.send_many(more[100:200])
            first.kill()  # kill -9 mid-stream: no checkpoint, no offset commit
            second.start()
            await client.send_many(more[200:])
        ref = await harness.reference(rig.settings, rig.ends)
        await harness.wait_for_keys(reader, harness.reference_summary(ref).terminal_keys(), 240)
    finally:
        first.kill()
        second.stop()
        await reader.stop()
    done = cli(rig, run_cli, "replay", "fold", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    assert as_json(done)["events"] == len(rig.items) + len(more)


# --- a forged commit record (last: it corrupts the commits topic) ------------------------


async def forge(rig: Rig, rec: CommitRecord, key: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=rig.ends.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.topic_name(rig.settings, "commits"), records.encode(rec), key=key.encode(),
            partition=partition_of(key, rig.settings.wal_partitions),
            headers=[(records.COMMIT_ID_HEADER, rec.commit_id.encode())],
        )  # fmt: skip
    finally:
        await producer.stop()


async def test_zz_a_forged_commit_is_reported(rig: Rig, run_cli: RunCli) -> None:
    role = busiest(rig)
    mine = sorted((c for c in rig.commits if c.role_id == role), key=lambda c: c.seq)
    wrong_digest = mine[len(mine) // 2]
    wrong_id = mine[len(mine) // 3]
    await forge(rig, replace(wrong_digest, state_digest="0" * 64), role)
    await forge(rig, replace(wrong_id, commit_id="e" * 64), role)
    done = cli(rig, run_cli, "replay", "fold", "--verify", "--json")
    assert done.returncode == 3, done.stderr
    found = as_json(done)["divergences"]
    assert not as_json(done)["ok"]
    seqs = {(d["role_id"], d["seq"]) for d in found}
    assert {(role, wrong_digest.seq), (role, wrong_id.seq)} <= seqs
    by_id = next(d for d in found if d["seq"] == wrong_id.seq and "commit differs" in d["what"])
    assert wrong_id.commit_id in by_id["expected"] and "e" * 64 in by_id["found"]
    assert by_id["event_id"] == wrong_id.event_id
    assert f"role '{role}' seq {wrong_id.seq}" in done.stderr
    assert "DIVERGES" in done.stderr and "divergence" in last(done)
