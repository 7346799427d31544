"""The dashboard on the real PostgreSQL and in a real headless browser.

A seeded synthetic workload (messages with latencies, tokens and flags,
lifecycle events, rollbacks, rejections; two tenants; some minutes outside the
window) is folded HERE into ``agg_minute`` / ``agg_rejections_minute`` rows the
way the projector writes them, and inserted. ``rolebus dashboard`` runs as a
subprocess; Debian's chromium loads its page, and every number the page shows
(its summary table) is compared with figures recomputed from the raw workload,
not from the code under test. A screenshot is written to
``$ROLEBUS_SCREENSHOT_DIR`` (default: the test's tmp folder).

chromium comes from ``scripts/ensure-chromium`` (Makefile test target); without
it the browser test is skipped with that reason (failed under CI=true).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from rolebus.config import Settings
from rolebus.endpoints import resolve
from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS, bucket_of
from rolebus.projectors.dashboard import AUTHORS, FLAGS, LIFECYCLE, percentile
from rolebus.projectors.db import connect, migrate
from rolebus.stack.ports import free_port_block
from rolebus.wal import topics
from rolebus.wal.client import RoleClient
from testkit.harness import ProjectorProcess, WorkerProcess, worker_env

pytestmark = [pytest.mark.postgres]

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
WINDOW_MINUTES = 10
START, END = T0, T0 + timedelta(minutes=WINDOW_MINUTES)
TENANT = "acme"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


# ---------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Event:
    """One accepted event (a message or another kind) or, with ``reason``, a rejection."""

    tenant: str
    role: str
    at: datetime
    kind: str  # "message", a LIFECYCLE name, "rollbacks", "persona_updates" or "rejected"
    author: str = ""
    latency_ms: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    flags: tuple[str, ...] = ()
    lag_ms: int = 0
    reason: str = ""


def workload(seed: int = 9) -> list[Event]:
    rng = random.Random(seed)
    roles = {"acme": ["r-nova", "r-orion", "r-vega"], "globex": ["r-zed"]}
    out: list[Event] = []
    for tenant, names in roles.items():
        for role in names:
            born = T0 + timedelta(seconds=rng.randrange(0, 50))
            out.append(Event(tenant, role, born, "created", lag_ms=rng.randrange(2, 40)))
            out.append(Event(tenant, role, born, "activated", lag_ms=rng.randrange(2, 40)))
    # Minutes before and after the window too (-3 .. +12): the window must cut them.
    for _ in range(700):
        tenant = "acme" if rng.random() < 0.8 else "globex"
        role = rng.choice(roles[tenant])
        at = T0 + timedelta(seconds=rng.randrange(-180, (WINDOW_MINUTES + 2) * 60))
        author = rng.choice(("user", "assistant", "assistant", "system", "tool"))
        assistant = author == "assistant"
        flags = tuple(f for f in FLAGS if assistant and rng.random() < 0.08)
        out.append(
            Event(
                tenant, role, at, "message", author,
                latency_ms=int(rng.lognormvariate(6, 0.9)) if assistant else None,
                tokens_in=rng.randrange(5, 400),
                tokens_out=rng.randrange(0, 800) if assistant else 0,
                flags=flags, lag_ms=rng.randrange(1, 250),
            )
        )  # fmt: skip
    for kind, n in (("suspended", 2), ("resumed", 1), ("rollbacks", 3), ("archived", 1)):
        for _ in range(n):
            at = T0 + timedelta(seconds=rng.randrange(60, WINDOW_MINUTES * 60))
            out.append(Event("acme", rng.choice(roles["acme"]), at, kind, lag_ms=5))
    for reason, n in (("duplicate_event", 7), ("not_active", 4), ("unknown_commit", 2)):
        for _ in range(n):
            at = T0 + timedelta(seconds=rng.randrange(0, WINDOW_MINUTES * 60))
            out.append(Event("acme", rng.choice(roles["acme"]), at, "rejected", reason=reason))
    return out


@dataclass
class Agg:
    counts: dict[str, int] = field(default_factory=dict)
    hist: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    lag_ms_max: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def fold_aggregates(events: list[Event]) -> dict[tuple[str, str, datetime], Agg]:
    """The per-minute rows the projector would write for these events."""
    aggs: dict[tuple[str, str, datetime], Agg] = {}
    for e in events:
        agg = aggs.setdefault((e.tenant, e.role, e.at.replace(second=0, microsecond=0)), Agg())
        if e.kind == "rejected":
            agg.add("rejections")
            agg.reasons[e.reason] = agg.reasons.get(e.reason, 0) + 1
            continue
        agg.add("events")
        agg.add("lag_ms_sum", e.lag_ms)
        agg.add("lag_count")
        agg.lag_ms_max = max(agg.lag_ms_max, e.lag_ms)
        if e.kind != "message":
            agg.add(e.kind)
            continue
        agg.add(f"msg_{e.author}")
        agg.add("tokens_in", e.tokens_in)
        agg.add("tokens_out", e.tokens_out)
        for flag in e.flags:
            agg.add(f"flag_{flag}")
        if e.latency_ms is not None:
            agg.hist[bucket_of(e.latency_ms)] += 1
    return aggs


async def insert_aggregates(
    conn: psycopg.AsyncConnection[tuple[object, ...]], aggs: dict[tuple[str, str, datetime], Agg]
) -> None:
    names = sorted({name for agg in aggs.values() for name in agg.counts})
    columns = ["tenant_id", "role_id", "minute", "latency_hist", "lag_ms_max", *names]
    insert = sql.SQL("INSERT INTO agg_minute ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    rows = [
        (t, r, m, agg.hist, agg.lag_ms_max, *(agg.counts.get(n, 0) for n in names))
        for (t, r, m), agg in aggs.items()
    ]
    reasons = [
        (t, r, m, reason, n) for (t, r, m), agg in aggs.items() for reason, n in agg.reasons.items()
    ]
    async with conn.cursor() as cur:
        await cur.executemany(insert, rows)
        await cur.executemany(
            "INSERT INTO agg_rejections_minute (tenant_id, role_id, minute, reason, count)"
            " VALUES (%s, %s, %s, %s, %s)",
            reasons,
        )
        await cur.executemany(
            "INSERT INTO roles (tenant_id, role_id, lifecycle, name, persona, seq, created_at,"
            " updated_at) VALUES (%s, %s, %s, %s, '', 1, %s, %s)",
            [
                ("acme", "r-nova", "active", "Nova", T0, T0),
                ("acme", "r-orion", "suspended", "Orion", T0, T0),
                ("acme", "r-vega", "active", "Vega", T0, T0),
                ("globex", "r-zed", "active", "Zed", T0, T0),
            ],
        )


# ------------------------------------------------ figures recomputed from events


def expected(
    events: list[Event],
    tenant: str,
    role: str | None = None,
    start: datetime = START,
    end: datetime = END,
) -> dict[str, float | None]:
    """metric key (as the page's data-metric) -> value, from the raw events."""
    scope = [
        e
        for e in events
        if e.tenant == tenant and (role is None or e.role == role) and start <= e.at < end
    ]
    accepted = [e for e in scope if e.kind != "rejected"]
    msgs = [e for e in accepted if e.kind == "message"]
    assistant = [e for e in msgs if e.author == "assistant"]
    lags = [e.lag_ms for e in accepted]
    out: dict[str, float | None] = {
        "events": len(accepted),
        "qps": len(accepted) / (end - start).total_seconds(),
        "tokens_in": sum(e.tokens_in for e in msgs),
        "tokens_out": sum(e.tokens_out for e in msgs),
        "rollbacks": sum(e.kind == "rollbacks" for e in accepted),
        "lag_ms_avg": sum(lags) / len(lags),
        "lag_ms_max": max(lags),
        "latency_count": len(assistant),
    }
    for a in AUTHORS:
        out[f"messages.{a}"] = sum(e.author == a for e in msgs)
    for f in FLAGS:
        out[f"flag_rates.{f}"] = sum(f in e.flags for e in assistant) / len(assistant)
    for k in LIFECYCLE:
        out[f"lifecycle.{k}"] = sum(e.kind == k for e in accepted)
    for e in scope:
        if e.kind == "rejected":
            key = f"rejections.{e.reason}"
            out[key] = (out.get(key) or 0) + 1
    return out


def exact_latencies(
    events: list[Event], tenant: str, start: datetime = START, end: datetime = END
) -> list[int]:
    return sorted(
        e.latency_ms
        for e in events
        if e.tenant == tenant and e.latency_ms is not None and start <= e.at < end
    )


def assert_latencies(shown: dict[str, float | None], latencies: list[int]) -> None:
    """Each percentile: exactly the summed-histogram estimate, and within the
    documented bound (the width of the true value's bucket) of the exact one."""
    hist = [0] * len(LATENCY_BUCKETS_MS)
    for ms in latencies:
        hist[bucket_of(ms)] += 1
    for q in (0.5, 0.95, 0.99):
        value = shown[f"latency_ms.p{round(q * 100)}"]
        assert value is not None
        assert value == pytest.approx(percentile(hist, q))
        true = latencies[math.ceil(q * len(latencies)) - 1]
        i = bucket_of(true)
        width = LATENCY_BUCKETS_MS[i] - (LATENCY_BUCKETS_MS[i - 1] if i else 0)
        assert abs(value - true) <= width, (q, value, true)


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return workload()


@pytest.fixture
async def store(settings: Settings, events: list[Event]) -> str:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    async with connect(settings, resolve(settings), schema) as conn:
        await migrate(conn, schema, embedding_dim=8, embedding_model="test-8")
        await insert_aggregates(conn, fold_aggregates(events))
        await conn.commit()
    return schema


@dataclass(frozen=True)
class Server:
    url: str
    log: Path


@contextmanager
def dashboard(settings: Settings, schema: str, tenant: str, log: Path) -> Iterator[Server]:
    """``rolebus dashboard --tenant T`` as a subprocess on a free port, until exit."""
    ends = resolve(settings)
    port = free_port_block(1)
    env = {
        **os.environ,
        "ROLEBUS_PG_DSN": ends.pg_dsn,
        "ROLEBUS_KAFKA_BOOTSTRAP": ends.kafka_bootstrap,
        "ROLEBUS_PG_SCHEMA": schema,
    }
    argv = [sys.executable, "-c", "from rolebus.cli import main; main()", "dashboard"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port), "--tenant", tenant, "--refresh", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url + "api/summary?minutes=1", proc, log)
        yield Server(url, log)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def server(settings: Settings, store: str, tmp_path: Path) -> Iterator[Server]:
    with dashboard(settings, store, TENANT, tmp_path / "dashboard.log") as running:
        yield running


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rolebus dashboard exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"rolebus dashboard did not answer at {url} within 30 s:\n{log.read_text()}")


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        loaded: dict[str, object] = json.loads(response.read())
        return loaded


