"""The dashboard's pure core: windows, histogram percentiles and their error
bound, the window summary and the request parsing of the web app."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolebus.errors import ConfigError
from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS, bucket_of
from rolebus.projectors.dashboard import (
    MinuteRow,
    make_window,
    percentile,
    sum_hists,
    summarize,
)
from rolebus.projectors.webapp import summary_json, window_from_query

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def hist_of(latencies: list[float]) -> list[int]:
    hist = [0] * len(LATENCY_BUCKETS_MS)
    for ms in latencies:
        hist[bucket_of(ms)] += 1
    return hist


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def bucket_width(ms: float) -> float:
    i = bucket_of(ms)
    lower = 0.0 if i == 0 else LATENCY_BUCKETS_MS[i - 1]
    return LATENCY_BUCKETS_MS[i] - lower


def test_percentile_interpolates_inside_the_bucket() -> None:
    assert percentile([0] * 25, 0.5) is None
    # 10 latencies in (100, 150]: the median is halfway through the bucket.
    hist = [0] * len(LATENCY_BUCKETS_MS)
    hist[LATENCY_BUCKETS_MS.index(150)] = 10
    assert percentile(hist, 0.5) == pytest.approx(125.0)
    assert percentile(hist, 1.0) == pytest.approx(150.0)
    # Beyond the last finite bound the estimate is that bound (a floor).
    assert percentile(hist_of([90_000, 120_000]), 0.99) == 60_000


@given(
    st.lists(st.floats(min_value=0, max_value=59_999, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.95, 0.99, 0.01, 1.0]),
)
def test_percentile_error_is_at_most_the_width_of_the_true_values_bucket(
    values: list[float], q: float
) -> None:
    true = exact_quantile(values, q)
    estimate = percentile(hist_of(values), q)
    assert estimate is not None
    assert abs(estimate - true) <= bucket_width(true) + 1e-9


def test_sum_hists_adds_element_wise_and_pads_short_ones() -> None:
    total = sum_hists([[1, 2], [0, 1, 3], []])
    assert total[:3] == [1, 3, 3]
    assert len(total) == len(LATENCY_BUCKETS_MS)


def test_make_window_widens_to_whole_minutes_and_checks_input() -> None:
    w = make_window(T0 + timedelta(seconds=30), T0 + timedelta(minutes=2, seconds=1))
    assert (w.start, w.end, w.seconds) == (T0, T0 + 3 * MIN, 180.0)
    assert len(w.minutes()) == 3
    with pytest.raises(ConfigError, match="timezone"):
        make_window(T0.replace(tzinfo=None), T0)
    with pytest.raises(ConfigError, match="must be after"):
        make_window(T0, T0)


def row(minute: int, **counts: int) -> MinuteRow:
    lat = counts.pop("lat", 0)
    reasons = {"duplicate_event": counts.pop("dup", 0)} if "dup" in counts else {}
    return MinuteRow(
        T0 + minute * MIN,
        counts,
        counts.get("lag_ms_max", 0),
        hist_of([lat] * 2) if lat else [],
        reasons,
    )


def test_summarize_totals_rates_and_series() -> None:
    window = make_window(T0, T0 + 4 * MIN, tenant="acme")
    rows = [
        row(0, events=6, msg_user=2, msg_assistant=2, tokens_in=10, tokens_out=30,
            flag_hallucination=1, lag_ms_sum=60, lag_count=6, lag_ms_max=20, lat=120),
        row(2, events=4, msg_assistant=2, flag_refusal=2, created=1, activated=1,
            rollbacks=1, dup=3, lag_ms_sum=40, lag_count=4, lag_ms_max=35, lat=900),
        row(9, events=1000),  # outside the window: ignored
    ]  # fmt: skip
    s = summarize(window, rows, {"active": 2, "archived": 1})
    assert (s.events, s.qps) == (10, 10 / 240)
    assert s.messages == {"user": 2, "assistant": 4, "system": 0, "tool": 0}
    assert (s.tokens_in, s.tokens_out) == (10, 30)
    assert s.flag_rates["hallucination"] == 0.25
    assert s.flag_rates["refusal"] == 0.5
    assert s.flag_rates["safety"] == 0.0
    assert s.rejections == {"duplicate_event": 3}
    assert (s.lifecycle["created"], s.lifecycle["activated"], s.rollbacks) == (1, 1, 1)
    assert (s.lag_ms_avg, s.lag_ms_max) == (10.0, 35)
    assert s.latency_count == 4
    assert s.roles_by_state == {"active": 2, "archived": 1}
    # One point per minute; minute 1 and 3 had no rows.
    assert [p.events for p in s.series] == [6, 0, 4, 0]
    assert s.series[1].latency_ms["p50"] is None
    assert s.series[2].rejections == 3
    assert s.series[0].qps == 0.1


def test_rates_without_a_denominator_are_none() -> None:
    s = summarize(make_window(T0, T0 + MIN), [row(0, events=1, msg_user=1)])
    assert s.flag_rates["hallucination"] is None
    assert s.lag_ms_avg is None
    assert (s.latency_ms["p99"], s.latency_count) == (None, 0)


def test_window_from_query() -> None:
    now = T0 + timedelta(seconds=20)
    w = window_from_query({"minutes": "15", "role": "r1"}, None, now)
    assert (w.start, w.end, w.tenant, w.role) == (T0 - 14 * MIN, T0 + MIN, None, "r1")
    w = window_from_query(
        {"start": "2026-11-29T10:00:00Z", "end": "2026-11-29T10:05:00Z"}, "a", now
    )
    assert (w.seconds, w.tenant) == (300.0, "a")
    with pytest.raises(ConfigError, match="serves tenant 'a' only"):
        window_from_query({"tenant": "b"}, "a", now)
    with pytest.raises(ConfigError, match="both start and end"):
        window_from_query({"start": "2026-11-29T10:00:00Z"}, None, now)
    with pytest.raises(ConfigError, match="positive integer"):
        window_from_query({"minutes": "-3"}, None, now)


def test_summary_json_has_iso_times_and_window_seconds() -> None:
    data = summary_json(summarize(make_window(T0, T0 + MIN), [row(0, events=3)]))
    assert data["window"]["start"] == "2026-11-29T10:00:00+00:00"
    assert data["window"]["seconds"] == 60.0
    assert data["series"][0]["minute"] == "2026-11-29T10:00:00+00:00"
    assert data["events"] == 3


async def test_web_app_serves_the_page_and_answers_bad_requests_clearly() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from rolebus.config import Settings
    from rolebus.endpoints import Endpoints
    from rolebus.projectors.webapp import DashboardConfig, make_app

    ends = Endpoints("127.0.0.1:1", "postgresql://nobody@127.0.0.1:1/none", True, True)
    app = make_app(DashboardConfig(Settings(), ends, tenant="acme", refresh_s=7))
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        assert page.status == 200
        assert 'content="7"' in await page.text()
        js = await client.get("/static/plotly.min.js")
        assert js.status == 200 and js.content_type == "application/javascript"
        assert (await client.get("/static/../../etc/passwd")).status == 404
        assert (await client.get("/static/other.js")).status == 404
        bad = await client.get("/api/summary?minutes=zero")
        assert bad.status == 400
        assert "positive integer" in (await bad.json())["error"]
        other = await client.get("/api/summary?tenant=globex")
        assert other.status == 400
        # Nothing listens on port 1: a clear 503, not a traceback.
        down = await client.get("/api/summary?minutes=5")
        assert down.status == 503
        assert "unreachable" in (await down.json())["error"]
        assert (await client.get("/metrics")).status == 503
