"""rolebus: the event-sourced backbone of an AI role platform.

The Kafka WAL is the source of truth; everything else (role state, commits,
the context store, dashboards) is a projection that can be rebuilt from it.
"""

from rolebus.errors import RolebusError

__all__ = ["RolebusError", "__version__"]
__version__ = "0.1.0"
