"""Prometheus ``/metrics`` from the context store, named after OpenTelemetry.

Values come from the store (``dashboard_sql.read_totals``): all-time sums of
the per-minute aggregates, so a restarted dashboard never resets a counter
and several dashboards agree. ``StoreCollector`` is a prometheus-client
custom collector over one such snapshot, read afresh for every scrape.

Names. Metrics keep their OpenTelemetry names (``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage``, attributes ``gen_ai.request.model``,
``gen_ai.token.type``...) plus the unit and type suffixes of the
OTel-to-Prometheus compatibility rules (``_seconds``; ``_total`` on counters;
the ``{token}`` unit is dropped). prometheus-client negotiates the escaping with
the scraper: by default (and for ``escaping=underscores``) dots become
underscores, which is exactly the classic OTel translation
(``gen_ai_client_operation_duration_seconds``, label ``gen_ai_request_model``),
what Prometheus' own OTLP receiver stores by default; a scraper that asks for
``escaping=allow-utf-8`` gets the dotted names, quoted.

Honesty notes: the latency histogram has no ``_sum``/``_count`` series (the
store keeps bucket counts, not the exact sum; ``+Inf`` is the count). Token
usage is a histogram with the ``+Inf`` bucket only: ``_sum`` = tokens,
``_count`` = assistant replies (the operations); per-call distributions are not kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS
from rolebus.projectors.dashboard import AUTHORS, FLAGS, LIFECYCLE
from rolebus.projectors.dashboard_sql import RoleTotals, TenantNow

TENANT, ROLE, MODEL = "rolebus.tenant.id", "rolebus.role.id", "gen_ai.request.model"
OPERATION = "gen_ai.operation.name"


@dataclass(frozen=True)
class Keys:
    """The identifying labels of a series: per role, or per tenant and model."""

    by_role: bool = True

    @property
    def names(self) -> list[str]:
        return [TENANT, ROLE, MODEL] if self.by_role else [TENANT, MODEL]

    def values(self, t: RoleTotals) -> list[str]:
        return [t.tenant, t.role, t.model] if self.by_role else [t.tenant, t.model]


def latency_buckets(hist: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs in seconds, ``+Inf`` last."""
    padded = [*hist, *[0] * (len(LATENCY_BUCKETS_MS) - len(hist))]
    out, cumulative = [], 0
    for bound, count in zip(LATENCY_BUCKETS_MS, padded, strict=True):
        cumulative += count
        # repr: the shortest exact decimal (0.005, 60.0); +Inf for the open bucket.
        le = "+Inf" if math.isinf(bound) else repr(bound / 1000)
        out.append((le, float(cumulative)))
    return out


def _duration(totals: Iterable[RoleTotals], keys: Keys) -> Metric:
    family = HistogramMetricFamily(
        "gen_ai.client.operation.duration",
        "Assistant reply latency (GenAI client operation duration), from the store's buckets.",
        labels=[*keys.names, OPERATION],
        unit="seconds",
    )
    for t in totals:
        if sum(t.hist):
            family.add_metric([*keys.values(t), "chat"], latency_buckets(t.hist), sum_value=None)
    return family


def _tokens(totals: Iterable[RoleTotals], keys: Keys) -> Metric:
    family = HistogramMetricFamily(
        "gen_ai.client.token.usage",
        "Tokens used, by gen_ai.token.type (input/output); _count = assistant replies.",
        labels=[*keys.names, OPERATION, "gen_ai.token.type"],
    )
    for t in totals:
        replies = float(t.counts.get("msg_assistant", 0))
        for kind, column in (("input", "tokens_in"), ("output", "tokens_out")):
            labels = [*keys.values(t), "chat", kind]
            family.add_metric(labels, [("+Inf", replies)], sum_value=t.counts.get(column, 0))
    return family


def _counter(
    name: str, doc: str, totals: Iterable[RoleTotals], keys: Keys, label: str,
    columns: dict[str, str],
) -> Metric:  # fmt: skip
    """One counter with ``label`` = each key of ``columns`` (value: the agg column)."""
    family = CounterMetricFamily(name, doc, labels=[*keys.names, label])
    for t in totals:
        for value, column in columns.items():
            family.add_metric([*keys.values(t), value], t.counts.get(column, 0))
    return family


