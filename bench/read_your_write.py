"""bench/read_your_write: append a turn -> the turn is in the role's prompt
context, p50/p99, at a light load (one turn at a time).

A chat runtime awaits each turn it appends and then reads the role's context
for the next model call; this is the delay its users feel. Measured end to
end through the real pipeline: ``RoleClient.append_message`` (awaited: the
WAL write is acknowledged) -> ``rolebus worker`` folds it into the changes
topic -> ``rolebus project`` writes it into PostgreSQL -> a loop calling
``rolebus.projectors.queries.context`` (the query behind ``rolebus context``,
default 2000-token budget) sees it as the last message.

Steps: start a worker and a projector (subprocesses, fresh group and schema),
create and activate one role, wait until the store shows it active, send
untimed warm-up turns, then the timed turns, one at a time, then as many
``context()`` calls alone (the read's own share). Goal: p99 of
append -> visible <= 100 ms. Without ROLEBUS_KAFKA_BOOTSTRAP a private local
stack is started for the run and stopped at the end.

    python bench/read_your_write.py [--turns 200] [--warmup 20]
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
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_settings, console, save, say
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.errors import RolebusError
from rolebus.projectors import db, queries
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from testkit.harness import ProjectorProcess, WorkerProcess, worker_env

GOAL_P99_MS = 100.0
TENANT = "bench"
POLL_S = 0.001


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/read_your_write.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--turns", type=int, default=200, help="timed turns")
    p.add_argument("--warmup", type=int, default=20, help="untimed turns first")
    p.add_argument("--partitions", type=int, default=4, help="WAL partitions")
    p.add_argument("--timeout", type=float, default=180.0, help="start-up / per turn, seconds")
    return p.parse_args(argv)


def start_projector(
    settings: Settings, ends: Endpoints, schema: str, logs: Path
) -> ProjectorProcess:
    env = {**worker_env(settings, ends, "bench-ryw"), "ROLEBUS_PG_SCHEMA": schema}
    group = ("--group", f"bench-ryw-{uuid.uuid4().hex[:6]}")
    return ProjectorProcess(env, logs / "projector.log", group).start()


async def wait_active(conn: queries.Conn, role: str, timeout: float) -> None:
    """Until the store shows the role active (worker and projector are up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await queries.role_show(conn, TENANT, role)).lifecycle == "active":
                return
        except RolebusError:
            pass  # not projected yet
        except Exception:  # the projector has not created the tables yet
            await conn.rollback()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"role {role} not active in the store after {timeout}s (see the logs)")


async def turn(
    client: RoleClient, conn: queries.Conn, role: str, i: int, timeout: float
) -> tuple[float, float]:
    """One appended turn: (append acknowledged, visible in context) in seconds."""
    content = f"turn {i}: {uuid.uuid4().hex}"
    started = time.perf_counter()
    await client.append_message(role, "user" if i % 2 == 0 else "assistant", content)
    acked = time.perf_counter()
    while time.perf_counter() - started < timeout:
        built = await queries.context(conn, None, TENANT, role)
        if built.messages[-1]["content"] == content:
            return acked - started, time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"turn {i} not visible in the context after {timeout}s")


async def measure(settings: Settings, ends: Endpoints, schema: str, args: argparse.Namespace
                  ) -> tuple[list[float], list[float], list[float]]:  # fmt: skip
    async with (
        RoleClient(settings, TENANT, endpoints=ends) as client,
        db.connect(settings, ends, schema, autocommit=True) as conn,
    ):
        role = (await client.create_role("Bench", "You answer briefly.")).role_id
        await client.activate(role)
        await wait_active(conn, role, args.timeout)
        say(f"role {role} is active in the store; {args.warmup} warm-up turns")
        for i in range(args.warmup):
            await turn(client, conn, role, i, args.timeout)
        acks, visible = [], []
        for i in range(args.warmup, args.warmup + args.turns):
            ack, seen = await turn(client, conn, role, i, args.timeout)
            acks.append(ack)
            visible.append(seen)
        return acks, visible, await read_alone(conn, role, args.turns)


async def read_alone(conn: queries.Conn, role: str, n: int) -> list[float]:
    """What one ``context()`` call costs (part of every append -> visible sample)."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await queries.context(conn, None, TENANT, role)
        samples.append(time.perf_counter() - started)
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": 1000 * cuts[49], "p99_ms": 1000 * cuts[98], "max_ms": 1000 * max(samples)}


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    schema = f"bench_ryw_{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(settings, ends, f"bench-ryw-{uuid.uuid4().hex[:6]}", logs / "w.log")
    worker.start()
    projector = start_projector(settings, ends, schema, logs)
    try:
        acks, visible, reads = await measure(settings, ends, schema, args)
    except Exception:
        say(f"worker log:\n{worker.log_text()[-2000:]}")
        say(f"projector log:\n{projector.log_text()[-2000:]}")
        raise
    finally:
        projector.stop()
        worker.stop()
    return {
        "turns": args.turns, "warmup": args.warmup, "partitions": settings.wal_partitions,
        "append_ack": percentiles(acks), "append_to_context": percentiles(visible),
        "context_read": percentiles(reads),
        "goal_p99_ms": GOAL_P99_MS,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"bench/read_your_write: {result['turns']} turns, one at a time")
    for column in ("measure", "p50", "p99", "max"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    for name, key in (("append (acknowledged)", "append_ack"),
                      ("append -> visible in context()", "append_to_context"),
                      ("context() alone, same role", "context_read")):  # fmt: skip
        p = result[key]
        table.add_row(name, *(f"{p[k]:.1f} ms" for k in ("p50_ms", "p99_ms", "max_ms")))
    console.print(table)
    console.print(f"goal: append -> visible p99 <= {GOAL_P99_MS:.0f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base, tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(replace(base), args, Path(tmp)))
    show(result)
    say(f"saved {save('read_your_write', result)}")
    p99 = result["append_to_context"]["p99_ms"]
    if p99 > GOAL_P99_MS:
        print(f"bench/read_your_write: p99 {p99:.1f} ms is above the goal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
