"""The producer SDK, the WAL reader and the CLI against a real broker."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import avro.io
import avro.schema
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rolebus import endpoints
from rolebus.config import Settings
from rolebus.errors import ValidationError
from rolebus.tracing import setup_tracing
from rolebus.wal import codec, reader, schema, topics
from rolebus.wal.client import RoleClient, SyncRoleClient
from rolebus.wal.events import (
    Author,
    CommitId,
    CommitRequested,
    Envelope,
    Flag,
    MessageAppended,
    Payload,
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleId,
    RoleResumed,
    RoleSuspended,
    RolledBack,
    ToolCall,
)

pytestmark = [pytest.mark.kafka]

RunCli = Callable[..., subprocess.CompletedProcess[str]]

COMMIT = CommitId("ab" * 32)
EVERY_PAYLOAD: list[Payload] = [
    RoleCreated("Ada", "A patient tutor", {"tone": "warm", "lang": "en"}, "llama3:8b", ("search",)),
    RoleActivated(),
    RoleSuspended("night"),
    RoleResumed(),
    MessageAppended(
        "m-1", Author.ASSISTANT, "Paris is the capital of France. 🗼", 12, 9, 420, "llama3:8b",
        frozenset({Flag.HALLUCINATION, Flag.SAFETY}),
        ToolCall("search", '{"q": "capital of France"}', "Paris"),
    ),
    PersonaUpdated("A stricter tutor", {"tone": "firm"}, None, ("search", "calc")),
    CommitRequested("v1"),
    RolledBack(COMMIT, "bad answer"),
    RoleArchived(),
    RoleDeleted("gdpr"),
    RoleForked(RoleId("r-source"), COMMIT, "Ada II"),
]  # fmt: skip


async def _ensure(settings: Settings) -> endpoints.Endpoints:
    ends = endpoints.resolve(settings)
    await topics.ensure(settings, ends)
    return ends


async def _read_wal(settings: Settings) -> list[reader.WalRecord]:
    ends = endpoints.resolve(settings)
    wal = topics.topic_name(settings, "wal")
    return [r async for r in reader.tail(settings, ends, wal, from_beginning=True, follow=False)]


async def test_every_event_type_round_trips_through_kafka(settings: Settings) -> None:
    await _ensure(settings)
    async with RoleClient(settings, "acme") as client:
        envs = [client.envelope("r-ada", p) for p in EVERY_PAYLOAD]
        sent = await client.send_many(envs)
    assert [s.event_id for s in sent] == [e.event_id for e in envs]
    assert len({s.partition for s in sent}) == 1  # one key, one partition
    assert [s.offset for s in sent] == list(range(sent[0].offset, sent[0].offset + len(envs)))
    records = await _read_wal(settings)
    assert [r.envelope for r in records] == envs
    assert all(r.key == b"r-ada" for r in records)


async def test_invalid_batch_sends_nothing(settings: Settings) -> None:
    await _ensure(settings)
    async with RoleClient(settings, "acme") as client:
        good = client.envelope("r-1", RoleCreated("ok", "fine"))
        bad = client.envelope(
            "r-1", MessageAppended("m", Author.USER, "x" * (settings.max_content_bytes + 1))
        )
        with pytest.raises(ValidationError, match=r"payload\.content: must be at most"):
            await client.send_many([good, bad])
        with pytest.raises(ValidationError, match=r"payload\.author"):
            await client.append_message("r-1", "robot", "hi")
        with pytest.raises(ValidationError, match="role_id"):
            await client.activate("not a role id!")
    assert await _read_wal(settings) == []


async def test_missing_tenant_is_refused(settings: Settings) -> None:
    await _ensure(settings)
    async with RoleClient(settings, "") as client:
        with pytest.raises(ValidationError, match="tenant_id"):
            await client.create_role("x", "y")
    assert await _read_wal(settings) == []


async def test_send_carries_w3c_trace_context(settings: Settings) -> None:
    await _ensure(settings)
    spans = InMemorySpanExporter()
    setup_tracing("rolebus-test", spans)
    async with RoleClient(settings, "acme") as client:
        await client.create_role("Ada", "tutor", role_id="r-traced")
    (record,) = await _read_wal(settings)
    headers = dict(record.headers)
    assert "traceparent" in headers
    trace_id = headers["traceparent"].decode().split("-")[1]
    sends = [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
    assert sends, "the send span of that record was not recorded"


def _raw_values(settings: Settings, expected: int) -> list[bytes]:
    """Another Kafka client (librdkafka via confluent-kafka, no rolebus or aiokafka
    code) reads the raw record values."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": endpoints.resolve(settings).kafka_bootstrap,
        "group.id": f"interop-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })  # fmt: skip
    try:
        consumer.subscribe([topics.topic_name(settings, "wal")])
        values: list[bytes] = []
        for _ in range(60):
            for msg in consumer.consume(num_messages=100, timeout=1.0):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
            if len(values) >= expected:
                break
        return values
    finally:
        consumer.close()


