"""bench/produce: events/s of RoleClient.send_many vs a raw AIOKafkaProducer.

Both sides use the same broker, topic layout, producer settings (acks=all,
idempotence, lz4, linger, batch size) and batch shape; the baseline sends bytes
encoded before the clock starts, with the OpenTelemetry aiokafka instrumentation
removed (a plain AIOKafkaProducer), while the SDK validates, encodes and traces
(a span and a traceparent header per record) inside the clock. Rounds alternate
(baseline, sdk, ...) after one untimed warm-up round of each, with a full garbage
collection before each timed run; the reported ratio is the median of the
per-round ratios.
Goal: sdk / raw >= 0.7.

    python bench/produce.py [--events 50000] [--rounds 3] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiokafka import AIOKafkaProducer
from common import bench_settings, console, save, say
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from rich.table import Table

from rolebus.config import Settings
from rolebus.endpoints import resolve
from rolebus.wal import codec, topics
from rolebus.wal.client import RoleClient, producer_config
from rolebus.wal.events import Author, Envelope, Flag, MessageAppended

GOAL = 0.7


def workload(client: RoleClient, count: int, roles: int = 200) -> list[Envelope]:
    """Typical chat traffic: assistant/user turns of ~200 chars across many roles."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        author = Author.ASSISTANT if i % 2 else Author.USER
        payload = MessageAppended(
            message_id=f"m-{i}", author=author,
            content=f"turn {i}: " + "the quick brown fox jumps over the lazy dog " * 4,
            tokens_in=120, tokens_out=48, latency_ms=350 + i % 400 if i % 2 else None,
            model="llama3:8b",
            flags=frozenset({Flag.HALLUCINATION}) if i % 50 == 0 else frozenset(),
        )  # fmt: skip
        out.append(
            client.envelope(
                f"r-{i % roles}", payload, occurred_at=start + timedelta(milliseconds=i)
            )
        )
    return out


def batches(items: Sequence[Envelope], size: int) -> list[Sequence[Envelope]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def run_sdk(client: RoleClient, envs: list[Envelope], size: int) -> float:
    started = time.perf_counter()
    for chunk in batches(envs, size):
        await client.send_many(chunk)
    return len(envs) / (time.perf_counter() - started)


async def run_raw(settings: Settings, envs: list[Envelope], size: int) -> float:
    encoded = [(e.role_id.encode(), codec.encode(e)) for e in envs]  # before the clock
    producer = AIOKafkaProducer(
        bootstrap_servers=resolve(settings).kafka_bootstrap, **producer_config(settings)
    )
    await producer.start()
    wal = topics.topic_name(settings, "wal")
    try:
        started = time.perf_counter()
        for i in range(0, len(encoded), size):
            futures = [await producer.send(wal, v, key=k) for k, v in encoded[i : i + size]]
            await asyncio.gather(*futures)
        return len(encoded) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def measure(settings: Settings, count: int, rounds: int, size: int) -> dict[str, object]:
    await topics.ensure(settings, resolve(settings))
    raw_rates, sdk_rates = [], []
    instrumentor = AIOKafkaInstrumentor()
    async with RoleClient(settings, "bench") as client:
        envs = workload(client, count)
        # One untimed round of each first: connections, caches and the broker's JIT
        # warm up (the first round otherwise favours whichever side runs second).
        for r in range(-1, rounds):
            instrumentor.uninstrument()  # the baseline is plain aiokafka
            gc.collect()
            raw_rate = await run_raw(settings, envs, size)
            instrumentor.instrument()
            fresh = workload(client, count)  # new event ids, built outside the clock
            gc.collect()
            sdk_rate = await run_sdk(client, fresh, size)
            if r < 0:
                say(f"warm-up: raw {raw_rate:,.0f} ev/s, sdk {sdk_rate:,.0f} ev/s")
                continue
            raw_rates.append(raw_rate)
            sdk_rates.append(sdk_rate)
            raw_now, sdk_now = raw_rates[-1], sdk_rates[-1]
            say(f"round {r + 1}/{rounds}: raw {raw_now:,.0f} ev/s, sdk {sdk_now:,.0f} ev/s")
    raw, sdk = statistics.median(raw_rates), statistics.median(sdk_rates)
    ratio = statistics.median(s / r for s, r in zip(sdk_rates, raw_rates, strict=True))
    return {
        "events": count, "rounds": rounds, "batch": size, "raw_events_per_s": round(raw),
        "sdk_events_per_s": round(sdk), "ratio": round(ratio, 3), "goal": GOAL,
        "raw_rounds": [round(x) for x in raw_rates], "sdk_rounds": [round(x) for x in sdk_rates],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000, help="events per send_many call")
    args = parser.parse_args()
    with bench_settings() as settings:
        result = asyncio.run(measure(settings, args.events, args.rounds, args.batch))
    table = Table("bench/produce (medians)", "events/s")
    table.add_row("raw AIOKafkaProducer (pre-encoded)", f"{result['raw_events_per_s']:,}")
    table.add_row("RoleClient.send_many (validate+encode+trace)", f"{result['sdk_events_per_s']:,}")
    table.add_row("ratio sdk/raw, median of rounds (goal >= 0.7)", f"{result['ratio']}")
    console.print(table)
    say(f"saved {save('produce', result)}")
    ok = float(str(result["ratio"])) >= GOAL
    if not ok:
        print(f"bench/produce: ratio {result['ratio']} is below the goal {GOAL}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
