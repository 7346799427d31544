"""OpenTelemetry setup: an SDK tracer provider and the aiokafka instrumentation,
so produces get spans and W3C ``traceparent`` Kafka headers, and consumers
can continue the trace from those headers. The SDK's RoleClient makes one
producer span per send call and puts its context in every record's headers.

Exporters are the caller's choice (tests use an in-memory one); without one,
spans are still created so trace context still propagates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install (once) an SDK tracer provider and instrument aiokafka."""
    provider = install_provider(service_name)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AIOKafkaInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return provider


def install_provider(service_name: str) -> TracerProvider:
    """Install (once) an SDK tracer provider, without instrumenting anything."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def trace_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """A trace context (the current one by default) as Kafka headers (W3C
    traceparent/tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(k, v.encode("latin-1")) for k, v in carrier.items()]


def context_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    """The trace context a producer put into Kafka headers (W3C traceparent)."""
    carrier: Mapping[str, Any] = {
        k: v.decode("latin-1") if isinstance(v, bytes) else str(v) for k, v in headers or ()
    }
    return propagate.extract(carrier)