async def test_wal_bytes_decode_with_apache_avro_and_the_avsc(settings: Settings) -> None:
    await _ensure(settings)
    async with RoleClient(settings, "acme") as client:
        envs = [client.envelope("r-ada", p) for p in EVERY_PAYLOAD]
        await client.send_many(envs)
    avsc = resources.files("rolebus.schemas").joinpath("envelope.avsc").read_text()
    apache = avro.schema.parse(avsc)
    decoded = []
    for value in _raw_values(settings, len(envs)):
        assert value[:2] == b"\xc3\x01"  # Avro single-object marker
        assert int.from_bytes(value[2:10], "little") == schema.current().fingerprint
        body = avro.io.BinaryDecoder(io.BytesIO(value[10:]))
        decoded.append(avro.io.DatumReader(apache).read(body))
    by_id = {d["event_id"]: d for d in decoded}
    for env in envs:
        datum = by_id[str(env.event_id)]
        assert datum["role_id"] == "r-ada" and datum["tenant_id"] == "acme"
        assert datum["occurred_at"] == env.occurred_at  # timestamp-micros, UTC
    message = next(d for d in decoded if "message_id" in d["payload"])
    assert message["payload"]["content"] == "Paris is the capital of France. 🗼"
    assert sorted(message["payload"]["flags"]) == ["hallucination", "safety"]
    assert message["payload"]["tool_call"]["result"] == "Paris"


def test_sync_client_for_scripts(settings: Settings) -> None:
    import asyncio

    asyncio.run(_ensure(settings))
    with SyncRoleClient(settings, "acme") as client:
        created = client.create_role("Ada", "tutor")
        said = client.append_message(created.role_id, "user", "hello")
    assert said.partition == created.partition and said.offset == created.offset + 1
    record = asyncio.run(
        reader.read_at(
            settings, endpoints.resolve(settings), said.topic, said.partition, said.offset
        )
    )
    assert isinstance(record.envelope, Envelope)
    assert isinstance(record.envelope.payload, MessageAppended)
    assert record.envelope.payload.content == "hello"


def test_undecodable_records_are_shown_not_skipped(settings: Settings) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def go() -> list[reader.WalRecord]:
        ends = await _ensure(settings)
        producer = AIOKafkaProducer(bootstrap_servers=ends.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.topic_name(settings, "wal"), b"\xc3\x01garbage!", key=b"r-x"
            )
        finally:
            await producer.stop()
        return await _read_wal(settings)

    (record,) = asyncio.run(go())
    assert record.envelope is None and record.error is not None
    assert "fingerprint" in str(record.error) or "truncated" in str(record.error)
    assert reader.record_json(record)["error"]


@pytest.fixture
def cli(settings: Settings, run_cli: RunCli) -> RunCli:
    """The CLI pointed at this test's topics on the session stack."""
    env = {
        "ROLEBUS_KAFKA_BOOTSTRAP": endpoints.resolve(settings).kafka_bootstrap,
        "ROLEBUS_TOPIC_PREFIX": settings.topic_prefix,
        "ROLEBUS_WAL_PARTITIONS": str(settings.wal_partitions),
    }

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env, stdin=stdin, timeout=120)

    return run


