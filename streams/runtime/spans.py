"""Tracing a batch: one processing span, linked to every record's producer span.

As the OpenTelemetry messaging conventions do for batch consumers, the worker
makes ONE span per batch (``process <wal topic>``, kind CONSUMER) with a
span link to the trace context each WAL record carries in its W3C
``traceparent`` header; the output records carry the batch span's context,
so a trace goes client -> WAL -> worker batch -> outputs -> projector.

Invariants: a malformed or missing ``traceparent`` adds no link and never
fails the batch; records of one ``send_many`` share one producer span, so
links are deduplicated; the SDK keeps at most ``SpanLimits.max_links`` links
per span (128 by default), the first ones in offset order.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

TRACEPARENT = "traceparent"


def parse_traceparent(value: bytes) -> SpanContext | None:
    """The remote span context of a W3C ``traceparent`` header, or None."""
    parts = value.split(b"-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def links_of(header_lists: Iterable[Iterable[tuple[str, bytes]] | None]) -> list[Link]:
    """One link per distinct ``traceparent`` among the records' headers."""
    seen: dict[bytes, Link | None] = {}
    for headers in header_lists:
        for name, value in headers or ():
            if name == TRACEPARENT and value not in seen:
                context = parse_traceparent(value)
                seen[value] = None if context is None else Link(context)
    return [link for link in seen.values() if link is not None]


def start_batch_span(
    tracer: trace.Tracer, topic: str, group: str, count: int, links: list[Link]
) -> trace.Span:
    return tracer.start_span(
        f"process {topic}",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.batch.message_count": count,
        },
    )
