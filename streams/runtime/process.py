"""Running one stream worker process: ``run_worker`` (``rolebus worker``).

Before the loop starts: the rolebus topics are ensured, the state changelog
is created (compacted, co-partitioned with the WAL, replicated like the
other topics), and a group that has committed WAL offsets but no changelog
is refused (it would resume with empty states). Tracing gets an SDK tracer
provider, so batch spans are real and their context reaches the outputs.

Logs go to stderr: progress lines at INFO (``--verbose``: DEBUG, and
aiokafka at INFO). SIGTERM/SIGINT finish the batch in flight, which stores
and commits its work, then leave the group: a clean stop takes about one
batch. The exit status is non-zero after any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, RolebusError
from rolebus.streams.core.state import FoldConfig
from rolebus.streams.runtime import changelog
from rolebus.streams.runtime.changelog import Restored
from rolebus.streams.runtime.commitstore import CommitStore
from rolebus.streams.runtime.options import WorkerOptions
from rolebus.streams.runtime.worker import Topics, Worker
from rolebus.tracing import install_provider
from rolebus.wal import topics
from rolebus.wal.connect import admin_client, within

log = logging.getLogger("rolebus.streams.worker")
GC_YOUNG_THRESHOLD = 50_000
PRODUCER_BATCH_BYTES = 128 * 1024
FETCH_MAX_BYTES = 16 * 1024 * 1024
"""Most bytes one fetch buffers: bounds the worker's memory between batches."""


def worker_topics(settings: Settings) -> Topics:
    name = {kind: topics.topic_name(settings, kind) for kind in topics.KINDS}
    return Topics(
        name["wal"], name["changes"], name["commits"], name["rejections"],
        changelog.changelog_topic(settings.app_id),
    )  # fmt: skip


def changelog_configs(settings: Settings, options: WorkerOptions) -> dict[str, str]:
    """Room for a whole role state; compaction keeps the last value of each key."""
    return {
        "cleanup.policy": "compact",
        "max.message.bytes": str(topics.max_state_bytes(settings)),
        "min.insync.replicas": str(options.min_insync_replicas),
        "segment.bytes": str(16 * 1024 * 1024),
        "min.cleanable.dirty.ratio": "0.2",
    }


async def prepare(settings: Settings, ends: Endpoints, options: WorkerOptions) -> WorkerOptions:
    """Ensure the topics and the changelog; its replication follows the cluster."""
    for report in await topics.ensure(settings, ends):
        if report.action == "drift":
            log.warning("topic %s drifted: %s", report.name, "; ".join(report.drift))
    async with admin_client(settings, ends) as admin:
        brokers = await within(settings, ends, topics.cluster_size(admin), "describe cluster")
        rf, isr = topics.replication(settings, brokers)
        options = replace(options, replication_factor=rf, min_insync_replicas=isr)
        name = changelog.changelog_topic(settings.app_id)
        if name in set(await admin.list_topics()):
            await _check_partitions(admin, settings, name)
        else:
            await _refuse_orphan_group(settings, ends)
            spec = NewTopic(name, settings.wal_partitions, rf,
                            topic_configs=changelog_configs(settings, options))  # fmt: skip
            topics.check_created(await admin.create_topics([spec]), brokers)
    return options


async def _check_partitions(admin: Any, settings: Settings, name: str) -> None:
    partitions, _, _ = await topics.describe(admin, name)
    if partitions != settings.wal_partitions:
        raise ConfigError(
            f"changelog {name} has {partitions} partitions but the WAL has "
            f"{settings.wal_partitions}: it must be co-partitioned with the WAL "
            "(use a new ROLEBUS_APP_ID to fold again from scratch)"
        )


