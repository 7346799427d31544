"""bench/latency: the latency of a conversation turn, against a database's own.

A chat runtime persists each turn and awaits it, then reads what the fold
made of it. Measured on the embedded stack, side by side in one run:

1. baseline: one awaited ``INSERT`` + ``COMMIT`` per turn into the embedded
   PostgreSQL (what a database-backed store pays per turn);
2. awaited ``RoleClient.append_message`` calls, one turn at a time: appends/s,
   p50, p99 (before the worker starts, as the baseline runs alone too);
3. append -> change record: time from the append call to its change record
   on ``<prefix>.changes``, written by a running ``rolebus worker``, at light
   load (one turn at a time) and under load (a background producer sending
   the bench/fold workload at ``--load-rate`` events/s meanwhile).

Goals: awaited appends/s >= 0.45 x the INSERT + COMMIT baseline;
append -> change record p99 <= 25 ms at light load.

    python bench/latency.py [--turns 2000] [--roles 40] [--load-turns 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psycopg
from aiokafka import AIOKafkaConsumer
from common import bench_settings, console, save, say
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import reader, records, topics
from rolebus.wal.client import RoleClient
from testkit.harness import WorkerProcess
from testkit.workload import Workload, WorkloadSpec

GOAL_APPENDS = 0.45
GOAL_P99_MS = 25.0
TENANT = "bench"


@dataclass(frozen=True)
class Latencies:
    seconds: list[float]
    elapsed: float

    def row(self) -> dict[str, float]:
        ms = sorted(s * 1000 for s in self.seconds)
        return {
            "per_s": len(ms) / self.elapsed,
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/latency.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--turns", type=int, default=2000, help="awaited turns per measure")
    p.add_argument("--roles", type=int, default=40, help="roles the turns go to")
    p.add_argument("--load-turns", type=int, default=500, help="turns measured under load")
    p.add_argument("--load-rate", type=float, default=1000.0, help="background events/s")
    return p.parse_args(argv)


async def pg_baseline(dsn: str, turns: int) -> Latencies:
    """One awaited INSERT + COMMIT per turn."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        table = f"bench_turns_{uuid.uuid4().hex[:8]}"
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, role text, body text)")
        await conn.commit()
        took = []
        started = time.perf_counter()
        for i in range(turns):
            t0 = time.perf_counter()
            await conn.execute(
                f"INSERT INTO {table} (role, body) VALUES (%s, %s)", (f"r-{i % 40}", f"turn {i}")
            )
            await conn.commit()
            took.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        await conn.execute(f"DROP TABLE {table}")
        await conn.commit()
    return Latencies(took, elapsed)


async def create_roles(client: RoleClient, count: int) -> list[str]:
    roles = []
    for i in range(count):
        sent = await client.create_role(f"Bench {i}", "You help.", role_id=f"lat-{i:04d}")
        await client.activate(sent.role_id)
        roles.append(sent.role_id)
    return roles


async def awaited_appends(client: RoleClient, roles: list[str], turns: int) -> Latencies:
    took = []
    started = time.perf_counter()
    for i in range(turns):
        t0 = time.perf_counter()
        await client.append_message(roles[i % len(roles)], "user", f"turn {i}: where is my order?")
        took.append(time.perf_counter() - t0)
    return Latencies(took, time.perf_counter() - started)


async def changes_tail(settings: Settings, ends: Endpoints) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=ends.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = await reader.partitions(consumer._client, topics.topic_name(settings, "changes"))
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def append_to_change(
    client: RoleClient, tail: AIOKafkaConsumer, roles: list[str], turns: int, app_id: str
) -> Latencies:
    """Append, then wait for that event's change record from the worker ``app_id``."""
    took = []
    started = time.perf_counter()
    for i in range(turns):
        t0 = time.perf_counter()
        sent = await client.append_message(roles[i % len(roles)], "user", f"turn {i}: hello")
        wanted = str(sent.event_id)
        while not await _seen(tail, wanted, app_id):
            pass
        took.append(time.perf_counter() - t0)
    return Latencies(took, time.perf_counter() - started)


