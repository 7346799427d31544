"""The faust application of the stream processors: ``make_app(settings, endpoints)``.

One agent, ``rolebus.fold``, consumes ``<prefix>.wal`` and hands each
partition's records to a task of that partition (``rolebus.streams.dispatch``;
faust's own isolated-partition actors lose a partition's subscription in a
race at rebalance, so the worker keeps its own). Records are folded into
``<prefix>.changes``, ``.commits`` and ``.rejections``; the ``roles`` and
``commits`` tables (memory, recovered from their changelog topics
``<app id>-roles-changelog`` / ``<app id>-commits-changelog``) keep the state.

Invariants: the WAL topic is declared with its real partition count and
``internal=False``, so faust never creates or alters it (``topics.ensure``
does); the group id is ``settings.app_id``; processing is at-least-once and
the fold plus the pipeline make the effect exactly-once (see
``rolebus.streams.pipeline``); nothing here reads the environment or mutates
module globals: each call builds an independent app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import faust
from mode import CrashingSupervisor

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.streams.directory import CommitDirectory
from rolebus.streams.dispatch import Dispatcher
from rolebus.streams.partition import OutputTopics
from rolebus.streams.partition import WorkerOptions as WorkerOptions  # re-exported
from rolebus.streams.pipeline import Pipeline
from rolebus.streams.state import FoldConfig
from rolebus.streams.tables import commit_table, role_table
from rolebus.wal import topics

AGENT_NAME = "rolebus.fold"
MAX_POLL_RECORDS = 500


def changelog_configs(settings: Settings, options: WorkerOptions) -> dict[str, str]:
    """Topic configs of the changelogs: room for a whole role state, compaction."""
    return {
        "max.message.bytes": str(topics.max_state_bytes(settings)),
        "min.insync.replicas": str(options.min_insync_replicas),
        "segment.bytes": str(64 * 1024 * 1024),
        "min.cleanable.dirty.ratio": "0.2",
    }


def faust_conf(settings: Settings, ends: Endpoints, options: WorkerOptions) -> dict[str, Any]:
    return {
        "broker": [f"kafka://{hp}" for hp in ends.kafka_bootstrap.split(",")],
        "store": "memory://",
        "processing_guarantee": "at_least_once",
        "autodiscover": False,
        "datadir": Path(settings.data_dir) / "streams" / settings.app_id,
        "topic_partitions": settings.wal_partitions,
        "topic_replication_factor": options.replication_factor,
        "topic_disable_leader": True,
        "table_standby_replicas": 0,  # memory stores recover from offset 0 anyway
        "consumer_auto_offset_reset": "earliest",
        "stream_wait_empty": False,  # a rebalance never waits for a fork (see pipeline)
        # faust's drain loop blocks on a full stream queue: bounded polls and room
        # for a few of them keep one slow delivery from stalling every partition.
        "broker_max_poll_records": MAX_POLL_RECORDS,
        "stream_buffer_maxsize": max(4096, 2 * options.batch_size, 6 * MAX_POLL_RECORDS),
        "broker_session_timeout": options.session_timeout_s,
        "broker_heartbeat_interval": max(0.3, options.session_timeout_s / 10),
        "producer_max_request_size": topics.max_state_bytes(settings) + 65536,
        "web_enabled": options.web_port is not None,
        "web_port": options.web_port or 6066,
        "web_bind": "127.0.0.1",
        "web_host": "127.0.0.1",
        "worker_redirect_stdouts": False,
        "broker_client_id": f"rolebus-worker-{settings.app_id}",
    }


def make_app(
    settings: Settings, endpoints: Endpoints, options: WorkerOptions | None = None
) -> faust.App:
    """A new faust app folding ``settings``' WAL (see the module docstring)."""
    options = options or WorkerOptions()
    conf = faust_conf(settings, endpoints, options)
    conf["datadir"].parent.mkdir(parents=True, exist_ok=True)  # faust creates only the leaf
    app = faust.App(settings.app_id, **conf)
    name = {kind: topics.topic_name(settings, kind) for kind in topics.KINDS}
    wal = app.topic(
        name["wal"], key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=settings.wal_partitions, internal=False,
    )  # fmt: skip
    configs = changelog_configs(settings, options)
    roles = role_table(app, settings.wal_partitions, configs)
    commits = commit_table(app, settings.wal_partitions, configs)
    directory = CommitDirectory(settings, endpoints)
    pipeline = Pipeline(
        app, roles, commits, directory,
        OutputTopics(name["wal"], name["changes"], name["commits"], name["rejections"]),
        FoldConfig.from_settings(settings), options,
    )  # fmt: skip
    _wire(app, wal, pipeline, options)
    return app


def _wire(app: faust.App, wal: Any, pipeline: Pipeline, options: WorkerOptions) -> None:
    dispatcher = Dispatcher(pipeline)

    async def fold(stream: Any) -> None:
        await dispatcher.run(stream)

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await dispatcher.on_assigned(args[0])

    async def on_shutdown(*_: Any, **__: Any) -> None:
        await pipeline.checkpoint_all()
        await dispatcher.stop_all()
        await pipeline.directory.stop()

    app.agent(wal, name=AGENT_NAME, supervisor_strategy=CrashingSupervisor)(fold)
    app.timer(options.progress_every_s, name="rolebus.progress")(pipeline.report)
    app.on_partitions_assigned.connect(cast(Any, on_assigned))  # mode types a union
    app.on_before_shutdown.connect(on_shutdown)
    pipeline.roles.table.on_recover(pipeline.on_recovered)
    app.rolebus_pipeline = pipeline  # type: ignore[attr-defined]  # for tests and the CLI