def test_cli_role_say_tail_inspect(cli: RunCli, tmp_path: Path) -> None:
    assert cli("topics", "ensure").returncode == 0
    created = cli(
        "role",
        "create",
        "Ada",
        "--tenant",
        "acme",
        "--persona",
        "tutor",
        "--trait",
        "tone=warm",
    )
    assert created.returncode == 0, created.stderr
    role = created.stdout.strip()
    assert role.startswith("r-")
    assert cli("role", "activate", role, "-t", "acme").returncode == 0
    said = cli("say", role, "-t", "acme", "--author", "assistant", "--latency-ms", "300",
               "--flag", "hallucination", "--json", "The moon is cheese")  # fmt: skip
    assert said.returncode == 0, said.stderr
    where = json.loads(said.stdout)
    tail = cli("wal", "tail", "--from-beginning", "--role", role, "--json")
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["event"]["event_type"] for line in lines] == [
        "RoleCreated",
        "RoleActivated",
        "MessageAppended",
    ]
    assert lines[2]["event"]["payload"]["flags"] == ["hallucination"]
    assert lines[2]["schema"]["version"] == schema.current().version
    shown = cli("wal", "inspect", f"{where['partition']}:{where['offset']}", "--json")
    assert json.loads(shown.stdout)["event"]["payload"]["content"] == "The moon is cheese"
    assert "traceparent" in json.loads(shown.stdout)["headers"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["role", "create", "Ada", "--persona", "p"], "--tenant"),
        (["say", "r-1", "-t", "acme", "--author", "robot", "hi"], "payload.author: must be one of"),
        (
            ["say", "r-1", "-t", "acme", "-"],
            "payload.content: must be at most 262144 bytes",
        ),
        (["role", "activate", "bad role id", "-t", "acme"], "role_id: must be"),
        (["role", "create", "Ada", "-t", "ACME!", "--persona", "p"], "tenant_id: must be"),
        (["wal", "inspect", "nope"], "PARTITION:OFFSET"),
    ],
)
def test_cli_refuses_bad_input_and_sends_nothing(
    settings: Settings, cli: RunCli, args: list[str], needle: str
) -> None:
    import asyncio

    asyncio.run(_ensure(settings))
    result = cli(*args, stdin="x" * (256 * 1024 + 1))
    assert result.returncode != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert asyncio.run(_read_wal(settings)) == []


def test_occurred_at_keeps_microseconds(settings: Settings) -> None:
    import asyncio

    async def go() -> Envelope | None:
        await _ensure(settings)
        when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        async with RoleClient(settings, "acme") as client:
            sent = await client.send(
                client.envelope(
                    "r-t", RoleCreated("a", "b"), occurred_at=when, event_id=uuid.UUID(int=7)
                )
            )
        rec = await reader.read_at(
            settings, endpoints.resolve(settings), sent.topic, sent.partition, sent.offset
        )
        return rec.envelope

    env = asyncio.run(go())
    assert env is not None and env.occurred_at == datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert env.event_id == uuid.UUID(int=7)
    assert codec.decode(codec.encode(env)) == env


def test_cli_validates_before_connecting(run_cli: RunCli) -> None:
    """Bad input is reported as bad input even when no broker is reachable."""
    env = {"ROLEBUS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ROLEBUS_CONNECT_TIMEOUT_S": "2"}
    bad = run_cli("say", "r-1", "-t", "acme", "--author", "robot", "hi", env=env)
    assert bad.returncode == 1
    assert "payload.author: must be one of" in bad.stderr
    good = run_cli("say", "r-1", "-t", "acme", "hi", env=env)
    assert good.returncode == 1
    assert "ROLEBUS_KAFKA_BOOTSTRAP=127.0.0.1:1" in good.stderr


async def test_client_refuses_a_missing_wal_topic(settings: Settings) -> None:
    from rolebus.errors import TransportError

    with pytest.raises(TransportError, match="does not exist: run `rolebus topics ensure`"):
        async with RoleClient(settings, "acme"):
            pass
