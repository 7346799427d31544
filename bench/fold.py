"""bench/fold: events/s folded by a `rolebus worker` vs a raw aiokafka consumer
draining the same WAL, and time-to-ready of a restarted worker vs a full re-fold.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. produce N events of a synthetic workload (``rolebus.streams.workload``:
   lifecycles, messages with flags and tool calls, persona updates, manual
   commits, rollbacks, forks, refusals, redeliveries) with RoleClient;
2. baseline: a plain AIOKafkaConsumer (no group, aiokafka instrumentation
   removed) drains the whole WAL, median of ``--raw-rounds`` rounds;
3. in-process context: Avro decode alone, and the pure fold (decode + fold)
   of the same records, to show the ceiling any Python worker has;
4. one worker (fresh app id) folds everything; the rate is taken between the
   first and the last output record it wrote (broker timestamps), so process
   start and group join are excluded, like the baseline's connection setup;
5. that worker is stopped (SIGTERM) and started again with the same app id:
   time until its tables are recovered from the changelogs ("ready"), vs a
   full re-fold by a new app id (time until it wrote every output).

Goal: worker / raw >= 0.4. Without ROLEBUS_KAFKA_BOOTSTRAP a private local
stack is started for the run and stopped at the end (bench/common.py).

    python bench/fold.py [--events 50000] [--partitions 12] [--raw-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaConsumer
from common import bench_settings, console, save, say
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.errors import DecodeError
from rolebus.streams.core.log import WalItem, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig
from rolebus.wal import codec, reader, records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import WalPosition
from testkit.harness import WorkerProcess
from testkit.workload import Workload, WorkloadSpec

GOAL = 0.4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/fold.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=50_000, help="events to produce")
    p.add_argument("--roles", type=int, default=None, help="roles (default: events / 100)")
    p.add_argument("--partitions", type=int, default=12, help="WAL partitions")
    p.add_argument("--commit-every", type=int, default=50, help="auto commit cadence")
    p.add_argument("--raw-rounds", type=int, default=3, help="baseline rounds (median)")
    p.add_argument("--batch-size", type=int, default=1000, help="worker --batch-size")
    p.add_argument("--timeout", type=float, default=900.0, help="per worker run, seconds")
    return p.parse_args(argv)


# --- producing -------------------------------------------------------------------------


async def produce(settings: Settings, ends: Endpoints, args: argparse.Namespace) -> int:
    """Write the workload; return how many outputs (changes + rejections) it implies."""
    spec = WorkloadSpec(roles=args.roles or max(10, args.events // 100), seed=42, prefix="b")
    workload = Workload(spec, FoldConfig.from_settings(settings))
    envelopes = workload.take(args.events)
    say(f"generated {len(envelopes)} events for {spec.roles} roles")
    started = time.monotonic()
    async with RoleClient(settings, spec.tenant_id, endpoints=ends) as client:
        for i in range(0, len(envelopes), 1000):
            await client.send_many(envelopes[i : i + 1000])
    say(f"produced in {time.monotonic() - started:.1f}s")
    # Duplicates (redeliveries of the same event id) produce no output.
    return sum(n for kind, n in workload.outcomes.items() if kind != "duplicate")


# --- baseline and in-process context ----------------------------------------------------


async def raw_drain(settings: Settings, ends: Endpoints) -> tuple[float, list[Any]]:
    """Seconds to drain the WAL with a plain consumer, and the records."""
    name = topics.topic_name(settings, "wal")
    async with reader.open_consumer(settings, ends, "rolebus-bench") as consumer:
        tps = await reader.assign_from_beginning(consumer, [name], missing_ok=True)
        total = sum((await consumer.end_offsets(tps)).values())
        got: list[Any] = []
        started = time.perf_counter()
        while len(got) < total:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                got.extend(recs)
        return time.perf_counter() - started, got


def in_process(recs: list[Any], settings: Settings) -> dict[str, float]:
    started = time.perf_counter()
    for rec in recs:
        with contextlib.suppress(DecodeError):
            codec.decode(rec.value)
    decode_s = time.perf_counter() - started
    items = [WalItem(WalPosition(r.topic, r.partition, r.offset), r.key, r.value) for r in recs]
    started = time.perf_counter()
    fold_log(items_by_partition(items), FoldConfig.from_settings(settings))
    fold_s = time.perf_counter() - started
    return {"decode_per_s": len(recs) / decode_s, "fold_per_s": len(recs) / fold_s}


# --- worker runs ---------------------------------------------------------------------------


@dataclass
class Count:
    records: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


class OutputCounter:
    """Counts changes + rejections written by one app id (header), without decoding."""

    def __init__(self, settings: Settings, ends: Endpoints) -> None:
        self.settings, self.ends = settings, ends
        self.counts: dict[str, Count] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        self.consumer = await self._stack.enter_async_context(
            reader.open_consumer(self.settings, self.ends, "rolebus-bench")
        )
        names = [topics.topic_name(self.settings, k) for k in ("changes", "rejections")]
        await reader.assign_from_beginning(self.consumer, names, missing_ok=True)

    async def stop(self) -> None:
        await self._stack.aclose()

    async def poll(self) -> None:
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=500, max_records=50_000)
        for recs in batch.values():
            for rec in recs:
                app = dict(rec.headers or ()).get(records.APP_HEADER, b"").decode()
                count = self.counts.setdefault(app, Count())
                count.records += 1
                count.first_ms = min(rec.timestamp, count.first_ms or rec.timestamp)
                count.last_ms = max(rec.timestamp, count.last_ms or 0)

    async def wait(
        self, app_id: str, expected: int, timeout_s: float, worker: WorkerProcess
    ) -> Count:
        deadline = time.monotonic() + timeout_s
        shown = 0.0
        while self.counts.get(app_id, Count()).records < expected:
            if time.monotonic() > deadline or (worker.proc and worker.proc.poll() is not None):
                raise RuntimeError(f"worker {app_id} did not finish:\n{worker.log_text()[-3000:]}")
            await self.poll()
            if time.monotonic() - shown > 5:
                shown = time.monotonic()
                say(f"  {app_id}: {self.counts.get(app_id, Count()).records}/{expected} outputs")
        return self.counts[app_id]


async def fold_run(
    settings: Settings, ends: Endpoints, counter: OutputCounter, app_id: str,
    expected: int, args: argparse.Namespace, logs: Path,
) -> dict[str, float]:  # fmt: skip
    worker = WorkerProcess(settings, ends, app_id, logs / f"{app_id}.log",
                           ("--batch-size", str(args.batch_size)))  # fmt: skip
    worker.start()
    try:
        ready = await worker.wait_for_log("ready:", 120)
        count = await counter.wait(app_id, expected, args.timeout, worker)
        done = time.monotonic() - worker.started_at
    finally:
        worker.stop()
    span_s = max((count.last_ms or 0) - (count.first_ms or 0), 1) / 1000
    return {
        "ready_s": ready,
        "done_s": done,
        "rate": count.records / span_s,
        "outputs": count.records,
    }


async def restart_run(
    settings: Settings, ends: Endpoints, app_id: str, logs: Path
) -> dict[str, Any]:
    worker = WorkerProcess(settings, ends, app_id, logs / f"{app_id}-restart.log")
    worker.start()
    try:
        ready = await worker.wait_for_log("ready:", 300)
    finally:
        worker.stop()
    line = next(x for x in worker.log_text().splitlines() if "ready:" in x)
    return {"ready_s": ready, "recovered": line.split("ready:")[1].strip()}


# --- main ----------------------------------------------------------------------------------


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    expected = await produce(settings, ends, args)
    AIOKafkaInstrumentor().uninstrument()  # the baseline is a plain consumer
    rounds = []
    for i in range(args.raw_rounds):
        seconds, recs = await raw_drain(settings, ends)
        rounds.append(len(recs) / seconds)
        say(f"raw drain {i + 1}: {len(recs)} records in {seconds:.2f}s = {rounds[-1]:,.0f}/s")
    context = in_process(recs, settings)
    say(f"in process: decode {context['decode_per_s']:,.0f}/s, "
        f"decode+fold {context['fold_per_s']:,.0f}/s")  # fmt: skip
    counter = OutputCounter(settings, ends)
    await counter.start()
    try:
        first_id, second_id = (f"bench-{uuid.uuid4().hex[:6]}" for _ in range(2))
        say(f"worker {first_id}: folding {len(recs)} records")
        first = await fold_run(settings, ends, counter, first_id, expected, args, logs)
        say(f"worker: {first['rate']:,.0f}/s; restarting it")
        restart = await restart_run(settings, ends, first_id, logs)
        say(f"restarted worker ready in {restart['ready_s']:.1f}s; full re-fold by {second_id}")
        refold = await fold_run(settings, ends, counter, second_id, expected, args, logs)
    finally:
        await counter.stop()
    raw = statistics.median(rounds)
    return {
        "events": len(recs), "partitions": settings.wal_partitions,
        "raw_per_s": raw, "raw_rounds": rounds, **context,
        "worker_per_s": first["rate"], "ratio": first["rate"] / raw, "goal": GOAL,
        "first_run": first, "restart": restart, "refold": refold,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"bench/fold: {result['events']} events, {result['partitions']} partitions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("raw aiokafka drain (median)", f"{result['raw_per_s']:,.0f} events/s")
    table.add_row("in process: Avro decode only", f"{result['decode_per_s']:,.0f} events/s")
    table.add_row("in process: decode + fold", f"{result['fold_per_s']:,.0f} events/s")
    table.add_row("rolebus worker (1 process)", f"{result['worker_per_s']:,.0f} events/s")
    table.add_row("ratio worker / raw", f"{result['ratio']:.3f} (goal >= {GOAL})")
    table.add_row("restarted worker: ready after", f"{result['restart']['ready_s']:.1f}s")
    table.add_row("  recovered", result["restart"]["recovered"])
    table.add_row("full re-fold (new app id): done after", f"{result['refold']['done_s']:.1f}s")
    table.add_row("first run: done after", f"{result['first_run']['done_s']:.1f}s")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base, tempfile.TemporaryDirectory() as tmp:
        settings = replace(base, commit_every=args.commit_every)
        result = asyncio.run(run(settings, args, Path(tmp)))
    show(result)
    say(f"saved {save('fold', result)}")


if __name__ == "__main__":
    main()
