"""The dashboard's HTTP server (aiohttp): the page, its JSON and ``/metrics``.

Routes:
  ``/``                  the page (``rolebus.projectors.web``), polling the JSON below
  ``/static/plotly.min.js`` the chart library, read from the installed plotly wheel
  ``/api/summary``       ``dashboard.Summary`` as JSON; ``?minutes=N`` (last N
                         minutes, default 60) or ``?start=ISO&end=ISO``, ``&role=R``,
                         ``&tenant=T`` (unless the server is scoped to one tenant)
  ``/metrics``           Prometheus exposition (``rolebus.projectors.metrics``)

Invariants: nothing is fetched from outside this server (the page works
offline); every request reads the store afresh through its own connection, so
a restarted server or a rebuilt store never shows stale figures; a server
started with ``tenant`` never shows another tenant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import ConfigError, StoreError
from rolebus.projectors.dashboard import Summary, Window, last_minutes, make_window
from rolebus.projectors.dashboard_sql import (
    read_summary,
    read_tenants_now,
    read_totals,
    snapshot,
)
from rolebus.projectors.db import connect
from rolebus.projectors.metrics import StoreCollector

WEB_PACKAGE = "rolebus.projectors.web"
DEFAULT_MINUTES = 60


@dataclass(frozen=True)
class DashboardConfig:
    settings: Settings
    ends: Endpoints
    schema: str | None = None
    """Store schema (default ``Settings.pg_schema``)."""
    tenant: str | None = None
    """Serve this tenant only (None: every tenant, or the one a request names)."""
    refresh_s: float = 5.0
    role_labels: bool = True
    """/metrics per role (rolebus.role.id); False: per tenant and model only."""


CONFIG = web.AppKey("config", DashboardConfig)


def plotly_js() -> bytes:
    """plotly.min.js as shipped inside the ``plotly`` wheel."""
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()


def _static(name: str) -> bytes:
    return resources.files(WEB_PACKAGE).joinpath(name).read_bytes()


def window_from_query(query: dict[str, str], scope_tenant: str | None, now: datetime) -> Window:
    """The window a request asks for (pure; raises ConfigError on bad input)."""
    tenant = query.get("tenant") or None
    if scope_tenant is not None:
        if tenant not in (None, scope_tenant):
            raise ConfigError(
                f"this dashboard serves tenant {scope_tenant!r} only (asked {tenant!r})"
            )
        tenant = scope_tenant
    role = query.get("role") or None
    if query.get("start") or query.get("end"):
        try:
            start = datetime.fromisoformat(query["start"])
            end = datetime.fromisoformat(query["end"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                "dashboard window: give both start and end as ISO times, e.g. "
                f"start=2026-11-29T10:00:00Z&end=2026-11-29T11:00:00Z ({exc})"
            ) from exc
        return make_window(start, end, tenant, role)
    raw = query.get("minutes") or str(DEFAULT_MINUTES)
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"dashboard window: minutes must be a positive integer (got {raw!r})")
    return last_minutes(now, int(raw), tenant, role)


def summary_json(summary: Summary) -> dict[str, Any]:
    """The summary as JSON-ready data (times as ISO 8601 strings)."""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(summary), default=_iso))
    data["window"]["seconds"] = summary.window.seconds
    return data


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serializable: {value!r}")


async def _index(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    html = _static("index.html").decode().replace("__REFRESH_S__", f"{config.refresh_s:g}")
    return web.Response(text=html, content_type="text/html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {"plotly.min.js": "application/javascript", "dashboard.js": "application/javascript"}
    types["dashboard.css"] = "text/css"
    if name not in types:
        raise web.HTTPNotFound()
    body = plotly_js() if name == "plotly.min.js" else _static(name)
    return web.Response(
        body=body, content_type=types[name], headers={"Cache-Control": "max-age=3600"}
    )


async def _summary(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        window = window_from_query(dict(request.query), config.tenant, datetime.now(UTC))
        async with connect(config.settings, config.ends, config.schema, autocommit=True) as conn:
            summary = await read_summary(conn, window)
    except ConfigError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except StoreError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(summary_json(summary), headers={"Cache-Control": "no-store"})


async def _metrics(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    try:
        async with (
            connect(config.settings, config.ends, config.schema, autocommit=True) as conn,
            snapshot(conn),
        ):
            totals = await read_totals(conn, config.tenant)
            tenants = await read_tenants_now(conn, config.tenant)
    except StoreError as exc:
        return web.Response(status=503, text=f"rolebus: {exc}\n")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(totals, tenants, by_role=config.role_labels))
    # The scraper's Accept header picks the format and the name escaping.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(registry), headers={"Content-Type": content_type})


def make_app(config: DashboardConfig) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _asset)
    app.router.add_get("/api/summary", _summary)
    app.router.add_get("/metrics", _metrics)
    return app
