"""Static files of the dashboard page (index.html, dashboard.js, dashboard.css).

Served by ``rolebus.projectors.webapp`` together with ``plotly.min.js`` from the
installed ``plotly`` wheel, so the page works offline (no CDN)."""
