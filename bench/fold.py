"""bench/fold: events/s folded by a `rolebus worker` vs draining + decoding the same WAL.

Steps (progress on stderr, a table and a JSON file in bench/results at the end):

1. produce N events of a synthetic workload (``tests/testkit/workload.py``:
   lifecycles, messages with flags and tool calls, persona updates, manual
   commits, rollbacks, forks, refusals, redeliveries) with RoleClient;
2. baseline: a plain AIOKafkaConsumer (no group, no instrumentation) drains
   the whole WAL and ``codec.decode``s every record (the least any consumer
   must do), median of ``--raw-rounds`` rounds; the raw drain alone is shown too;
3. in process: Avro decode alone vs decode + ``fold_log`` (the pure fold)
   of the same records, with the worker's GC setting;
4. one worker (fresh app id) folds everything; the rate is taken from the
   moment it logged "ready" (partitions assigned and restored) to the
   timestamp of the last output record it wrote (same clock), so process
   start and group join are excluded, like the baseline's connection setup;
   its peak RSS is read from /proc before it stops;
5. that worker is stopped (SIGTERM) and started again with the same app id:
   time until it restored its partitions ("ready"), vs a full re-fold by a
   new app id (time until it wrote every output);
6. ``--grow K``: the WAL grows to K times N events and a fresh worker folds it
   all: its peak RSS shows whether memory follows the number of commits.

Goals: worker / (drain + decode) >= 0.3 and in-process (decode + fold) /
decode >= 0.35. Without ROLEBUS_KAFKA_BOOTSTRAP a private local stack is
started for the run and stopped at the end (bench/common.py).

    python bench/fold.py [--events 50000] [--grow 4] [--partitions 12] [--raw-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
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
from rolebus.streams.runtime.process import GC_YOUNG_THRESHOLD
from rolebus.wal import codec, reader, records, topics
from rolebus.wal.client import RoleClient
from rolebus.wal.events import WalPosition
from testkit.harness import WorkerProcess
from testkit.workload import Workload, WorkloadSpec

GOAL_WORKER = 0.3
"""worker / (drain + decode)"""
GOAL_FOLD = 0.35
"""in process: (decode + fold) / decode"""


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
    p.add_argument("--batch-size", type=int, default=5000, help="worker --batch-size")
    p.add_argument(
        "--grow",
        type=int,
        default=4,
        help="then fold a WAL this many times larger (peak RSS at two log sizes); 0 skips it",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="per worker run, seconds")
    return p.parse_args(argv)


# --- producing -------------------------------------------------------------------------


async def produce(settings: Settings, ends: Endpoints, workload: Workload, count: int) -> int:
    """Write ``count`` more events; return how many outputs (changes + rejections)
    the whole workload implies so far (redeliveries of an event id give none)."""
    envelopes = workload.take(count)
    say(f"generated {len(envelopes)} events for {workload.spec.roles} roles")
    started = time.monotonic()
    async with RoleClient(settings, workload.spec.tenant_id, endpoints=ends) as client:
        for i in range(0, len(envelopes), 1000):
            await client.send_many(envelopes[i : i + 1000])
    say(f"produced in {time.monotonic() - started:.1f}s")
    return sum(n for kind, n in workload.outcomes.items() if kind != "duplicate")


# --- baseline and in-process context ----------------------------------------------------


async def raw_drain(settings: Settings, ends: Endpoints, decode: bool) -> tuple[float, list[Any]]:
    """Seconds to drain the WAL with a plain consumer (decoding each record), and the records."""
    name = topics.topic_name(settings, "wal")
    async with reader.open_consumer(settings, ends, "rolebus-bench") as consumer:
        tps = await reader.assign_from_beginning(consumer, [name], missing_ok=True)
        total = sum((await consumer.end_offsets(tps)).values())
        got: list[Any] = []
        started = time.perf_counter()
        while len(got) < total:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                if decode:
                    for rec in recs:
                        with contextlib.suppress(DecodeError):
                            codec.decode(rec.value)
                got.extend(recs)
        return time.perf_counter() - started, got


def in_process(recs: list[Any], settings: Settings) -> dict[str, float]:
    """Decode alone vs decode + the pure fold, with the worker's GC setting."""
    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    try:
        started = time.perf_counter()
        for rec in recs:
            with contextlib.suppress(DecodeError):
                codec.decode(rec.value)
        decode_s = time.perf_counter() - started
        items = [WalItem(WalPosition(r.topic, r.partition, r.offset), r.key, r.value) for r in recs]
        parts = items_by_partition(items)
        started = time.perf_counter()
        fold_log(parts, FoldConfig.from_settings(settings))
        fold_s = time.perf_counter() - started
    finally:
        gc.set_threshold(*old)
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


