"""``rolebus replay projections`` (for now ``rolebus rebuild``) on the real stack:
a worker and a live ``rolebus project`` run while a rebuild with ``--verify
--swap`` runs and new events keep arriving; after the swap the live projector
goes on in the new set with no lost or duplicated row (checked against the
output topics), and the old set stays until ``replay drop`` drops it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pytest

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors.db import connect
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import Author, MessageAppended
from testkit import harness
from testkit.harness import OutputReader, WorkerProcess, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]
Cli = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Projector:
    """A ``rolebus project`` subprocess (stderr to a log file)."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Projector:
        self._log = self.log_path.open("ab")
        cmd = [sys.executable, "-c", "from rolebus.cli import main; main()", "project"]
        self.proc = subprocess.Popen(
            [*cmd, "--batch", "50"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def stop(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints
    tmp: Path
    schema: str = field(default_factory=lambda: f"t_{uuid.uuid4().hex[:10]}")
    app_id: str = field(default_factory=lambda: f"rb-rebuild-{uuid.uuid4().hex[:8]}")
    worker: WorkerProcess | None = None
    projectors: list[Projector] = field(default_factory=list)

    def env(self, **more: str) -> dict[str, str]:
        env = worker_env(self.settings, self.ends, self.app_id)
        return {**env, "ROLEBUS_PG_SCHEMA": self.schema, **more}

    def projector(self, **more: str) -> Projector:
        p = Projector(self.env(**more), self.tmp / f"projector{len(self.projectors)}.log")
        self.projectors.append(p.start())
        return p

    async def query(self, text: str, schema: str | None = None) -> list[tuple[Any, ...]]:
        async with connect(self.settings, self.ends, schema or self.schema, autocommit=True) as c:
            cur = await c.execute(text.encode())  # test-only literal SQL
            return list(await cur.fetchall()) if cur.description else []

    async def until(
        self, text: str, ok: Callable[[list[tuple[Any, ...]]], bool], timeout_s: float = 120.0
    ) -> list[tuple[Any, ...]]:
        deadline, rows = time.monotonic() + timeout_s, []
        while time.monotonic() < deadline:
            try:
                rows = await self.query(text)
            except Exception:  # the schema may not exist yet
                rows = []
            if rows and ok(rows):
                return rows
            await asyncio.sleep(0.2)
        logs = "\n".join(p.log_path.read_text()[-2000:] for p in self.projectors)
        raise TimeoutError(f"{text!r}: still {rows!r} after {timeout_s}s\n{logs}")


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    ends = resolve(settings)
    mine = replace(settings, commit_every=5, message_window=4, data_dir=tmp_path / "data")
    await topics.ensure(mine, ends)
    r = Rig(mine, ends, tmp_path)
    try:
        yield r
    finally:
        for p in r.projectors:
            p.stop()
        if r.worker is not None:
            r.worker.stop()


ROLES = [f"r-{i:02d}" for i in range(6)]


async def seed(c: RoleClient) -> None:
    """Roles, a refused message, turns, and a rollback (superseded rows)."""
    for i, role in enumerate(ROLES):
        await c.create_role(f"Role {i}", f"You are role {i}.", role_id=role)
        await c.append_message(role, "user", "too early")  # refused: not active yet
        await c.activate(role)
    await turns(c, range(10))
    await c.request_commit(ROLES[0], "before")


async def turns(c: RoleClient, numbers: range) -> None:
    for t in numbers:
        sends = []
        for role in ROLES:
            q = MessageAppended(f"{role}-u{t}", Author.USER, f"question {t} about topic {t % 4}")
            a = MessageAppended(
                f"{role}-a{t}", Author.ASSISTANT, f"answer {t} on topic {t % 4} from {role}",
                tokens_out=5, latency_ms=20 + t,
            )  # fmt: skip
            sends += [c.envelope(role, q), c.envelope(role, a)]
        await c.send_many(sends)


async def keep_sending(c: RoleClient, stop: asyncio.Event) -> int:
    """New turns until ``stop``; how many were sent."""
    t = 100
    while not stop.is_set():
        await turns(c, range(t, t + 1))
        t += 1
        await asyncio.sleep(0.05)
    return t - 100


async def outputs_of(rig: Rig) -> harness.Summary:
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        ref = harness.reference_summary(await harness.reference(rig.settings, rig.ends))
        await harness.wait_for_keys(reader, ref.terminal_keys(), 120)
        return harness.summarize(o.record for o in reader.seen)
    finally:
        await reader.stop()


async def test_rebuild_verify_swap_while_events_keep_arriving(rig: Rig, run_cli: Cli) -> None:
    rig.worker = WorkerProcess(rig.settings, rig.ends, rig.app_id, rig.tmp / "worker.log").start()
    live = rig.projector()
    async with RoleClient(rig.settings, "tenant-b", endpoints=rig.ends) as client:
        await seed(client)
        rows = await rig.until("SELECT commit_id FROM commits WHERE label = 'before'", bool)
        await turns(client, range(10, 14))
        await client.rollback(ROLES[0], str(rows[0][0]), reason="bad answers")
        await rig.until("SELECT count(*) FROM messages WHERE superseded", lambda r: r[0][0] == 8)
        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(client, stop))
        done = await asyncio.to_thread(
            run_cli, "rebuild", "--verify", "--swap", "--json", env=rig.env(), timeout=300
        )
        stop.set()
        sent = await sender
        await turns(client, range(200, 205))  # after the swap: only the new set gets them
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stderr[-1500:])
    report = json.loads(done.stdout)
    assert report["ok"] and report["swapped"] and report["live"] == rig.schema, report
    assert all(t["only_live"] == 0 == t["only_rebuilt"] for t in report["verify"])
    compared = {t["table"]: t["live_rows"] for t in report["verify"]}
    assert compared["messages"] >= len(ROLES) * 28 and compared["rejections"] == len(ROLES)
    assert report["recall_parity"]["mean_overlap"] >= 0.9
    assert sent > 0, "no event arrived during the rebuild"

    outputs = await outputs_of(rig)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] >= len(outputs.changes))
    await no_lost_or_duplicated_rows(rig, outputs)
    assert live.proc is not None and live.proc.poll() is None, "the live projector died"
    old = report["retired"]
    kept = (await rig.query("SELECT count(*) FROM events", schema=old))[0][0]
    assert 0 < kept < len(outputs.changes) - len(ROLES) * 10  # frozen at the swap
    moved = await rig.query("SELECT DISTINCT projector FROM projector_offsets", schema=old)
    assert moved == [(f"{rig.app_id}-projector@{old}",)]

    refused = await asyncio.to_thread(run_cli, "rebuild-drop", rig.schema, env=rig.env())
    assert refused.returncode != 0 and "live context store" in refused.stderr
    dropped = await asyncio.to_thread(run_cli, "rebuild-drop", old, env=rig.env())
    assert dropped.returncode == 0, dropped.stderr
    gone = await rig.query(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{old}'")
    assert gone == [(0,)]


async def no_lost_or_duplicated_rows(rig: Rig, outputs: harness.Summary) -> None:
    events = await rig.query("SELECT event_id::text FROM events")
    assert sorted(e[0] for e in events) == sorted(outputs.changes)
    wanted = {k for k, c in outputs.changes.items() if c.event_type == "MessageAppended"}
    msgs = await rig.query("SELECT event_id::text, embedding IS NOT NULL FROM messages")
    assert sorted(m[0] for m in msgs) == sorted(wanted) and all(m[1] for m in msgs)
    commits = await rig.query("SELECT commit_id FROM commits")
    assert sorted(c[0] for c in commits) == sorted(outputs.commits)
    rejections = await rig.query("SELECT count(*) FROM rejections")
    assert rejections == [(len(outputs.rejections),)]
    agg = await rig.query("SELECT sum(events), sum(rejections) FROM agg_minute")
    assert agg == [(len(outputs.changes), len(outputs.rejections))]  # each input counted once
    roles = await rig.query("SELECT role_id, seq FROM roles ORDER BY 1")
    final = outputs.final()
    assert {r: s for r, s in roles} == {r: final[r][0] for r in final}
