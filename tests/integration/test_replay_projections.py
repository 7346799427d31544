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
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors.db import connect
from rolebus.projectors.embeddings import WordLlamaProvider, normalize
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import Author, MessageAppended
from testkit import harness
from testkit.harness import OutputReader, ProjectorProcess, WorkerProcess, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]
Cli = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints
    tmp: Path
    schema: str = field(default_factory=lambda: f"t_{uuid.uuid4().hex[:10]}")
    app_id: str = field(default_factory=lambda: f"rb-rebuild-{uuid.uuid4().hex[:8]}")
    worker: WorkerProcess | None = None
    projectors: list[ProjectorProcess] = field(default_factory=list)

    def env(self, **more: str) -> dict[str, str]:
        env = worker_env(self.settings, self.ends, self.app_id)
        return {**env, "ROLEBUS_PG_SCHEMA": self.schema, **more}

    def projector(self, **more: str) -> ProjectorProcess:
        log = self.tmp / f"projector{len(self.projectors)}.log"
        p = ProjectorProcess(self.env(**more), log, ("--batch", "50"))
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
        await client.fork(ROLES[0], str(rows[0][0]), "Fork", new_role_id="r-fork")
        await rig.until("SELECT count(*) FROM messages WHERE superseded", lambda r: r[0][0] == 8)
        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(client, stop))
        done = await asyncio.to_thread(
            run_cli,
            "replay",
            "projections",
            "--verify",
            "--swap",
            "--json",
            env=rig.env(),
            timeout=300,
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
    forked = await rig.query("SELECT forked_live::text FROM roles WHERE role_id = 'r-fork'")
    assert forked == [("{[1,24)}",)]  # the fork's lineage, rebuilt and verified
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

    refused = await asyncio.to_thread(run_cli, "replay", "drop", rig.schema, env=rig.env())
    assert refused.returncode != 0 and "live context store" in refused.stderr
    dropped = await asyncio.to_thread(run_cli, "replay", "drop", old, env=rig.env())
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


class Truncated(BaseHTTPRequestHandler):
    """``POST /v1/embeddings``: WordLlama's vectors cut to their first 64 numbers
    and renormalized (Matryoshka-style): another model, another dimension."""

    model: WordLlamaProvider | None = None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert Truncated.model is not None
        cut = normalize(Truncated.model.embed_sync(body["input"])[:, :64])
        data = [{"index": i, "embedding": v.tolist()} for i, v in enumerate(cut)]
        raw = json.dumps({"data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def small_model() -> Iterator[str]:
    Truncated.model = Truncated.model or WordLlamaProvider.load()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Truncated)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"openai:http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_a_new_embedding_model_with_another_dimension_is_rolled_out(
    rig: Rig, run_cli: Cli, small_model: str
) -> None:
    rig.worker = WorkerProcess(rig.settings, rig.ends, rig.app_id, rig.tmp / "worker.log").start()
    live = rig.projector()
    async with RoleClient(rig.settings, "tenant-e", endpoints=rig.ends) as client:
        await seed(client)
    outputs = await outputs_of(rig)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] == len(outputs.changes))
    new_model = {"ROLEBUS_EMBEDDINGS": small_model, "ROLEBUS_EMBEDDINGS_MODEL": "wl64"}

    busy = await asyncio.to_thread(
        run_cli, "replay", "projections", "--swap", env=rig.env(**new_model)
    )
    assert busy.returncode == 2 and "stop `rolebus project`" in busy.stderr, busy.stderr
    assert live.stop() == 0
    done = await asyncio.to_thread(
        run_cli,
        "replay",
        "projections",
        "--verify",
        "--swap",
        "--json",
        env=rig.env(**new_model),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["swapped"] and report["embedding_models"] == {
        "live": "wordllama:l2_supercat_256",
        "rebuilt": "openai:wl64",
    }, report
    parity = report["recall_parity"]
    assert parity["samples"] > 0 and 0.0 < parity["mean_overlap"] <= 1.0
    print(done.stderr[-800:])

    rig.projector(**new_model)  # the live projector, restarted with the new model
    async with RoleClient(rig.settings, "tenant-e", endpoints=rig.ends) as client:
        await turns(client, range(20, 23))
    outputs = await outputs_of(rig)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] == len(outputs.changes))
    await no_lost_or_duplicated_rows(rig, outputs)
    dims = await rig.query("SELECT DISTINCT vector_dims(embedding) FROM messages")
    assert dims == [(64,)]
    old = report["retired"]
    assert await rig.query("SELECT DISTINCT vector_dims(embedding) FROM messages", old) == [(256,)]


async def test_verify_reports_the_first_differences_and_a_scope(rig: Rig, run_cli: Cli) -> None:
    rig.worker = WorkerProcess(rig.settings, rig.ends, rig.app_id, rig.tmp / "worker.log").start()
    rig.projector()
    async with RoleClient(rig.settings, "tenant-v", endpoints=rig.ends) as client:
        await seed(client)
    outputs = await outputs_of(rig)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] == len(outputs.changes))
    await rig.query("UPDATE messages SET content = 'tampered' WHERE role_id = 'r-01' AND seq = 5")

    found = await asyncio.to_thread(
        run_cli, "replay", "projections", "--verify", "--json", env=rig.env()
    )
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    bad = [t for t in report["verify"] if t["only_live"] or t["only_rebuilt"]]
    assert [(t["table"], t["only_live"], t["only_rebuilt"]) for t in bad] == [("messages", 1, 1)]
    sides = {row["side"]: row["content"] for row in bad[0]["first"]}
    assert sides["live"] == "tampered" and sides["rebuilt"] != "tampered"
    assert "messages: 1 rows only live" in found.stderr

    scoped = await asyncio.to_thread(
        run_cli, "replay", "projections", "--verify", "--json", "--role", "r-02", env=rig.env()
    )
    assert scoped.returncode == 0, scoped.stderr
    counts = {t["table"]: t["rebuilt_rows"] for t in json.loads(scoped.stdout)["verify"]}
    assert counts["roles"] == 1 and counts["messages"] == 20 and counts["rejections"] == 1
    refused = await asyncio.to_thread(
        run_cli, "replay", "projections", "--swap", "--role", "r-02", env=rig.env()
    )
    wrong = await asyncio.to_thread(
        run_cli, "replay", "projections", "--verify", "--group", "nobody", env=rig.env()
    )
    assert wrong.returncode == 2 and "none of 'nobody'" in wrong.stderr, wrong.stderr
    assert refused.returncode == 2 and "--swap rebuilds the whole store" in refused.stderr