WINDOW_QUERY = f"start={START.isoformat()}&end={END.isoformat()}".replace("+00:00", "Z")


# ---------------------------------------------------------------------- tests


def flatten(data: dict[str, object]) -> dict[str, float | None]:
    """The summary JSON keyed like the page's data-metric attributes."""
    out: dict[str, float | None] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("window", "roles_by_state"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, int | float) or value is None:
            out[key] = value
    return out


@pytest.mark.parametrize("role", [None, "r-orion"])
def test_api_summary_matches_the_events(
    server: Server, events: list[Event], role: str | None
) -> None:
    query = WINDOW_QUERY + (f"&role={role}" if role else "")
    data = get_json(server.url + "api/summary?" + query)
    shown = flatten(data)
    for key, value in expected(events, TENANT, role).items():
        assert shown.get(key) == pytest.approx(value), key
    series = data["series"]
    assert isinstance(series, list) and len(series) == WINDOW_MINUTES
    assert sum(p["events"] for p in series) == expected(events, TENANT, role)["events"]
    if role is None:
        assert_latencies(shown, exact_latencies(events, TENANT))
        assert data["roles_by_state"] == {"active": 2, "suspended": 1}


def test_api_refuses_another_tenant_and_bad_windows(server: Server) -> None:
    for query, status in (("tenant=globex", 400), ("start=2026-11-29T09:00:00Z", 400)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get_json(server.url + "api/summary?" + query)
        assert caught.value.code == status
        assert "error" in json.loads(caught.value.read())


def test_page_assets_are_served_locally(server: Server) -> None:
    with urllib.request.urlopen(server.url + "static/plotly.min.js", timeout=10) as response:
        body = response.read()
    assert body == resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    # Nothing on the page points outside this server (it works offline).
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = resources.files("rolebus.projectors.web").joinpath(name).read_text()
        assert "://" not in text, name


class MetricCells(HTMLParser):
    """The summary table's cells: data-metric -> (text, data-value)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, tuple[str, str]] = {}
        self.state = ""
        self._open: tuple[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.state = found.get("data-state") or ""
        if tag == "td" and found.get("data-metric"):
            self._open = (found["data-metric"] or "", found.get("data-value") or "")
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open:
            self.cells[self._open[0]] = (self._text.strip(), self._open[1])
            self._open = None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium on PATH (scripts/ensure-chromium installs Debian's chromium as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:8]}"
    profile.mkdir()
    argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def shown_number(text: str) -> tuple[float, float]:
    """The number a cell's text shows and its rounding tolerance (half a unit
    in the last shown digit); percentages as fractions."""
    digits = text.removesuffix(" %")
    decimals = len(digits.partition(".")[2])
    scale = 100 if text.endswith(" %") else 1
    return float(digits) / scale, 0.5 * 10**-decimals / scale + 1e-12


COMMON = ("--window-size=1500,1250", "--virtual-time-budget=8000")


def read_page(tmp_path: Path, server: Server, page: str) -> MetricCells:
    """The page after its scripts ran, in headless chromium: its metric cells."""
    dom = run_chromium(tmp_path, *COMMON, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-3000:]
    cells = MetricCells()
    cells.feed(dom.stdout)
    assert cells.state == "ready", (
        f"page state {cells.state!r}; server log:\n{server.log.read_text()}"
    )
    assert dom.stdout.count('class="main-svg"') >= 8, "not every chart was drawn"
    return cells


def assert_page_shows(cells: MetricCells, want: dict[str, float | None]) -> None:
    """Each wanted figure is on the page: raw value equal, text rounded from it."""
    for key, value in want.items():
        assert key in cells.cells, f"{key} not on the page ({sorted(cells.cells)})"
        text, raw = cells.cells[key]
        assert float(raw) == pytest.approx(value), key
        number, tolerance = shown_number(text)
        assert number == pytest.approx(value, abs=tolerance), (key, text)


def screenshot(tmp_path: Path, page: str, name: str) -> Path:
    shots = Path(os.environ.get("ROLEBUS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    target = shots / name
    shot = run_chromium(tmp_path, *COMMON, "--hide-scrollbars", f"--screenshot={target}", page)
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert target.stat().st_size > 20_000, "screenshot is (nearly) empty"
    return target


@pytest.mark.slow
def test_page_in_headless_chromium_shows_the_recomputed_numbers(
    server: Server, events: list[Event], tmp_path: Path
) -> None:
    page = f"{server.url}?{WINDOW_QUERY}"
    cells = read_page(tmp_path, server, page)
    assert_page_shows(cells, expected(events, TENANT))
    shown = {k: float(v[1]) for k, v in cells.cells.items() if k.startswith("latency_ms.")}
    assert_latencies(dict(shown), exact_latencies(events, TENANT))
    assert cells.cells["roles_by_state.suspended"][0] == "1"
    screenshot(tmp_path, page, "dashboard.png")


def test_metrics_are_the_all_time_totals_of_the_tenant(server: Server, events: list[Event]) -> None:
    with urllib.request.urlopen(server.url + "metrics", timeout=10) as response:
        text = response.read().decode()
    got: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.get("rolebus_tenant_id") == TENANT, s  # scoped: no other tenant
            extra = s.labels.get("rolebus_flag") or s.labels.get("rolebus_rejection_reason") or ""
            extra += s.labels.get("gen_ai_token_type", "") + s.labels.get("le", "")
            key = (s.name, s.labels.get("rolebus_role_id", ""), extra)
            got[key] = got.get(key, 0) + s.value
    mine = [e for e in events if e.tenant == TENANT]  # every minute, not only the window
    for role in {e.role for e in mine}:
        ev = [e for e in mine if e.role == role]
        accepted = [e for e in ev if e.kind != "rejected"]
        assert got[("rolebus_events_total", role, "")] == len(accepted)
        assert got[("gen_ai_client_token_usage_sum", role, "input")] == sum(e.tokens_in for e in ev)
        latencies = [e for e in ev if e.latency_ms is not None]
        duration = "gen_ai_client_operation_duration_seconds_bucket"
        assert got[(duration, role, "+Inf")] == len(latencies)
        assert got[(duration, role, "1.0")] == sum(e.latency_ms <= 1000 for e in latencies)
        flagged = sum("refusal" in e.flags for e in ev)
        assert got[("rolebus_messages_flagged_total", role, "refusal")] == flagged
        for reason in {e.reason for e in ev if e.reason}:
            n = sum(e.reason == reason for e in ev)
            assert got[("rolebus_rejections_total", role, reason)] == n
        lag = sum(e.lag_ms for e in accepted) / 1000
        assert got[("rolebus_projection_lag_seconds_sum", role, "")] == pytest.approx(lag)


# ------------------------------------------- end to end: worker + projector


async def send_conversation(client: RoleClient, tenant: str, seed: int = 3) -> list[Event]:
    """A short scripted conversation through the SDK; the same as ``Event``s."""
    rng = random.Random(seed)
    out: list[Event] = []

    def note(kind: str, role: str, **fields: Any) -> None:
        out.append(Event(tenant, role, datetime.now(UTC), kind, **fields))

    for role in ("r-a", "r-b"):
        await client.append_message(role, "user", "too early")  # refused: no such role yet
        note("rejected", role, reason="unknown_role")
        await client.create_role(role.upper(), "A support agent.", role_id=role, model="m-1")
        note("created", role)
        await client.activate(role)
        note("activated", role)
    for turn in range(20):
        role = ("r-a", "r-b")[turn % 2]
        t_in = rng.randrange(5, 50)
        await client.append_message(role, "user", f"question {turn}", tokens_in=t_in)
        note("message", role, author="user", tokens_in=t_in)
        latency, t_out = rng.randrange(20, 3000), rng.randrange(10, 300)
        flags = ("hallucination",) if turn % 7 == 3 else ()
        await client.append_message(
            role, "assistant", f"answer {turn}", latency_ms=latency, tokens_out=t_out,
            flags=flags,
        )  # fmt: skip
        note("message", role, author="assistant", latency_ms=latency, tokens_out=t_out, flags=flags)
    await client.suspend("r-b")
    note("suspended", "r-b")
    await client.resume("r-a")  # refused: r-a is active
    note("rejected", "r-a", reason="transition_not_allowed")
    return out


async def _until_projected(
    settings: Settings, schema: str, want: tuple[int, int], logs: list[Path]
) -> None:
    """Until the store's aggregates count ``want`` = (accepted events, rejections)."""
    deadline = time.monotonic() + 120
    seen: object = None
    while time.monotonic() < deadline:
        try:
            async with connect(settings, resolve(settings), schema, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT (SELECT coalesce(sum(events), 0) FROM agg_minute),"
                    " (SELECT coalesce(sum(count), 0) FROM agg_rejections_minute)"
                )
                seen = await cur.fetchone()
        except Exception:  # the projector has not migrated the schema yet
            seen = None
        if seen == want:
            return
        await asyncio.sleep(0.3)
    tails = "\n".join(log.read_text(errors="replace")[-2500:] for log in logs)
    pytest.fail(f"store shows (events, rejections) = {seen}, want {want}\n{tails}")


