"""Where Kafka and PostgreSQL are: external (settings) or the local stack.

``ROLEBUS_KAFKA_BOOTSTRAP`` / ``ROLEBUS_PG_DSN`` (or the config file) select an
external service and nothing local is started for it. Otherwise the local
stack's ports are read from its data folder (recorded at ``stack up``), falling
back to the settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebus.config import Settings
from rolebus.errors import StackError

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    pg_dsn: str
    kafka_external: bool
    pg_external: bool


def read_stack_file(data_dir: Path) -> dict[str, Any]:
    path = data_dir / STACK_FILE
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(
            f"{path}: unreadable ({exc}); delete it and run `rolebus stack up`"
        ) from exc
    if not isinstance(loaded, dict):
        raise StackError(f"{path}: not a JSON object; delete it and run `rolebus stack up`")
    return loaded


def local_bootstrap(kafka_port: int, brokers: int) -> str:
    return ",".join(f"127.0.0.1:{kafka_port + i}" for i in range(brokers))


def local_dsn(pg_port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{pg_port}/rolebus"


def resolve(settings: Settings) -> Endpoints:
    """External where configured, unless the value is just the local stack's own
    address (as after ``eval "$(rolebus stack env)"``): then it stays local."""
    recorded = read_stack_file(settings.data_dir)
    kafka_port = int(recorded.get("kafka_port", settings.kafka_port))
    brokers = int(recorded.get("brokers", settings.brokers))
    pg_port = int(recorded.get("pg_port", settings.pg_port))
    local_kafka, local_pg = local_bootstrap(kafka_port, brokers), local_dsn(pg_port)
    return Endpoints(
        kafka_bootstrap=settings.kafka_bootstrap or local_kafka,
        pg_dsn=settings.pg_dsn or local_pg,
        kafka_external=settings.kafka_bootstrap not in (None, local_kafka),
        pg_external=settings.pg_dsn not in (None, local_pg),
    )
