"""Connecting to Kafka: one place that turns "nothing answers" into an error
naming the setting that pointed there, within ``connect_timeout_s``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, bootstrap_origin
from rolebus.errors import TransportError

T = TypeVar("T")


async def within(settings: Settings, ends: Endpoints, step: Awaitable[T], what: str) -> T:
    """Await ``step`` or fail after connect_timeout_s with a message naming the setting."""
    try:
        return await asyncio.wait_for(step, settings.connect_timeout_s)
    except TimeoutError:
        raise TransportError(
            f"{bootstrap_origin(ends)}: no Kafka broker answered {what} within "
            f"{settings.connect_timeout_s:g}s (ROLEBUS_CONNECT_TIMEOUT_S)"
        ) from None
    except KafkaError as exc:
        raise TransportError(
            f"{bootstrap_origin(ends)}: {what} failed: {exc}",
            retriable=bool(getattr(exc, "retriable", False)),
        ) from exc


@asynccontextmanager
async def admin_client(settings: Settings, ends: Endpoints) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=ends.kafka_bootstrap,
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        client_id="rolebus-admin",
    )
    try:
        await within(settings, ends, admin.start(), "the admin connection")
        yield admin
    finally:
        await admin.close()