async def _refuse_orphan_group(settings: Settings, ends: Endpoints) -> None:
    """A group with committed offsets but no changelog would skip what it folded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap, group_id=settings.app_id, enable_auto_commit=False
    )
    await within(settings, ends, consumer.start(), "the consumer connection")
    try:
        wal = topics.topic_name(settings, "wal")
        tps = [TopicPartition(wal, p) for p in range(settings.wal_partitions)]
        committed = [await consumer.committed(tp) for tp in tps]
    finally:
        await consumer.stop()
    if any(c is not None for c in committed):
        raise ConfigError(
            f"ROLEBUS_APP_ID={settings.app_id}: the group has committed WAL offsets but its "
            f"state changelog {changelog.changelog_topic(settings.app_id)} does not exist "
            "(an older faust worker, or a deleted changelog): use a new ROLEBUS_APP_ID"
        )


@contextlib.asynccontextmanager
async def open_worker(
    settings: Settings, ends: Endpoints, options: WorkerOptions
) -> AsyncIterator[Worker]:
    """A started worker's Kafka clients, stopped (group left) on exit."""
    client = f"rolebus-worker-{settings.app_id}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap, group_id=settings.app_id, client_id=client,
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(options.session_timeout_s * 1000),
        heartbeat_interval_ms=max(300, int(options.session_timeout_s * 100)),
        max_poll_records=options.batch_max, fetch_max_bytes=FETCH_MAX_BYTES,
    )  # fmt: skip
    producer = AIOKafkaProducer(
        bootstrap_servers=ends.kafka_bootstrap, client_id=client, acks="all",
        enable_idempotence=True, compression_type=options.compression, linger_ms=0,
        # Small producer batches: a rollback reads one commit back, and Kafka
        # returns (and aiokafka decompresses) the whole batch that holds it.
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=topics.max_state_bytes(settings) + 65536,
    )  # fmt: skip
    restore_consumer = AIOKafkaConsumer(
        bootstrap_servers=ends.kafka_bootstrap, client_id=f"{client}-restore",
        enable_auto_commit=False, fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=topics.max_state_bytes(settings) + 65536,
    )  # fmt: skip
    store = CommitStore(settings, ends, options.commit_cache)
    tps = worker_topics(settings)

    async def restorer(partitions: list[int]) -> Restored:
        return await changelog.restore(restore_consumer, tps.changelog, partitions)

    for started in (producer, restore_consumer, consumer):
        await within(settings, ends, started.start(), "the worker's Kafka connections")
    try:
        yield Worker(
            app_id=settings.app_id, topics=tps, config=FoldConfig.from_settings(settings),
            options=options, consumer=consumer, producer=producer, restorer=restorer,
            commits=store, wal_partitions=settings.wal_partitions,
        )  # fmt: skip
    finally:
        await consumer.stop()
        await store.stop()
        await restore_consumer.stop()
        await producer.stop()


async def serve(settings: Settings, ends: Endpoints, options: WorkerOptions) -> None:
    """Prepare, then fold until SIGTERM/SIGINT."""
    options = await prepare(settings, ends, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_worker(settings, ends, options) as worker:
        log.info(
            "worker %s: group %s, WAL %s (%d partitions), batches of up to %d",
            worker.app_id, settings.app_id, worker.topics.wal, settings.wal_partitions,
            options.batch_max,
        )  # fmt: skip
        await worker.run(stop)
        worker.report(force=True)
        log.info("stopping: the last batch is stored and committed; %d records folded",
                 worker.stats.events)  # fmt: skip


def logging_config(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True,
    )  # fmt: skip
    logging.getLogger("rolebus").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("aiokafka", "kafka", "opentelemetry"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def run_worker(
    settings: Settings, ends: Endpoints, options: WorkerOptions | None = None,
    *, verbose: bool = False,
) -> None:  # fmt: skip
    """Run one worker until SIGTERM/SIGINT (raises SystemExit on failure)."""
    logging_config(verbose)
    # The fold allocates many short-lived objects per event; collecting the
    # young generation every 700 allocations made the collector a third of
    # the folding time. Its cost per collection stays small at this size.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    install_provider("rolebus-worker")
    try:
        asyncio.run(serve(settings, ends, options or WorkerOptions()))
    except RolebusError as exc:
        log.critical("worker stopped: %s", exc)
        raise SystemExit(1) from exc
    except Exception as exc:  # a bug or a broken store: stop, never skip records
        log.critical("worker stopped: %r", exc, exc_info=True)
        raise SystemExit(1) from exc