def logged_ms(log_text: str, needle: str) -> int:
    """Epoch milliseconds of the first log line holding ``needle`` (asctime, local time)."""
    line = next(x for x in log_text.splitlines() if needle in x)
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return int(stamp.timestamp() * 1000)


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
        assert worker.proc is not None
        rss = peak_rss_mb(worker.proc.pid)
    finally:
        worker.stop()
    # From the moment the worker was ready (its log line, same clock as the
    # record timestamps it wrote) to its last output record.
    ready_ms = logged_ms(worker.log_text(), "ready:")
    span_s = max((count.last_ms or 0) - ready_ms, 1) / 1000
    return {
        "ready_s": ready,
        "done_s": done,
        "rate": count.records / span_s,
        "outputs": count.records,
        "peak_rss_mb": rss,
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


async def baselines(settings: Settings, ends: Endpoints, rounds_n: int) -> dict[str, Any]:
    AIOKafkaInstrumentor().uninstrument()  # the baseline is a plain consumer
    drained, decoded = [], []
    for i in range(rounds_n):
        seconds, recs = await raw_drain(settings, ends, decode=False)
        drained.append(len(recs) / seconds)
        seconds, recs = await raw_drain(settings, ends, decode=True)
        decoded.append(len(recs) / seconds)
        say(f"round {i + 1}: raw drain {drained[-1]:,.0f}/s, drain + decode {decoded[-1]:,.0f}/s")
    context = in_process(recs, settings)
    say(f"in process: decode {context['decode_per_s']:,.0f}/s, "
        f"decode+fold {context['fold_per_s']:,.0f}/s")  # fmt: skip
    return {
        "events": len(recs), "raw_per_s": statistics.median(drained), "raw_rounds": drained,
        "decoded_per_s": statistics.median(decoded), "decoded_rounds": decoded, **context,
    }  # fmt: skip


async def run(settings: Settings, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    ends = resolve(settings)
    await topics.ensure(settings, ends)
    spec = WorkloadSpec(roles=args.roles or max(10, args.events // 100), seed=42, prefix="b")
    workload = Workload(spec, FoldConfig.from_settings(settings))
    expected = await produce(settings, ends, workload, args.events)
    base = await baselines(settings, ends, args.raw_rounds)
    counter = OutputCounter(settings, ends)
    await counter.start()
    try:
        first_id, second_id, big_id = (f"bench-{uuid.uuid4().hex[:6]}" for _ in range(3))
        say(f"worker {first_id}: folding {base['events']} records")
        first = await fold_run(settings, ends, counter, first_id, expected, args, logs)
        rss = first["peak_rss_mb"]
        say(f"worker: {first['rate']:,.0f}/s, peak RSS {rss:.0f} MiB; restarting it")
        restart = await restart_run(settings, ends, first_id, logs)
        say(f"restarted worker ready in {restart['ready_s']:.1f}s; full re-fold by {second_id}")
        refold = await fold_run(settings, ends, counter, second_id, expected, args, logs)
        grown = None
        if args.grow > 1:
            total = await produce(settings, ends, workload, args.events * (args.grow - 1))
            say(f"worker {big_id}: folding {args.events * args.grow} records")
            grown = await fold_run(settings, ends, counter, big_id, total, args, logs)
            grown["events"] = args.events * args.grow
    finally:
        await counter.stop()
    return {
        **base, "partitions": settings.wal_partitions,
        "worker_per_s": first["rate"], "ratio": first["rate"] / base["decoded_per_s"],
        "fold_ratio": base["fold_per_s"] / base["decode_per_s"],
        "goal_worker": GOAL_WORKER, "goal_fold": GOAL_FOLD,
        "first_run": first, "restart": restart, "refold": refold, "grown": grown,
    }  # fmt: skip


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"bench/fold: {result['events']} events, {result['partitions']} partitions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("raw aiokafka drain (median)", f"{result['raw_per_s']:,.0f} events/s"),
        ("baseline: drain + codec.decode (median)", f"{result['decoded_per_s']:,.0f} events/s"),
        ("rolebus worker (1 process)", f"{result['worker_per_s']:,.0f} events/s"),
        ("ratio worker / (drain + decode)", f"{result['ratio']:.3f} (goal >= {GOAL_WORKER})"),
        ("in process: Avro decode only", f"{result['decode_per_s']:,.0f} events/s"),
        ("in process: decode + fold_log", f"{result['fold_per_s']:,.0f} events/s"),
        ("ratio (decode + fold) / decode", f"{result['fold_ratio']:.3f} (goal >= {GOAL_FOLD})"),
        ("restarted worker: ready after", f"{result['restart']['ready_s']:.1f}s"),
        ("  restored", result["restart"]["recovered"]),
        ("full re-fold (new app id): done after", f"{result['refold']['done_s']:.1f}s"),
        (f"worker peak RSS at {result['events']} events",
         f"{result['first_run']['peak_rss_mb']:.0f} MiB"),
    ]  # fmt: skip
    if result["grown"]:
        grown = result["grown"]
        rss = f"{grown['peak_rss_mb']:.0f} MiB ({grown['rate']:,.0f} events/s)"
        rows.append((f"worker peak RSS at {grown['events']} events", rss))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with bench_settings(args.partitions) as base, tempfile.TemporaryDirectory() as tmp:
        settings = replace(base, commit_every=args.commit_every)
        result = asyncio.run(run(settings, args, Path(tmp)))
    show(result)
    say(f"saved {save('fold', result)}")
    met = result["ratio"] >= GOAL_WORKER and result["fold_ratio"] >= GOAL_FOLD
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