async def _seen(tail: AIOKafkaConsumer, event_id: str, app_id: str) -> bool:
    batch = await tail.getmany(timeout_ms=1000)
    for recs in batch.values():
        for rec in recs:
            if dict(rec.headers or ()).get(records.APP_HEADER, b"").decode() != app_id:
                continue
            out = records.decode(rec.value or b"")
            if isinstance(out, records.ChangeRecord) and out.event_id == event_id:
                return True
    return False


async def background_load(
    settings: Settings, ends: Endpoints, stop: asyncio.Event, rate: float
) -> int:
    """The bench/fold workload at ``rate`` events/s, in batches of 100 (a worker
    cannot keep up with an unbounded flood: its lag, not the turn, would be measured)."""
    workload = Workload(WorkloadSpec(roles=200, seed=3, prefix="load"), FoldConfig())
    sent, started = 0, time.monotonic()
    async with RoleClient(settings, workload.spec.tenant_id, endpoints=ends) as client:
        while not stop.is_set():
            await client.send_many(workload.take(100))
            sent += 100
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    return sent


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    say("baseline: awaited INSERT + COMMIT into the embedded PostgreSQL")
    base = (await pg_baseline(ends.pg_dsn, args.turns)).row()
    app_id = f"bench-lat-{uuid.uuid4().hex[:6]}"
    async with RoleClient(settings, TENANT, endpoints=ends) as client:
        roles = await create_roles(client, args.roles)
        # Like the baseline, with nothing else running: the worker starts after.
        say(f"{args.turns} awaited appends")
        appends = (await awaited_appends(client, roles, args.turns)).row()
    worker = WorkerProcess(settings, ends, app_id, logs / "worker.log").start()
    try:
        await worker.wait_for_log("ready:", 120)
        async with RoleClient(settings, TENANT, endpoints=ends) as client:
            tail = await changes_tail(settings, ends)
            try:
                say(f"{args.turns} turns: append -> change record, light load")
                light = (await append_to_change(client, tail, roles, args.turns, app_id)).row()
                say(f"{args.load_turns} turns: append -> change record, under load")
                stop = asyncio.Event()
                load = asyncio.create_task(background_load(settings, ends, stop, args.load_rate))
                await asyncio.sleep(2.0)
                loaded = (
                    await append_to_change(client, tail, roles, args.load_turns, app_id)
                ).row()
                stop.set()
                loaded["background_events"] = await load
            finally:
                await tail.stop()
    finally:
        worker.stop()
    loaded["load_rate"] = args.load_rate
    return {
        "pg_insert_commit": base, "awaited_appends": appends, "append_to_change_light": light,
        "append_to_change_loaded": loaded, "ratio": appends["per_s"] / base["per_s"],
        "goal_ratio": GOAL_APPENDS, "goal_p99_ms": GOAL_P99_MS,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    table = Table(title="bench/latency: one conversation turn at a time")
    for col in ("measure", "turns/s", "p50", "p99"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, key in (
        ("baseline: INSERT + COMMIT (PostgreSQL)", "pg_insert_commit"),
        ("awaited append_message", "awaited_appends"),
        ("append -> change record, light load", "append_to_change_light"),
        ("append -> change record, under load", "append_to_change_loaded"),
    ):
        row = result[key]
        table.add_row(
            name, f"{row['per_s']:,.0f}", f"{row['p50_ms']:.2f} ms", f"{row['p99_ms']:.2f} ms"
        )
    console.print(table)
    console.print(
        f"appends / baseline = {result['ratio']:.2f} (goal >= {GOAL_APPENDS}); "
        f"append -> change p99 at light load = "
        f"{result['append_to_change_light']['p99_ms']:.1f} ms (goal <= {GOAL_P99_MS:.0f} ms)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with bench_settings(12) as settings, tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(settings, args, Path(tmp)))
    show(result)
    say(f"saved {save('latency', result)}")
    met = (
        result["ratio"] >= GOAL_APPENDS
        and result["append_to_change_light"]["p99_ms"] <= GOAL_P99_MS
    )
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
