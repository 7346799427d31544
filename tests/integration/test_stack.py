"""The local stack on real servers: lifecycle, persistence, 3-node KRaft, topics, bad settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from rolebus import endpoints
from rolebus.config import Settings, load_settings
from rolebus.errors import StackError, StoreError, TransportError
from rolebus.stack import procs
from rolebus.stack.launcher import LocalStack
from rolebus.wal import topics
from rolebus.wal.connect import admin_client

StackSettings = Callable[..., Settings]
RunCli = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_session_stack_is_ready(stack: Settings) -> None:
    services = LocalStack(stack).status()
    assert {s.name for s in services} == {"kafka-1", "postgres"}
    assert all(s.running and s.ready for s in services), services


def test_up_is_idempotent(stack: Settings) -> None:
    launcher = LocalStack(stack)
    before = {s.name: s.pid for s in launcher.status()}
    started = time.monotonic()
    after = {s.name: s.pid for s in launcher.up()}
    assert after == before
    assert time.monotonic() - started < 15


async def _produce_one(
    settings: Settings, ends: endpoints.Endpoints, topic: str, value: bytes
) -> None:
    async with admin_client(settings, ends) as admin:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=ends.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while len(values) < end:
            batch = await consumer.getmany(tp, timeout_ms=5000)
            if not batch:
                break
            values += [r.value for r in batch.get(tp, [])]
        return values
    finally:
        await consumer.stop()


@pytest.mark.slow
def test_data_survives_down_and_up(tmp_path: Path, stack_settings: StackSettings) -> None:
    settings = stack_settings(tmp_path / "data")
    launcher = LocalStack(settings)
    try:
        launcher.up()
        ends = endpoints.resolve(settings)
        asyncio.run(_produce_one(settings, ends, "keep.me", b"still here"))
        with psycopg.connect(ends.pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('row survives')")
        assert set(launcher.down()) == {"kafka-1", "postgres"}
        assert not any(s.running for s in launcher.status())
        launcher.up()
        assert asyncio.run(_read_all(ends.kafka_bootstrap, "keep.me")) == [b"still here"]
        with psycopg.connect(ends.pg_dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("row survives",)]
            vec = conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone()
            assert vec == (1.0,)
    finally:
        launcher.down()


@pytest.mark.slow
def test_stale_pid_file_is_detected_and_replaced(
    tmp_path: Path, stack_settings: StackSettings
) -> None:
    settings = stack_settings(tmp_path / "data")
    launcher = LocalStack(settings)
    try:
        launcher.up()
        launcher.down()
        node = launcher.nodes()[0]
        # A pid that is surely not a broker of ours: this test process.
        procs.write_pid(node.pid_file, os.getpid())
        kafka_status = launcher.status()[0]
        assert kafka_status.stale_pid_file and not kafka_status.running
        services = launcher.up()
        assert all(s.ready for s in services)
        assert procs.inspect(node.pid_file, str(node.config_file)).alive
    finally:
        launcher.down()


async def _isr_sizes(settings: Settings, ends: endpoints.Endpoints, topic: str) -> list[int]:
    async with admin_client(settings, ends) as admin:
        await admin.create_topics(
            [NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2"})]
        )
        for _ in range(50):
            (meta,) = await admin.describe_topics([topic])
            sizes = [len(p["isr"]) for p in meta["partitions"]]
            if sizes and all(s == 3 for s in sizes):
                return sizes
            await asyncio.sleep(0.2)
        return sizes


@pytest.mark.slow
def test_three_broker_cluster_replicates(tmp_path: Path, stack_settings: StackSettings) -> None:
    settings = stack_settings(tmp_path / "data", brokers=3)
    launcher = LocalStack(settings)
    try:
        services = launcher.up()
        assert [s.name for s in services if s.ready] == [
            "kafka-1",
            "kafka-2",
            "kafka-3",
            "postgres",
        ]
        ends = endpoints.resolve(settings)
        assert asyncio.run(_isr_sizes(settings, ends, "replicated")) == [3, 3, 3]
        reports = asyncio.run(topics.ensure(settings, ends))
        assert {r.action for r in reports} == {"created"}
        spec = topics.wanted(settings, 3)[0]
        assert spec.replication_factor == 3
        parts, rf, cfg = asyncio.run(_describe(settings, ends, spec.name))
        assert (parts, rf, cfg["min.insync.replicas"]) == (12, 3, "2")
    finally:
        launcher.down()


async def _describe(
    settings: Settings, ends: endpoints.Endpoints, name: str
) -> tuple[int, int, dict[str, str]]:
    async with admin_client(settings, ends) as admin:
        return await topics.describe(admin, name)


def test_topics_ensure_twice_is_a_noop(settings: Settings) -> None:
    ends = endpoints.resolve(settings)
    first = asyncio.run(topics.ensure(settings, ends))
    assert [r.action for r in first] == ["created"] * 4
    second = asyncio.run(topics.ensure(settings, ends))
    assert [(r.action, r.drift) for r in second] == [("ok", ())] * 4
    name, parts, rf, cfg = first[0].name, *asyncio.run(_describe(settings, ends, first[0].name))
    assert name == f"{settings.topic_prefix}.wal"
    assert (parts, rf, cfg["retention.ms"], cfg["retention.bytes"]) == (4, 1, "-1", "-1")


async def _set_retention(settings: Settings, ends: endpoints.Endpoints, topic: str) -> None:
    async with admin_client(settings, ends) as admin:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "3600000"})]
        )
        for _ in range(50):  # the change travels through the metadata log
            _, _, cfg = await topics.describe(admin, topic)
            if cfg["retention.ms"] == "3600000":
                return
            await asyncio.sleep(0.1)


def test_topics_ensure_reports_and_fixes_drift(settings: Settings) -> None:
    ends = endpoints.resolve(settings)
    asyncio.run(topics.ensure(settings, ends))
    wal = topics.topic_name(settings, "wal")
    asyncio.run(_set_retention(settings, ends, wal))
    drifted = {r.name: r for r in asyncio.run(topics.ensure(settings, ends))}
    assert drifted[wal].action == "drift"
    assert "retention.ms: wanted -1, has 3600000" in drifted[wal].drift
    fixed = {r.name: r for r in asyncio.run(topics.ensure(settings, ends, fix=True))}
    assert fixed[wal].action == "fixed"
    assert {r.action for r in asyncio.run(topics.ensure(settings, ends))} == {"ok"}
    more = replace(settings, wal_partitions=8)
    grown = {r.name: r for r in asyncio.run(topics.ensure(more, ends, fix=True))}
    assert grown[wal].action == "drift"  # partition counts are never changed for you
    assert "partitions: wanted 8, has 4" in grown[wal].drift


def _ensure_topics(settings: Settings) -> None:
    asyncio.run(topics.ensure(settings, endpoints.resolve(settings)))


def _stack_up(settings: Settings) -> None:
    LocalStack(settings).up()


@pytest.mark.parametrize(
    ("action", "error", "limit_s"),
    [(_ensure_topics, TransportError, 10), (_stack_up, StackError, 15)],
    ids=["topics-ensure", "stack-up"],
)
def test_unreachable_external_kafka_fails_fast(
    tmp_path: Path,
    action: Callable[[Settings], None],
    error: type[Exception],
    limit_s: float,
) -> None:
    settings = load_settings(
        env={"ROLEBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ROLEBUS_CONNECT_TIMEOUT_S": "3"},
        config_file=None,
        data_dir=tmp_path,
    )
    started = time.monotonic()
    with pytest.raises(error, match=r"ROLEBUS_KAFKA_BOOTSTRAP=127\.0\.0\.1:1"):
        action(settings)
    assert time.monotonic() - started < limit_s
    assert not (tmp_path / "kafka-1").exists()  # nothing local was started


def test_port_in_use_is_named(
    stack: Settings, tmp_path: Path, stack_settings: StackSettings
) -> None:
    taken = replace(stack_settings(tmp_path / "data"), kafka_port=stack.kafka_port)
    with pytest.raises(
        StackError, match=rf"ROLEBUS_KAFKA_PORT: 127\.0\.0\.1:{stack.kafka_port} is already in use"
    ):
        LocalStack(taken).up()


def test_cli_reports_bad_settings_on_stderr(tmp_path: Path, run_cli: RunCli) -> None:
    env = {"ROLEBUS_KAFKA_PORT": "notaport", "ROLEBUS_DATA_DIR": str(tmp_path)}
    bad = run_cli("stack", "up", env=env)
    assert bad.returncode == 2
    assert "ROLEBUS_KAFKA_PORT: must be an integer" in bad.stderr
    env = {"ROLEBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ROLEBUS_CONNECT_TIMEOUT_S": "2"}
    down = run_cli("topics", "ensure", env=env)
    assert down.returncode == 1
    assert "ROLEBUS_KAFKA_BOOTSTRAP=127.0.0.1:1" in down.stderr
    assert "Traceback" not in down.stderr


def test_stack_up_with_unreachable_external_postgres_names_it(
    stack: Settings, tmp_path: Path
) -> None:
    settings = replace(
        stack,
        data_dir=tmp_path,
        kafka_port=stack.kafka_port + 50,  # so the session's broker counts as external here
        kafka_bootstrap=endpoints.resolve(stack).kafka_bootstrap,
        pg_dsn="postgresql://nobody@127.0.0.1:1/nothing",
        connect_timeout_s=2.0,
    )
    started = time.monotonic()
    with pytest.raises(StoreError, match="ROLEBUS_PG_DSN"):
        LocalStack(settings).up()
    assert time.monotonic() - started < 15
    assert not (tmp_path / "postgres").exists()


def test_running_stack_is_not_moved_to_other_ports(stack: Settings) -> None:
    recorded = endpoints.read_stack_file(stack.data_dir)
    moved = replace(stack, kafka_port=stack.kafka_port + 7)
    with pytest.raises(StackError, match=r"ROLEBUS_KAFKA_PORT: the stack in .* is running on port"):
        LocalStack(moved).up()
    assert endpoints.read_stack_file(stack.data_dir) == recorded
    assert all(s.ready for s in LocalStack(stack).status())


def test_exported_local_endpoints_stay_local(stack: Settings) -> None:
    """After `eval "$(rolebus stack env)"` the stack is still the local one."""
    local = endpoints.resolve(stack)
    exported = replace(stack, kafka_bootstrap=local.kafka_bootstrap, pg_dsn=local.pg_dsn)
    again = endpoints.resolve(exported)
    assert not again.kafka_external and not again.pg_external
    assert [s.name for s in LocalStack(exported).status()] == ["kafka-1", "postgres"]


def test_topics_the_cluster_cannot_hold_are_an_error(settings: Settings) -> None:
    too_many = replace(settings, replication_factor=3, min_insync_replicas=2)
    with pytest.raises(TransportError, match=r"not created .*ROLEBUS_REPLICATION_FACTOR"):
        asyncio.run(topics.ensure(too_many, endpoints.resolve(too_many)))