@pytest.mark.kafka
@pytest.mark.slow
async def test_end_to_end_worker_projector_page(settings: Settings, tmp_path: Path) -> None:
    """SDK -> WAL -> worker -> output topics -> ``rolebus project`` -> store ->
    ``rolebus dashboard`` -> chromium: the page shows what was sent."""
    ends = resolve(settings)
    mine = replace(settings, data_dir=tmp_path / "data")
    await topics.ensure(mine, ends)
    app_id, schema, tenant = f"rb-dash-{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:10]}", "e2e"
    worker = WorkerProcess(mine, ends, app_id, tmp_path / "worker.log").start()
    env = {**worker_env(mine, ends, app_id), "ROLEBUS_PG_SCHEMA": schema}
    plog = tmp_path / "projector.log"
    projector = ProjectorProcess(env, plog, ("--group", f"{app_id}-projector")).start()
    try:
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
        async with RoleClient(mine, tenant) as client:
            sent = await send_conversation(client, tenant)
        accepted = sum(e.kind != "rejected" for e in sent)
        want_counts = (accepted, len(sent) - accepted)
        await _until_projected(mine, schema, want_counts, [worker.log_path, plog])
        end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=2)
        query = f"start={start.isoformat()}&end={end.isoformat()}".replace("+00:00", "Z")
        with dashboard(mine, schema, tenant, tmp_path / "dashboard.log") as server:
            page = f"{server.url}?{query}"
            cells = read_page(tmp_path, server, page)
            screenshot(tmp_path, page, "dashboard-e2e.png")
    finally:
        projector.stop()
        worker.stop()
    want = expected(sent, tenant, start=start, end=end)
    # Lag is the projector's wall time minus event time: bounded, not recomputable.
    lag_avg, lag_max = (float(cells.cells[k][1]) for k in ("lag_ms_avg", "lag_ms_max"))
    assert 0 <= lag_avg <= lag_max < 120_000
    del want["lag_ms_avg"], want["lag_ms_max"]
    assert_page_shows(cells, want)
    shown = {k: float(v[1]) for k, v in cells.cells.items() if k.startswith("latency_ms.")}
    assert_latencies(shown, exact_latencies(sent, tenant, start, end))
    assert cells.cells["roles_by_state.active"][0] == "1"
    assert cells.cells["roles_by_state.suspended"][0] == "1"