async def test_a_swap_ahead_of_a_paused_live_projector_loses_and_repeats_nothing(
    rig: Rig, run_cli: Cli
) -> None:
    """The live projector is frozen (SIGSTOP) mid-way, so the rebuilt set is AHEAD of
    the live offsets at the swap; once resumed it must notice and go on from the
    new set's offsets (its batch in flight is fenced and dropped)."""
    rig.worker = WorkerProcess(rig.settings, rig.ends, rig.app_id, rig.tmp / "worker.log").start()
    live = rig.projector()
    assert live.proc is not None
    async with RoleClient(rig.settings, "tenant-p", endpoints=rig.ends) as client:
        await seed(client)
        seeded = await outputs_of(rig)
        await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] == len(seeded.changes))
        await asyncio.sleep(0.5)  # idle: frozen inside a write, it would hold its offsets locked
        live.proc.send_signal(signal.SIGSTOP)
        try:
            await turns(client, range(10, 30))
            await outputs_of(rig)  # the worker has written them all
            done = await asyncio.to_thread(
                run_cli, "replay", "projections", "--swap", "--json", env=rig.env(), timeout=300
            )
        finally:
            live.proc.send_signal(signal.SIGCONT)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["swapped"]
        await turns(client, range(30, 33))
    outputs = await outputs_of(rig)
    await rig.until("SELECT count(*) FROM events", lambda r: r[0][0] >= len(outputs.changes))
    await asyncio.sleep(1.0)  # a duplicate would come now, if at all
    await no_lost_or_duplicated_rows(rig, outputs)
    assert live.proc.poll() is None, "the live projector died"
    assert "differ from this process's positions" in live.log_path.read_text()  # fenced


async def test_a_live_batch_stuck_holding_its_offsets_stops_the_swap_cleanly(rig: Rig) -> None:
    """A live projector frozen inside a write keeps its offset rows locked: the
    swap waits ``lock_wait_s`` at most, then fails naming it; nothing is renamed."""
    from rolebus.errors import StoreError
    from rolebus.projectors import db
    from rolebus.projectors.bluegreen import RebuildOptions, rebuild_projections
    from rolebus.wal.export import NoProgress

    provider = WordLlamaProvider.load()
    group = f"{rig.app_id}-projector"
    async with connect(rig.settings, rig.ends, rig.schema) as stuck:
        await db.migrate(
            stuck, rig.schema, embedding_dim=provider.dim, embedding_model=provider.name
        )
        await stuck.execute(
            "INSERT INTO projector_offsets (projector, topic, partition, next_offset)"
            " VALUES (%s, %s, 0, 0)",
            (group, topics.topic_name(rig.settings, "changes")),
        )
        await stuck.commit()
        await stuck.execute("SELECT * FROM projector_offsets FOR UPDATE")  # held, uncommitted
        options = RebuildOptions(rig.schema, group, swap=True, lock_wait_s=0.5)
        with pytest.raises(StoreError, match=r"held its offsets locked for over 0\.5s"):
            await rebuild_projections(
                rig.settings, rig.ends, options, provider, NoProgress(), datetime.now(UTC)
            )
        await stuck.rollback()
    names = await rig.query(
        f"SELECT nspname FROM pg_namespace WHERE nspname LIKE '{rig.schema}%' ORDER BY 1"
    )
    assert names[0] == (rig.schema,) and len(names) == 2 and "_r" in names[1][0]


async def test_the_swap_keeps_the_lag_the_live_projector_measured(rig: Rig) -> None:
    """agg_minute's lag columns of a minute both sets counted alike come from the
    live set (the rebuild projected those events long after they happened)."""
    from rolebus.projectors import db
    from rolebus.projectors.swap import carry_lag

    live, rebuilt = rig.schema, f"{rig.schema}_r1"
    insert = (
        "INSERT INTO agg_minute (tenant_id, role_id, minute, events, lag_count, lag_ms_sum,"
        " lag_ms_max) VALUES ('t', 'a', '2026-01-01 12:00Z', 2, 2, %s, %s),"
        " ('t', 'b', '2026-01-01 12:00Z', %s, %s, %s, %s)"
    )
    async with connect(rig.settings, rig.ends, live, autocommit=True) as conn:
        for schema, values in ((live, (30, 20, 1, 1, 5, 5)), (rebuilt, (9e6, 5e6, 2, 2, 8e6, 5e6))):
            await db.migrate(conn, schema, embedding_dim=4, embedding_model="m")
            await conn.execute(
                sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema))
            )
            await conn.execute(insert, values)
        assert await carry_lag(conn, live, rebuilt) == 1
    rows = await rig.query(
        "SELECT role_id, lag_count, lag_ms_sum, lag_ms_max FROM agg_minute ORDER BY 1", rebuilt
    )
    assert rows == [("a", 2, 30, 20), ("b", 2, 8_000_000, 5_000_000)]  # b: other counts
