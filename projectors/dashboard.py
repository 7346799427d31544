"""Dashboard figures over a time window, computed from the per-minute aggregates.

The pure half of the dashboards: ``summarize`` turns the rows that
``rolebus.projectors.dashboard_sql`` reads from ``agg_minute`` and
``agg_rejections_minute`` (already summed over the roles in scope, one row per
minute) into a ``Summary``: totals, rates, latency percentiles and a
per-minute series for charts. No I/O and no clock here: the window comes in.

Latency percentiles come from SUMMED histograms (``LATENCY_BUCKETS_MS``),
never from scanning messages. ``percentile`` interpolates linearly inside
the bucket that holds the wanted rank. Error bound: with n latencies, the
q-quantile is the ceil(q*n)-th smallest; it lies in the first bucket whose
cumulative count reaches q*n, and so does the estimate, so
``|estimate - true| <= width of that bucket`` (5 ms below 10 ms, at most half
the bucket's upper bound above it). Beyond the last finite bound (60 s) the
estimate is that bound: a floor, as Prometheus' ``histogram_quantile`` does.

Invariants: windows are whole minutes, ``[start, end)``; QPS = events / window
seconds; a rate whose denominator is zero is ``None`` (shown as "-"), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rolebus.errors import ConfigError
from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS

AUTHORS = ("user", "assistant", "system", "tool")
FLAGS = ("hallucination", "refusal", "error", "tool_error", "safety")
LIFECYCLE = ("created", "activated", "suspended", "resumed", "archived", "deleted", "forked")
OTHER = ("rollbacks", "commits_requested", "persona_updates", "rejections")
SUMMED = (
    "events",
    *(f"msg_{a}" for a in AUTHORS),
    "tokens_in",
    "tokens_out",
    *(f"flag_{f}" for f in FLAGS),
    *LIFECYCLE,
    *OTHER,
    "lag_ms_sum",
    "lag_count",
)
"""The ``agg_minute`` counters that add up across roles and minutes."""

QUANTILES = (0.5, 0.95, 0.99)
MINUTE = timedelta(minutes=1)
MAX_WINDOW = timedelta(days=31)


@dataclass(frozen=True)
class Window:
    """A time window of whole minutes, ``[start, end)``, optionally one tenant/role."""

    start: datetime
    end: datetime
    tenant: str | None = None
    role: str | None = None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def minutes(self) -> list[datetime]:
        count = int(self.seconds // 60)
        return [self.start + i * MINUTE for i in range(count)]


def make_window(
    start: datetime, end: datetime, tenant: str | None = None, role: str | None = None
) -> Window:
    """Widen ``[start, end)`` to whole minutes (timezone-aware times only)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ConfigError("dashboard window: start and end need a timezone (e.g. ...Z)")
    floor = start.replace(second=0, microsecond=0)
    ceil = end.replace(second=0, microsecond=0)
    if ceil < end:
        ceil += MINUTE
    if ceil <= floor:
        raise ConfigError(f"dashboard window: end {end} must be after start {start}")
    if ceil - floor > MAX_WINDOW:
        raise ConfigError(f"dashboard window: at most {MAX_WINDOW.days} days (got {ceil - floor})")
    return Window(floor, ceil, tenant or None, role or None)


def last_minutes(
    now: datetime, minutes: int, tenant: str | None = None, role: str | None = None
) -> Window:
    """The window of the last ``minutes`` whole minutes, the current one included."""
    end = now.replace(second=0, microsecond=0) + MINUTE
    return make_window(end - minutes * MINUTE, end, tenant, role)


@dataclass(frozen=True)
class MinuteRow:
    """One minute of aggregates, summed over the roles in scope."""

    minute: datetime
    counts: Mapping[str, int]
    """Every name of ``SUMMED``; a missing one counts 0."""
    lag_ms_max: int = 0
    hist: Sequence[int] = ()
    """Assistant latencies per bucket of ``LATENCY_BUCKETS_MS`` (may be shorter)."""
    rejections_by_reason: Mapping[str, int] = field(default_factory=dict)


def sum_hists(hists: Iterable[Sequence[int]]) -> list[int]:
    """Element-wise sum; shorter histograms count 0 in their missing buckets."""
    total = [0] * len(LATENCY_BUCKETS_MS)
    for hist in hists:
        for i, count in enumerate(hist[: len(total)]):
            total[i] += count
    return total


