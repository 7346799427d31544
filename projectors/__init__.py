"""rolebus.projectors: context store and dashboards (later issues)."""
