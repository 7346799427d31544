"""bench/project: rows/s written by `rolebus project` vs a raw COPY of the same
rows into the same indexed tables, measured in the same run.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. produce N events of the synthetic workload (``tests/testkit/workload.py``)
   with RoleClient and let one ``rolebus worker`` fold them into the output
   topics (changes, commits, rejections);
2. one ``rolebus project`` (fresh group, fresh schema) projects them all; its
   time runs from its first transaction (``events.projected_at``, server clock)
   until a poll sees every row (server clock again), so process start, model
   load and group join are left out; embedding is inside (it is the
   projector's job);
3. baseline: the projected rows of every table the projector writes are
   copied out (untimed) and COPY'd into a freshly migrated schema with the
   same indexes (HNSW included), in one transaction, timed.

Goal: projector rows/s / raw COPY rows/s >= 0.5. Without ROLEBUS_KAFKA_BOOTSTRAP
a private local stack is started for the run and stopped at the end.

    python bench/project.py [--events 50000] [--partitions 12] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_settings, console, save, say
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.projectors import db
from rolebus.projectors.embeddings import load_provider
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from rolebus.wal.reader import assign_from_beginning, open_consumer
from testkit.harness import ProjectorProcess, WorkerProcess, worker_env
from testkit.workload import Workload, WorkloadSpec

GOAL = 0.5
TABLES = (
    "events", "messages", "commits", "rejections", "rollbacks", "roles", "agg_minute",
    "agg_rejections_minute",
)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/project.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=50_000, help="events to produce")
    p.add_argument("--roles", type=int, default=None, help="roles (default: events / 100)")
    p.add_argument("--partitions", type=int, default=12, help="WAL partitions")
    p.add_argument("--batch", type=int, default=2000, help="rolebus project --batch")
    p.add_argument("--timeout", type=float, default=1800.0, help="per step, seconds")
    return p.parse_args(argv)


async def produce(settings: Settings, ends: Endpoints, args: argparse.Namespace) -> int:
    """Write the workload; return how many changes + rejections it implies."""
    spec = WorkloadSpec(roles=args.roles or max(10, args.events // 100), seed=42, prefix="b")
    workload = Workload(spec, FoldConfig.from_settings(settings))
    envelopes = workload.take(args.events)
    async with RoleClient(settings, spec.tenant_id, endpoints=ends) as client:
        for i in range(0, len(envelopes), 1000):
            await client.send_many(envelopes[i : i + 1000])
    say(f"produced {len(envelopes)} events for {spec.roles} roles")
    return sum(n for kind, n in workload.outcomes.items() if kind != "duplicate")


async def output_count(settings: Settings, ends: Endpoints) -> int:
    names = [topics.topic_name(settings, k) for k in ("changes", "rejections")]
    async with open_consumer(settings, ends, "rolebus-bench") as consumer:
        tps = await assign_from_beginning(consumer, names, missing_ok=True)
        return sum((await consumer.end_offsets(tps)).values())


async def fold(
    settings: Settings, ends: Endpoints, expected: int, logs: Path, timeout: float
) -> None:
    worker = WorkerProcess(settings, ends, f"bench-{uuid.uuid4().hex[:6]}", logs / "worker.log")
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while (got := await output_count(settings, ends)) < expected:
            if time.monotonic() > deadline or (worker.proc and worker.proc.poll() is not None):
                raise RuntimeError(f"worker did not finish:\n{worker.log_text()[-3000:]}")
            say(f"  worker: {got}/{expected} outputs")
            await asyncio.sleep(2)
    finally:
        worker.stop()
    say(f"worker wrote {expected} changes + rejections")


async def scalar(settings: Settings, ends: Endpoints, schema: str, query: bytes) -> Any:
    async with db.connect(settings, ends, schema, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
        return None if row is None else row[0]


async def project(
    settings: Settings, ends: Endpoints, schema: str, expected: int, args: argparse.Namespace,
    logs: Path,
) -> dict[str, Any]:  # fmt: skip
    env = {**worker_env(settings, ends, "bench"), "ROLEBUS_PG_SCHEMA": schema}
    options = ("--group", f"bench-{uuid.uuid4().hex[:6]}", "--batch", str(args.batch))
    projector = ProjectorProcess(env, logs / "projector.log", options).start()
    try:
        assert projector.proc is not None
        elapsed = await _wait_projected(
            settings, ends, schema, expected, projector.proc, args.timeout
        )
    finally:
        projector.stop()
    rows = await count_rows(settings, ends, schema)
    return {"seconds": elapsed, "rows": rows, "rows_per_s": sum(rows.values()) / elapsed}


async def _wait_projected(
    settings: Settings, ends: Endpoints, schema: str, expected: int,
    proc: subprocess.Popen[bytes], timeout: float,
) -> float:  # fmt: skip
    deadline, shown = time.monotonic() + timeout, 0.0
    query = (
        b"SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rejections),"
        b" extract(epoch FROM clock_timestamp() - (SELECT min(projected_at) FROM events))"
    )
    while True:
        try:
            async with db.connect(settings, ends, schema, autocommit=True) as conn:
                done, span = await (await conn.execute(query)).fetchone() or (0, None)
        except Exception:  # the projector has not migrated the schema yet
            done, span = 0, None
        if done >= expected:
            return float(span)
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"projector did not finish ({done}/{expected}); see its log")
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            say(f"  projector: {done}/{expected} events + rejections")
        await asyncio.sleep(0.1)


async def count_rows(settings: Settings, ends: Endpoints, schema: str) -> dict[str, int]:
    from psycopg import sql

    out = {}
    async with db.connect(settings, ends, schema, autocommit=True) as conn:
        for table in TABLES:
            stmt = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = await (await conn.execute(stmt)).fetchone()
            out[table] = int(row[0]) if row else 0
    return out


async def raw_copy(settings: Settings, ends: Endpoints, source: str) -> dict[str, Any]:
    """COPY the projected rows (binary, read untimed) into a fresh migrated schema."""
    from psycopg import sql

    provider = load_provider(settings)
    target = f"bench_raw_{uuid.uuid4().hex[:8]}"
    data: dict[str, list[bytes]] = {}
    async with db.connect(settings, ends, source, autocommit=True) as conn:
        for table in TABLES:
            stmt = sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(sql.Identifier(table))
            async with conn.cursor().copy(stmt) as copy:
                data[table] = [bytes(chunk) async for chunk in copy]
    async with db.connect(settings, ends, target) as conn:
        await db.migrate(conn, target, embedding_dim=provider.dim, embedding_model=provider.name)
        started = time.perf_counter()
        async with conn.transaction(), conn.cursor() as cur:
            for table in TABLES:
                stmt = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table))
                async with cur.copy(stmt) as copy:
                    for chunk in data[table]:
                        await copy.write(chunk)
        elapsed = time.perf_counter() - started
    await provider.aclose()
    rows = await count_rows(settings, ends, target)
    return {"seconds": elapsed, "rows": rows, "rows_per_s": sum(rows.values()) / elapsed}


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    expected = await produce(settings, ends, args)
    await fold(settings, ends, expected, logs, args.timeout)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    say(f"projecting into schema {schema}")
    projected = await project(settings, ends, schema, expected, args, logs)
    say(f"projector: {projected['rows_per_s']:,.0f} rows/s; raw COPY of the same rows")
    raw = await raw_copy(settings, ends, schema)
    assert raw["rows"] == projected["rows"], (raw["rows"], projected["rows"])
    return {
        "events": args.events, "outputs": expected, "partitions": settings.wal_partitions,
        "batch": args.batch, "projector": projected, "raw_copy": raw,
        "ratio": projected["rows_per_s"] / raw["rows_per_s"], "goal": GOAL,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    title = f"bench/project: {result['events']} events, {result['partitions']} partitions"
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    p, r = result["projector"], result["raw_copy"]
    for name, n in p["rows"].items():
        table.add_row(f"rows: {name}", f"{n:,}")
    table.add_row(
        "rolebus project (1 process)", f"{p['rows_per_s']:,.0f} rows/s ({p['seconds']:.1f}s)"
    )
    table.add_row(
        "raw COPY, same rows and indexes", f"{r['rows_per_s']:,.0f} rows/s ({r['seconds']:.1f}s)"
    )
    table.add_row("ratio projector / raw", f"{result['ratio']:.3f} (goal >= {GOAL})")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base, tempfile.TemporaryDirectory() as tmp:
        settings = replace(base, commit_every=50)
        result = asyncio.run(run(settings, args, Path(tmp)))
    show(result)
    say(f"saved {save('project', result)}")
    if result["ratio"] < GOAL:
        print(
            f"bench/project: ratio {result['ratio']:.3f} is below the goal {GOAL}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
