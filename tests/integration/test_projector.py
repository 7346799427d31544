"""``rolebus project`` on the real stack (worker + projector subprocesses):
a conversation lands in PostgreSQL exactly once even when the projector is
killed with SIGKILL mid-batch; rollbacks supersede exactly the right
messages and restore them; a fork row gets its source and forked_live."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors.db import connect
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import Author, MessageAppended, ToolCall
from testkit import harness
from testkit.harness import OutputReader, ProjectorProcess, WorkerProcess, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints
    tmp: Path
    schema: str = field(default_factory=lambda: f"t_{uuid.uuid4().hex[:10]}")
    app_id: str = field(default_factory=lambda: f"rb-proj-{uuid.uuid4().hex[:8]}")
    procs: list[Any] = field(default_factory=list)

    def worker(self) -> WorkerProcess:
        w = WorkerProcess(self.settings, self.ends, self.app_id, self.tmp / "worker.log")
        self.procs.append(w)
        return w.start()

    def projector(
        self, name: str, batch: int = 500, schema: str | None = None, group: str | None = None
    ) -> ProjectorProcess:
        env = worker_env(self.settings, self.ends, self.app_id)
        args = (
            "--batch", str(batch), "--group", group or f"{self.app_id}-projector",
            "--schema", schema or self.schema,
        )  # fmt: skip
        p = ProjectorProcess(env, self.tmp / f"{name}.log", args).start()
        self.procs.append(p)
        return p

    async def query(
        self, text: str, params: tuple[Any, ...] = (), schema: str | None = None
    ) -> list[tuple[Any, ...]]:
        async with connect(
            self.settings, self.ends, schema or self.schema, autocommit=True
        ) as conn:
            cur = await conn.execute(text.encode(), params)  # test-only literal SQL
            return list(await cur.fetchall()) if cur.description else []

    async def until(
        self, text: str, ok: Callable[[list[tuple[Any, ...]]], bool], timeout_s: float = 90.0,
        params: tuple[Any, ...] = (), schema: str | None = None,
    ) -> list[tuple[Any, ...]]:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        rows: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            try:
                rows = await self.query(text, params, schema)
            except Exception:  # the schema may not exist yet
                rows = []
            if rows and ok(rows):
                return rows
            await asyncio.sleep(0.1)
        logs = "\n".join(p.log_text()[-2500:] for p in self.procs)
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
        for p in r.procs:
            if isinstance(p, WorkerProcess):
                p.stop()
            else:
                p.end(signal.SIGTERM)


async def conversation(c: RoleClient, roles: int, turns: int) -> None:
    ids = [f"r-{i:02d}" for i in range(roles)]
    for i, role in enumerate(ids):
        await c.create_role(f"Role {i}", f"You are role {i}.", role_id=role, traits={"n": str(i)})
        await c.append_message(role, "user", "too early")  # refused: not active yet
        await c.activate(role)
    for t in range(turns):
        sends = []
        for role in ids:
            question = MessageAppended(f"{role}-u{t}", Author.USER, f"question {t} to {role}")
            answer = MessageAppended(
                f"{role}-a{t}", Author.ASSISTANT, f"answer {t} from {role}", tokens_out=5,
                latency_ms=30 + t,
            )  # fmt: skip
            sends += [c.envelope(role, question), c.envelope(role, answer)]
        await c.send_many(sends)


async def test_exactly_once_across_sigkill_mid_batch(rig: Rig) -> None:
    async with RoleClient(rig.settings, "tenant-p", endpoints=rig.ends) as client:
        await conversation(client, roles=8, turns=40)
    producer = AIOKafkaProducer(bootstrap_servers=rig.ends.kafka_bootstrap)
    await producer.start()
    await producer.send_and_wait(topics.topic_name(rig.settings, "wal"), b"\x00junk", key=b"r-00")
    await producer.stop()
    rig.worker()
    reader = await OutputReader(rig.settings, rig.ends).start()
    try:
        ref = harness.reference_summary(await harness.reference(rig.settings, rig.ends))
        await harness.wait_for_keys(reader, ref.terminal_keys(), 120)
        outputs = harness.summarize(o.record for o in reader.seen)
    finally:
        await reader.stop()
    changes = len(outputs.changes)
    assert changes == 8 * (2 + 80) and len(outputs.rejections) == 9

    first = rig.projector("p1", batch=20)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] >= changes // 4)
    code, _ = first.end(signal.SIGKILL)  # mid-way, most likely mid-batch
    assert code == -signal.SIGKILL
    done = (await rig.query("SELECT count(*) FROM events"))[0][0]
    assert 0 < done < changes, "the kill did not land while projecting"

    # Two processes share the partitions; one of them is killed too.
    second, third = rig.projector("p2", batch=20), rig.projector("p3", batch=20)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] >= done + changes // 4)
    code, _ = second.end(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert "resumed 6 partitions" in second.log_text() + third.log_text()  # they shared
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] == changes)
    await rig.until("SELECT count(*) FROM rejections", lambda r: r[0][0] == 9)
    await rig.until("SELECT count(*) FROM commits", lambda r: r[0][0] == len(outputs.commits))
    await _check_exactly_once(rig, outputs)
    code, took = third.end(signal.SIGTERM)
    assert code == 0 and took < 10, third.log_text()[-2000:]
    assert "lag" in third.log_text()


async def _check_exactly_once(rig: Rig, outputs: harness.Summary) -> None:
    events = await rig.query("SELECT event_id::text, seq, role_id FROM events")
    assert {e[0] for e in events} == set(outputs.changes)
    assert len(events) == len(outputs.changes)
    msgs = await rig.query(
        "SELECT event_id::text, content, superseded, embedding IS NOT NULL FROM messages"
    )
    expected = {k for k, c in outputs.changes.items() if c.event_type == "MessageAppended"}
    assert {m[0] for m in msgs} == expected and len(msgs) == len(expected)
    assert all(m[3] and not m[2] for m in msgs)
    commits = await rig.query("SELECT commit_id FROM commits")
    assert sorted(c[0] for c in commits) == sorted(outputs.commits)
    agg = await rig.query(
        "SELECT sum(events), sum(msg_user), sum(msg_assistant), sum(rejections),"
        " sum((SELECT sum(x) FROM unnest(latency_hist) x)) FROM agg_minute"
    )
    assert agg[0] == (len(outputs.changes), 320, 320, 9, 320)
    rej = await rig.query(
        "SELECT reason, sum(count) FROM agg_rejections_minute GROUP BY 1 ORDER BY 1"
    )
    assert [(r[0], int(r[1])) for r in rej] == [("not_active", 8), ("undecodable", 1)]
    roles = await rig.query(
        "SELECT role_id, seq, lifecycle, counters->'messages' FROM roles ORDER BY 1"
    )
    assert [(r[0], r[1], r[2]) for r in roles] == [(f"r-{i:02d}", 82, "active") for i in range(8)]
    assert all(r[3] == {"user": 40, "assistant": 40} for r in roles)
    offsets = await rig.query(
        "SELECT topic, partition, next_offset FROM projector_offsets WHERE projector = %s",
        (f"{rig.app_id}-projector",),
    )
    ends = await _end_offsets(rig)
    assert {(t, p): n for t, p, n in offsets} == ends


async def _end_offsets(rig: Rig) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=rig.ends.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topics.topic_name(rig.settings, k), p)
            for k in ("changes", "commits", "rejections")
            for p in range(rig.settings.wal_partitions)
        ]
        found = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): n for tp, n in found.items()}
    finally:
        await consumer.stop()


async def test_rollbacks_supersede_and_restore_and_forks_get_their_lineage(rig: Rig) -> None:
    rig.worker()
    rig.projector("p", batch=50)
    role = "ada"
    async with RoleClient(rig.settings, "tenant-r", endpoints=rig.ends) as c:
        await c.create_role("Ada", "You are Ada.", role_id=role)
        await c.activate(role)
        await c.append_message(role, "user", "hello")  # seq 3
        await c.request_commit(role, "greeted")  # seq 4
        for i in range(3):  # seqs 5..10
            await c.append_message(role, "user", f"q{i}")
            await c.append_message(role, "assistant", f"a{i}", flags=["hallucination"])
        await c.request_commit(role, "six")  # seq 11
        greeted = await _commit(rig, role, "greeted")
        six = await _commit(rig, role, "six")
        await c.rollback(role, greeted, reason="hallucinated")  # seq 12: supersedes 5..11
        await c.append_message(role, "user", "again")  # seq 13
        await _until_seq(rig, role, 13)
        assert await _superseded(rig, role) == {5, 6, 7, 8, 9, 10}
        await c.rollback(role, six, reason="it was fine")  # seq 14: restores 5..11
        await c.append_message(role, "user", "after")  # seq 15
        await _until_seq(rig, role, 15)
        await c.fork(role, six, "Ada II", new_role_id="ada-fork")
        await c.create_role("Tooly", "You use tools.", role_id="tooly")
        await c.activate("tooly")
        call = ToolCall("search", '{"q": "ada"}', "3 hits")
        await c.append_message("tooly", "tool", "searched", tool_call=call, latency_ms=12)
    tools = await rig.until(
        "SELECT tool_call, author, latency_ms FROM messages WHERE role_id = 'tooly'", bool
    )
    assert tools == [
        ({"name": "search", "arguments_json": '{"q": "ada"}', "result": "3 hits"}, "tool", 12)
    ]
    assert await _superseded(rig, role) == {13}
    back = await rig.query(
        "SELECT seq, kind, reason, rollback_to FROM commits"
        " WHERE role_id = %s AND kind = 'rollback' ORDER BY seq",
        (role,),
    )
    assert back == [(12, "rollback", "hallucinated", greeted), (14, "rollback", "it was fine", six)]
    live = await rig.query(
        "SELECT live::text, counters->'rollbacks' FROM roles WHERE role_id = %s", (role,)
    )
    assert live == [("{[1,12),[14,16)}", 2)]
    rows = await rig.until(
        "SELECT forked_from_role, forked_from_commit, forked_live::text, persona FROM roles"
        " WHERE role_id = 'ada-fork'", lambda r: r[0][2] is not None,
    )  # fmt: skip
    assert rows == [(role, six, "{[1,12)}", "You are Ada.")]
    await _reprojection_is_identical(rig)


# Every column but the projection's own wall-clock times.
SAME_ROWS = {
    "roles": "SELECT * FROM roles ORDER BY tenant_id, role_id",
    "events": "SELECT event_id, tenant_id, role_id, seq, event_type, occurred_at, wal_partition,"
    " wal_offset, head_commit_id FROM events ORDER BY event_id",
    "messages": "SELECT * FROM messages ORDER BY tenant_id, role_id, seq",
    "commits": "SELECT * FROM commits ORDER BY commit_id",
    "rollbacks": "SELECT * FROM rollbacks ORDER BY event_id",
    "rejections": "SELECT wal_topic, wal_partition, wal_offset, reason, message, original,"
    " event_id, tenant_id, role_id, event_type, occurred_at FROM rejections ORDER BY 1, 2, 3",
    "agg_minute": "SELECT tenant_id, role_id, minute, events, msg_user, msg_assistant,"
    " flag_hallucination, rollbacks, commits_requested, rejections, latency_hist, lag_count"
    " FROM agg_minute ORDER BY 1, 2, 3",
}


async def _reprojection_is_identical(rig: Rig) -> None:
    """A fresh projector (new group, new schema) writes exactly the same rows."""
    fresh = f"t_{uuid.uuid4().hex[:10]}"
    rig.projector("again", batch=7, schema=fresh, group=f"{rig.app_id}-again")
    for table in ("events", "commits", "rejections"):
        text = f"SELECT count(*) FROM {table}"
        count = (await rig.query(text))[0][0]
        await rig.until(text, lambda r, n=count: r[0][0] == n, schema=fresh)
    await rig.until("SELECT count(*) FROM roles WHERE forked_live IS NOT NULL", bool, schema=fresh)
    for table, text in SAME_ROWS.items():
        assert await rig.query(text, schema=fresh) == await rig.query(text), table


async def _commit(rig: Rig, role: str, label: str) -> str:
    rows = await rig.until(
        "SELECT commit_id FROM commits WHERE role_id = %s AND label = %s",
        bool,
        params=(role, label),
    )
    return str(rows[0][0])


async def _until_seq(rig: Rig, role: str, seq: int) -> None:
    await rig.until(
        "SELECT seq FROM roles WHERE role_id = %s", lambda r: r[0][0] >= seq, params=(role,)
    )


async def _superseded(rig: Rig, role: str) -> set[int]:
    rows = await rig.query("SELECT seq FROM messages WHERE role_id = %s AND superseded", (role,))
    return {int(r[0]) for r in rows}


async def test_db_migrate_and_reembed_from_the_cli(
    rig: Rig, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = worker_env(rig.settings, rig.ends, rig.app_id)
    env["ROLEBUS_PG_SCHEMA"] = rig.schema
    first = run_cli("db", "migrate", env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "001_context_store, 002_projector" in first.stderr
    again = run_cli("db", "migrate", env=env, timeout=120)
    assert again.returncode == 0 and "nothing new" in again.stderr
    await rig.query(
        "INSERT INTO messages (tenant_id, role_id, seq, message_id, event_id, author, content,"
        " occurred_at, embedding_error) VALUES ('t', 'r', 1, 'm1', gen_random_uuid(), 'user',"
        " 'my invoice is wrong', now(), 'wordllama: it failed'), ('t', 'r', 2, 'm2',"
        " gen_random_uuid(), 'user', 'fine', now(), NULL)"
    )
    fixed = run_cli("db", "reembed", env=env, timeout=120)
    assert fixed.returncode == 0 and "1 embedded, 0 still failing" in fixed.stderr, fixed.stderr
    rows = await rig.query(
        "SELECT seq, embedding IS NOT NULL, embedding_error FROM messages ORDER BY seq"
    )
    assert rows == [(1, True, None), (2, False, None)]


async def test_a_corrupt_output_record_stops_the_projector_with_its_position(rig: Rig) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=rig.ends.kafka_bootstrap)
    await producer.start()
    try:
        name = topics.topic_name(rig.settings, "changes")
        await producer.send_and_wait(name, b'{"v":1,"type":"change"}', key=b"r", partition=2)
    finally:
        await producer.stop()
    p = rig.projector("corrupt")
    assert p.proc is not None
    code = await asyncio.to_thread(p.proc.wait, 120)
    assert code == 1
    assert f"output record {name}[2]@0" in p.log_text()
    stored = await rig.query(
        "SELECT next_offset FROM projector_offsets WHERE topic = %s AND partition = 2", (name,)
    )
    assert stored == [(0,)]