def percentile(hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of the latencies counted in ``hist``, in ms,
    interpolated inside its bucket; ``None`` for an empty histogram."""
    n = sum(hist)
    if n == 0:
        return None
    rank = q * n
    cumulative = 0
    for i, count in enumerate(hist):
        if count and cumulative + count >= rank:
            lower = 0.0 if i == 0 else float(LATENCY_BUCKETS_MS[i - 1])
            upper = float(LATENCY_BUCKETS_MS[i])
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * max(rank - cumulative, 0) / count
        cumulative += count
    return float(LATENCY_BUCKETS_MS[-2])  # unreachable: the last bucket holds rank n


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class Point:
    """One minute of the chart series."""

    minute: datetime
    events: int
    qps: float
    messages: dict[str, int]
    latency_ms: dict[str, float | None]
    tokens_in: int
    tokens_out: int
    flags: dict[str, int]
    rejections: int
    lag_ms_avg: float | None
    lag_ms_max: int


@dataclass(frozen=True)
class Summary:
    """Every figure of the dashboard over one window."""

    window: Window
    events: int
    qps: float
    messages: dict[str, int]
    latency_ms: dict[str, float | None]
    """p50/p95/p99 of assistant latencies (keys "p50", "p95", "p99")."""
    latency_count: int
    tokens_in: int
    tokens_out: int
    flags: dict[str, int]
    flag_rates: dict[str, float | None]
    """flagged ÷ assistant messages, per flag."""
    rejections: dict[str, int]
    lifecycle: dict[str, int]
    rollbacks: int
    lag_ms_avg: float | None
    lag_ms_max: int
    roles_by_state: dict[str, int]
    series: list[Point]


def _quantiles(hist: Sequence[int]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": percentile(hist, q) for q in QUANTILES}


def _point(row: MinuteRow) -> Point:
    c = row.counts
    return Point(
        minute=row.minute,
        events=c.get("events", 0),
        qps=c.get("events", 0) / 60,
        messages={a: c.get(f"msg_{a}", 0) for a in AUTHORS},
        latency_ms=_quantiles(row.hist),
        tokens_in=c.get("tokens_in", 0),
        tokens_out=c.get("tokens_out", 0),
        flags={f: c.get(f"flag_{f}", 0) for f in FLAGS},
        rejections=sum(row.rejections_by_reason.values()),
        lag_ms_avg=ratio(c.get("lag_ms_sum", 0), c.get("lag_count", 0)),
        lag_ms_max=row.lag_ms_max,
    )


def _series(window: Window, rows: Sequence[MinuteRow]) -> list[Point]:
    """One point per minute of the window; minutes without a row are zeros."""
    by_minute = {row.minute: row for row in rows}
    return [_point(by_minute.get(m) or MinuteRow(m, {})) for m in window.minutes()]


def _rejections(rows: Iterable[MinuteRow]) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in rows:
        for reason, count in row.rejections_by_reason.items():
            total[reason] = total.get(reason, 0) + count
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def summarize(
    window: Window, rows: Sequence[MinuteRow], roles_by_state: Mapping[str, int] | None = None
) -> Summary:
    """The dashboard over ``window`` from its minute rows (rows outside it are ignored)."""
    rows = [r for r in rows if window.start <= r.minute < window.end]
    totals = {name: sum(r.counts.get(name, 0) for r in rows) for name in SUMMED}
    hist = sum_hists(r.hist for r in rows)
    assistant = totals["msg_assistant"]
    flags = {f: totals[f"flag_{f}"] for f in FLAGS}
    return Summary(
        window=window,
        events=totals["events"],
        qps=totals["events"] / window.seconds,
        messages={a: totals[f"msg_{a}"] for a in AUTHORS},
        latency_ms=_quantiles(hist),
        latency_count=sum(hist),
        tokens_in=totals["tokens_in"],
        tokens_out=totals["tokens_out"],
        flags=flags,
        flag_rates={f: ratio(n, assistant) for f, n in flags.items()},
        rejections=_rejections(rows),
        lifecycle={name: totals[name] for name in LIFECYCLE},
        rollbacks=totals["rollbacks"],
        lag_ms_avg=ratio(totals["lag_ms_sum"], totals["lag_count"]),
        lag_ms_max=max((r.lag_ms_max for r in rows), default=0),
        roles_by_state=dict(sorted((roles_by_state or {}).items())),
        series=_series(window, rows),
    )
