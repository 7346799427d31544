"""Readiness: a real metadata request plus a produce/consume round trip for
Kafka, a real SQL query (and pgvector) for PostgreSQL. An open port is not
readiness: a broker accepts connections well before it can take writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from psycopg import sql

from rolebus.errors import StoreError, TransportError

READY_TOPIC = "__rolebus_ready"


@dataclass(frozen=True)
class KafkaHealth:
    brokers: int
    round_trip_ms: float


@dataclass(frozen=True)
class PgHealth:
    server_version: str
    vector_version: str


async def _broker_count(bootstrap: str, timeout_s: float, create_ready_topic: bool) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        brokers = len(cluster["brokers"])
        # No existence check first: "already exists" is tolerated below, and the
        # check would cost one more request per polling round.
        if create_ready_topic:
            response = await admin.create_topics([NewTopic(READY_TOPIC, 1, min(3, brokers))])
            for topic, code, *_ in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise TransportError(f"kafka at {bootstrap}: cannot create {topic}: {code}")
        return brokers
    finally:
        await admin.close()


async def _round_trip(bootstrap: str) -> float:
    start = time.perf_counter()
    token = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
        meta = await producer.send_and_wait(READY_TOPIC, token)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        tp = TopicPartition(READY_TOPIC, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    if record.value != token:
        raise TransportError(f"kafka at {bootstrap}: read back another record than written")
    return (time.perf_counter() - start) * 1000


async def kafka_ready(
    bootstrap: str, expected_brokers: int, timeout_s: float, *, round_trip: bool = True
) -> KafkaHealth:
    """Wait until ``expected_brokers`` answer metadata and (with ``round_trip``,
    for the local stack) a record written to ``__rolebus_ready`` reads back."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    # aiokafka logs every refused connection at ERROR while the broker boots.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    while time.monotonic() < deadline:
        try:
            left = max(1.0, deadline - time.monotonic())
            count = await _broker_count(bootstrap, left, create_ready_topic=round_trip)
            if count >= expected_brokers:
                rtt = 0.0
                if round_trip:
                    rtt = await asyncio.wait_for(
                        _round_trip(bootstrap), deadline - time.monotonic()
                    )
                return KafkaHealth(brokers=count, round_trip_ms=rtt)
            last = TransportError(f"{count} of {expected_brokers} brokers registered")
        except (KafkaError, OSError, TimeoutError, TransportError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise TransportError(
        f"kafka at {bootstrap} not ready after {timeout_s:.0f}s: {last or 'no answer'}"
    )


def _server_dsn(dsn: str) -> str:
    """The same server, maintenance database (to create ours)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = "postgres"
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def ensure_database(dsn: str, timeout_s: float) -> None:
    """Create the DSN's database (if missing) and the vector extension in it."""
    dbname = str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "")
    with psycopg.connect(_server_dsn(dsn), autocommit=True, connect_timeout=int(timeout_s)) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with psycopg.connect(dsn, autocommit=True, connect_timeout=int(timeout_s)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def pg_ready(dsn: str, timeout_s: float, *, create: bool = False, origin: str = "") -> PgHealth:
    """Wait until a real query answers; with ``create`` (the local stack only),
    set up the database and pgvector. Only "not up yet" is retried: a refused
    login or a missing database fails at once."""
    where = origin or f"postgres at {_redact(dsn)}"
    deadline = time.monotonic() + timeout_s
    last: psycopg.Error | None = None
    while time.monotonic() < deadline:
        try:
            if create:
                ensure_database(dsn, max(1.0, deadline - time.monotonic()))
            return _pg_health(dsn, max(1.0, deadline - time.monotonic()))
        except psycopg.Error as exc:
            if exc.sqlstate not in (None, "57P03"):  # 57P03: the server is starting up
                raise StoreError(f"{where}: {exc} (sqlstate {exc.sqlstate})") from exc
            last = exc
        time.sleep(0.3)
    raise StoreError(f"{where}: not ready after {timeout_s:.0f}s: {last}")


def _pg_health(dsn: str, timeout_s: float) -> PgHealth:
    with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        vector = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    return PgHealth(
        server_version=str(version[0]) if version else "?",
        vector_version=str(vector[0]) if vector else "missing",
    )


def _redact(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
