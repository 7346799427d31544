"""Running one stream processor process: ``run_worker`` (``rolebus worker``).

Before faust starts: the rolebus topics are ensured (the WAL must exist with
its partition count before faust declares its changelogs against it) and the
changelogs' replication is derived from the cluster size like the other
topics'. Tracing gets an SDK tracer provider so fold spans are real, but the
aiokafka instrumentation is NOT installed here: it would wrap every record
faust consumes and produces in spans of its own; the worker propagates the
context itself (WAL headers -> ``rolebus.fold`` span -> output headers).

Logs go to stderr: rolebus progress lines at INFO, faust/mode/aiokafka at
WARNING unless ``verbose``. SIGTERM/SIGINT stop the worker cleanly (faust
commits what was acknowledged); the exit status is non-zero after a crash.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.config
import sys
from dataclasses import replace
from typing import Any

import faust
from aiokafka.admin import NewTopic

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError
from rolebus.streams.app import WorkerOptions, changelog_configs, make_app
from rolebus.streams.tables import changelog_name
from rolebus.tracing import install_provider
from rolebus.wal import topics
from rolebus.wal.connect import admin_client, within

log = logging.getLogger("rolebus.streams.worker")
GC_YOUNG_THRESHOLD = 50_000
QUIET_LOGGERS = ("faust", "mode", "aiokafka", "kafka", "opentelemetry")


async def prepare(settings: Settings, ends: Endpoints, options: WorkerOptions) -> WorkerOptions:
    """Ensure the topics and changelogs exist; changelog replication follows the cluster."""
    reports = await topics.ensure(settings, ends)
    for report in reports:
        if report.action == "drift":
            log.warning("topic %s drifted: %s", report.name, "; ".join(report.drift))
    async with admin_client(settings, ends) as admin:
        brokers = await within(settings, ends, topics.cluster_size(admin), "describe cluster")
        rf, isr = topics.replication(settings, brokers)
        options = replace(options, replication_factor=rf, min_insync_replicas=isr)
        await _ensure_changelogs(admin, settings, options)
    return options


async def _ensure_changelogs(admin: Any, settings: Settings, options: WorkerOptions) -> None:
    """Create the tables' changelogs before faust joins the group, so the first
    assignment already includes them (faust would race its own creation)."""
    configs = {**changelog_configs(settings, options), "cleanup.policy": "compact"}
    existing = set(await admin.list_topics())
    for table in ("roles", "commits"):
        name = changelog_name(settings.app_id, table)
        if name not in existing:
            spec = NewTopic(
                name, settings.wal_partitions, options.replication_factor, topic_configs=configs
            )
            await admin.create_topics([spec])
            continue
        partitions, _, _ = await topics.describe(admin, name)
        if partitions != settings.wal_partitions:
            raise ConfigError(
                f"changelog {name} has {partitions} partitions but the WAL has "
                f"{settings.wal_partitions}: tables must be co-partitioned with the WAL "
                "(use a new ROLEBUS_APP_ID, or delete the changelog to re-fold from scratch)"
            )


def logging_config(verbose: bool) -> dict[str, Any]:
    quiet = "INFO" if verbose else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
            },
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": quiet} for name in QUIET_LOGGERS},
            "rolebus": {"level": "DEBUG" if verbose else "INFO"},
        },
    }


def run_worker(
    settings: Settings, ends: Endpoints, options: WorkerOptions | None = None,
    *, verbose: bool = False,
) -> None:  # fmt: skip
    """Run one worker until SIGTERM/SIGINT (raises SystemExit)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # The fold allocates many short-lived objects per event; collecting the
    # young generation every 700 allocations made the collector a third of
    # the folding time. Its cost per collection stays small at this size.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    logging.config.dictConfig(logging_config(verbose))
    options = loop.run_until_complete(prepare(settings, ends, options or WorkerOptions()))
    install_provider("rolebus-worker")  # no aiokafka instrumentation (module docstring)
    app = make_app(settings, ends, options)
    log.info(
        "worker %s: group %s, WAL %s (%d partitions), batches of %d",
        app.conf.broker_client_id, settings.app_id, topics.topic_name(settings, "wal"),
        settings.wal_partitions, options.batch_size,
    )  # fmt: skip
    worker = faust.Worker(
        app, loop=loop, loglevel="INFO", logfile=sys.stderr, quiet=True,
        stdout=sys.stderr, stderr=sys.stderr, logging_config=logging_config(verbose),
        console_port=0,
    )  # fmt: skip
    worker.execute_from_commandline()
