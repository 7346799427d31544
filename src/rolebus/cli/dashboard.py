"""``rolebus dashboard``: serve the dashboard page and ``/metrics`` until Ctrl-C/SIGTERM."""

from __future__ import annotations

from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import progress, state


def dashboard(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on")] = 8321,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 to serve other machines)")
    ] = "127.0.0.1",
    tenant: Annotated[
        str | None, typer.Option(help="Show this tenant only (default: every tenant)")
    ] = None,
    refresh: Annotated[
        float, typer.Option(min=0.5, help="Seconds between the page's refreshes")
    ] = 5.0,
    role_labels: Annotated[
        bool,
        typer.Option(
            help="Label /metrics per role; --no-role-labels sums roles per tenant and model "
            "(far fewer series when there are many roles)"
        ),
    ] = True,
) -> None:
    """Serve the live dashboard page (charts that refresh themselves, no internet
    needed) and Prometheus metrics at /metrics, read from the context store."""
    from aiohttp import web

    from rolebus.projectors.webapp import DashboardConfig, make_app

    settings = state(ctx).settings()
    config = DashboardConfig(
        settings, endpoints.resolve(settings), tenant=tenant, refresh_s=refresh
    )
    progress(f"dashboard on http://{host}:{port}/ (metrics at /metrics); Ctrl-C stops")
    web.run_app(make_app(config), host=host, port=port, print=None, access_log=None)