def _plain_counter(
    name: str, doc: str, totals: Iterable[RoleTotals], keys: Keys, column: str
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=keys.names)
    for t in totals:
        family.add_metric(keys.values(t), t.counts.get(column, 0))
    return family


def _rejections(totals: Iterable[RoleTotals], keys: Keys) -> Metric:
    family = CounterMetricFamily(
        "rolebus.rejections",
        "Events refused by the stream processors, by machine-readable reason.",
        labels=[*keys.names, "rolebus.rejection.reason"],
    )
    for t in totals:
        for reason, count in sorted(t.rejections_by_reason.items()):
            family.add_metric([*keys.values(t), reason], count)
    return family


def _lag(
    totals: Iterable[RoleTotals], keys: Keys, tenants: Iterable[TenantNow]
) -> Iterator[Metric]:
    summary = SummaryMetricFamily(
        "rolebus.projection.lag",
        "Projection time minus event time of projected events (avg = rate(_sum)/rate(_count)).",
        labels=keys.names,
        unit="seconds",
    )
    for t in totals:
        summary.add_metric(
            keys.values(t), t.counts.get("lag_count", 0), t.counts.get("lag_ms_sum", 0) / 1000
        )
    yield summary
    gauge = GaugeMetricFamily(
        "rolebus.projection.lag.max",
        "Largest projection lag over the last 5 minutes of event time.",
        labels=[TENANT],
        unit="seconds",
    )
    for tenant in tenants:
        if tenant.lag_ms_max is not None:
            gauge.add_metric([tenant.tenant], tenant.lag_ms_max / 1000)
    yield gauge


def _roles(tenants: Iterable[TenantNow]) -> Metric:
    gauge = GaugeMetricFamily(
        "rolebus.roles", "Roles by current lifecycle state.", labels=[TENANT, "rolebus.lifecycle"]
    )
    for tenant in tenants:
        for state, count in sorted(tenant.roles_by_state.items()):
            gauge.add_metric([tenant.tenant, state], count)
    return gauge


def families(
    totals: Sequence[RoleTotals], tenants: Sequence[TenantNow], keys: Keys = Keys()
) -> list[Metric]:
    """Every metric family of one store snapshot (pure)."""
    return [
        _duration(totals, keys),
        _tokens(totals, keys),
        _plain_counter("rolebus.events", "Accepted events.", totals, keys, "events"),
        _counter(
            "rolebus.messages", "Messages appended, by author.", totals, keys,
            "rolebus.message.author", {a: f"msg_{a}" for a in AUTHORS},
        ),
        _counter(
            "rolebus.messages.flagged",
            "Flagged messages by flag; rate = this / rolebus_messages_total{author=assistant}.",
            totals, keys, "rolebus.flag", {f: f"flag_{f}" for f in FLAGS},
        ),
        _counter(
            "rolebus.lifecycle.transitions", "Role lifecycle transitions (and forks).", totals,
            keys, "rolebus.transition", {k: k for k in LIFECYCLE},
        ),
        _plain_counter(
            "rolebus.rollbacks", "Rollbacks to an earlier commit.", totals, keys, "rollbacks"
        ),
        _rejections(totals, keys),
        *_lag(totals, keys, tenants),
        _roles(tenants),
    ]  # fmt: skip


def by_tenant(totals: Iterable[RoleTotals]) -> list[RoleTotals]:
    """The roles' totals merged per tenant and model (``role`` left empty):
    far fewer series when there are many roles."""
    merged: dict[tuple[str, str], RoleTotals] = {}
    for t in totals:
        into = merged.setdefault(
            (t.tenant, t.model), RoleTotals(t.tenant, "", t.model, {}, [0] * len(t.hist), {})
        )
        for name, n in t.counts.items():
            into.counts[name] = into.counts.get(name, 0) + n
        for i, n in enumerate(t.hist):
            into.hist[i] += n
        for reason, n in t.rejections_by_reason.items():
            into.rejections_by_reason[reason] = into.rejections_by_reason.get(reason, 0) + n
    return [merged[key] for key in sorted(merged)]


class StoreCollector(Collector):
    """A prometheus-client collector over one snapshot of the store."""

    def __init__(
        self, totals: Sequence[RoleTotals], tenants: Sequence[TenantNow], *, by_role: bool = True
    ) -> None:
        merged = totals if by_role else by_tenant(totals)
        self._families = families(merged, tenants, Keys(by_role))

    def collect(self) -> Iterable[Metric]:
        return list(self._families)
