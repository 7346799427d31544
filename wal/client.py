"""The producer SDK: ``RoleClient`` writes validated Avro events to the WAL.

Guarantees: every event is validated before anything is sent (a batch with one
bad event sends nothing); the producer is idempotent with ``acks=all``, so a
retried send never duplicates a record; the key is the role id, so a role's
events stay ordered in one partition. Each call returns where its events landed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry.trace import SpanKind

from rolebus import __version__
from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.errors import TransportError, ValidationError
from rolebus.tracing import setup_tracing, trace_headers, tracer
from rolebus.wal import codec, reader, topics
from rolebus.wal.connect import within
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
    TenantId,
    ToolCall,
)
from rolebus.wal.validate import new_role_id as _new_role_id
from rolebus.wal.validate import validate

_TRACER = tracer("rolebus.wal.client")


class Sent(NamedTuple):
    """Where one event landed in the WAL (a NamedTuple: one per event on the
    hot path, and much cheaper to build than a frozen dataclass)."""

    event_id: uuid.UUID
    role_id: RoleId
    topic: str
    partition: int
    offset: int


def producer_config(settings: Settings) -> dict[str, Any]:
    """The producer settings the SDK uses (the benchmark's baseline uses the same)."""
    return {
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "lz4",
        # No linger: an awaited turn is sent at once (5 ms of linger capped a chat
        # runtime at ~150 awaited appends/s); send_many hands over whole batches,
        # which fill while the previous request is in flight.
        "linger_ms": 0,
        "max_batch_size": 512 * 1024,
        "max_request_size": topics.max_message_bytes(settings),
        "client_id": "rolebus-sdk",
    }


class RoleClient:
    """Async client for one tenant. Use ``async with RoleClient(settings, tenant) as c``."""

    def __init__(
        self,
        settings: Settings,
        tenant_id: str,
        *,
        producer: str = f"rolebus-sdk/{__version__}",
        endpoints: Endpoints | None = None,
    ) -> None:
        self.settings = settings
        self.tenant_id = TenantId(tenant_id)
        self.producer_name = producer
        self.endpoints = endpoints or resolve(settings)
        self.topic = topics.topic_name(settings, "wal")
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect, and check the WAL topic exists (fail fast rather than block)."""
        setup_tracing("rolebus-client")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.endpoints.kafka_bootstrap, **producer_config(self.settings)
        )
        try:
            await within(self.settings, self.endpoints, producer.start(), "the producer connection")
            await self._check_topic(producer)
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def _check_topic(self, producer: AIOKafkaProducer) -> None:
        # A topic created a moment ago may be missing from one metadata answer:
        # ask again for a few seconds before calling it missing.
        wait_s = min(5.0, self.settings.connect_timeout_s)
        await reader.partitions(producer.client, self.topic, wait_s=wait_s)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- building and sending -------------------------------------------------------

    def envelope(
        self, role_id: str, payload: Payload, *, expected_seq: int | None = None,
        occurred_at: datetime | None = None, event_id: uuid.UUID | None = None,
    ) -> Envelope:  # fmt: skip
        """An envelope for this client's tenant (not yet validated or sent)."""
        return Envelope(
            event_id=event_id or uuid.uuid4(),
            tenant_id=self.tenant_id,
            role_id=RoleId(role_id),
            occurred_at=occurred_at or datetime.now(UTC),
            producer=self.producer_name,
            payload=payload,
            expected_seq=expected_seq,
        )

    async def send(self, envelope: Envelope) -> Sent:
        (sent,) = await self.send_many([envelope])
        return sent

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[Sent]:
        """Validate all, then send all; wait until every one is acknowledged.

        Validation is all-or-nothing: one bad event and nothing is sent. Once
        sending starts the batch is not atomic: on a TransportError, events
        before the failure may be in the WAL; re-sending the same envelopes is
        safe (the fold dedupes by event id). Connects on first use if needed.
        """
        for env in envelopes:
            validate(env, max_content_bytes=self.settings.max_content_bytes)
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        encoded = [codec.encode(env) for env in envelopes]
        with _TRACER.start_as_current_span(
            f"{self.topic} send", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": self.topic,
                        "messaging.batch.message_count": len(envelopes)},
        ):  # fmt: skip
            metas = await self._send_all(envelopes, encoded, trace_headers())
        return [
            Sent(env.event_id, env.role_id, meta.topic, meta.partition, meta.offset)
            for env, meta in zip(envelopes, metas, strict=True)
        ]

    async def _send_all(
        self, envelopes: Sequence[Envelope], encoded: list[bytes], headers: list[tuple[str, bytes]]
    ) -> list[Any]:
        assert self._producer is not None
        # Our span above already covers the batch and its context is in the
        # headers: skip the aiokafka instrumentation's per-record span, which
        # costs several times the send itself.
        send = getattr(self._producer.send, "__wrapped__", self._producer.send)
        try:
            futures = [
                await send(self.topic, value, key=env.role_id.encode(), headers=headers)
                for env, value in zip(envelopes, encoded, strict=True)
            ]
            return list(await asyncio.gather(*futures))
        except KafkaError as exc:
            raise TransportError(
                f"sending to {self.topic} failed: {exc}", retriable=bool(exc.retriable)
            ) from exc

    async def _emit(self, role_id: str, payload: Payload, expected_seq: int | None) -> Sent:
        return await self.send(self.envelope(role_id, payload, expected_seq=expected_seq))

    # --- the verbs ----------------------------------------------------------------------

    async def create_role(
        self, name: str, persona: str, *, traits: Mapping[str, str] | None = None,
        model: str | None = None, skills: Iterable[str] = (), role_id: str | None = None,
    ) -> Sent:  # fmt: skip
        payload = RoleCreated(name, persona, dict(traits or {}), model, tuple(skills))
        return await self._emit(role_id or _new_role_id(), payload, None)

    async def activate(
        self, role_id: str, *, reason: str | None = None, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, RoleActivated(reason), expected_seq)

    async def suspend(
        self, role_id: str, *, reason: str | None = None, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, RoleSuspended(reason), expected_seq)

    async def resume(
        self, role_id: str, *, reason: str | None = None, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, RoleResumed(reason), expected_seq)

    async def archive(
        self, role_id: str, *, reason: str | None = None, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, RoleArchived(reason), expected_seq)

    async def delete(
        self, role_id: str, *, reason: str | None = None, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, RoleDeleted(reason), expected_seq)

    async def append_message(
        self, role_id: str, author: Author | str, content: str, *, message_id: str | None = None,
        tokens_in: int = 0, tokens_out: int = 0, latency_ms: int | None = None,
        model: str | None = None, flags: Iterable[Flag | str] = (),
        tool_call: ToolCall | None = None, expected_seq: int | None = None,
    ) -> Sent:  # fmt: skip
        payload = MessageAppended(
            message_id=message_id or uuid.uuid4().hex,
            author=_enum(Author, author, "payload.author"),
            content=content,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=latency_ms,
            model=model,
            flags=frozenset(_enum(Flag, f, "payload.flags") for f in flags),
            tool_call=tool_call,
        )
        return await self._emit(role_id, payload, expected_seq)

    async def update_persona(
        self, role_id: str, persona: str, *, traits: Mapping[str, str] | None = None,
        model: str | None = None, skills: Iterable[str] | None = None,
        expected_seq: int | None = None,
    ) -> Sent:  # fmt: skip
        payload = PersonaUpdated(
            persona, None if traits is None else dict(traits), model,
            None if skills is None else tuple(skills),
        )  # fmt: skip
        return await self._emit(role_id, payload, expected_seq)

    async def request_commit(
        self, role_id: str, label: str, *, expected_seq: int | None = None
    ) -> Sent:
        return await self._emit(role_id, CommitRequested(label), expected_seq)

    async def rollback(
        self, role_id: str, to_commit_id: str, *, reason: str | None = None,
        expected_seq: int | None = None,
    ) -> Sent:  # fmt: skip
        return await self._emit(role_id, RolledBack(CommitId(to_commit_id), reason), expected_seq)

    async def fork(
        self,
        source_role_id: str,
        source_commit_id: str,
        name: str,
        *,
        new_role_id: str | None = None,
    ) -> Sent:
        """Start a new role (its id is in the result) from another role's commit."""
        payload = RoleForked(RoleId(source_role_id), CommitId(source_commit_id), name)
        return await self._emit(new_role_id or _new_role_id(), payload, None)


def _enum(kind: type[Author] | type[Flag], value: str, field: str) -> Any:
    """Accept enum members or their string values; anything else fails validation later."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValidationError(field, f"must be one of {allowed}", value) from None


class SyncRoleClient:
    """Blocking facade over RoleClient for scripts: one private event loop."""

    def __init__(self, settings: Settings, tenant_id: str, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = RoleClient(settings, tenant_id, **kwargs)
        try:
            self._runner.run(self._client.start())
        except BaseException:
            self._runner.close()
            raise

    def close(self) -> None:
        self._runner.run(self._client.stop())
        self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call
