"""Delivering records in producer batches: the worker's only way of writing.

``send_batches`` hands each (topic, partition)'s records to the producer in
as few ``BatchBuilder`` batches as fit, all at once, and waits for every
delivery. A batch is closed before it is submitted, so no other send can
join it and record i of a batch lands at the batch's base offset + i: the
offsets of commit records are known without one future per record.

Invariants: records of one (topic, partition) keep their order; any delivery
failure raises ``TransportError`` (the worker stops; it never skips a record).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaError

from rolebus.errors import TransportError

Headers = list[tuple[str, bytes]]
Entries = dict[tuple[str, int], list[tuple[bytes | None, bytes, Headers]]]
"""(topic, partition) -> records (key, value, headers), in order."""


async def send_batches(
    producer: Any, entries: Mapping[tuple[str, int], Sequence[tuple[bytes | None, bytes, Headers]]]
) -> dict[tuple[str, int], list[int]]:
    """Send each (topic, partition)'s records in as few producer batches as fit,
    all at once, and wait for every delivery; the offset of every record."""
    sent: list[tuple[tuple[str, int], int, Any]] = []
    for (topic, partition), recs in entries.items():
        batch, count = producer.create_batch(), 0
        for key, value, headers in recs:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(
                    ((topic, partition), count, await _submit(producer, batch, topic, partition))
                )
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            count += 1
        sent.append(((topic, partition), count, await _submit(producer, batch, topic, partition)))
    try:
        metas = await asyncio.gather(*(future for _, _, future in sent))
    except KafkaError as exc:
        raise TransportError(f"delivering a batch failed: {exc}", retriable=exc.retriable) from exc
    out: dict[tuple[str, int], list[int]] = {}
    for (where, count, _), meta in zip(sent, metas, strict=True):
        out.setdefault(where, []).extend(range(meta.offset, meta.offset + count))
    return out


async def _submit(producer: Any, batch: Any, topic: str, partition: int) -> Any:
    batch.close()  # nothing else may join it: record i lands at base offset + i
    try:
        return await producer.send_batch(batch, topic, partition=partition)
    except KafkaError as exc:
        raise TransportError(
            f"sending to {topic}[{partition}] failed: {exc}", retriable=exc.retriable
        ) from exc
