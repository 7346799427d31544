"""Where Kafka and PostgreSQL are: external (settings) or the local stack.

``ROLEBUS_KAFKA_BOOTSTRAP`` / ``ROLEBUS_PG_DSN`` (or the config file) select an
external service and nothing local is started for it. Otherwise the local
stack's ports are read from its data folder (recorded at ``stack up``), falling
back to the settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolebus.config import Settings
from rolebus.errors import StackError

STACK_FILE = "stack.json"
LAYOUT_KEYS = ("brokers", "kafka_port", "kafka_controller_port", "pg_port")


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    pg_dsn: str
    kafka_external: bool
    pg_external: bool


@dataclass(frozen=True)
class Layout:
    """The local stack's size and ports: as recorded by the last ``stack up``,
    else the settings (a running stack keeps its ports until it is stopped)."""

    brokers: int
    kafka_port: int
    kafka_controller_port: int
    pg_port: int


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


def layout(settings: Settings, recorded: Mapping[str, Any] | None = None) -> Layout:
    """The recorded value of each layout key, else the setting. Reads stack.json
    unless its content is passed as ``recorded`` (callers that need both)."""
    if recorded is None:
        recorded = read_stack_file(settings.data_dir)
    return Layout(**{key: int(recorded.get(key, getattr(settings, key))) for key in LAYOUT_KEYS})


def resolve(settings: Settings, stack_layout: Layout | None = None) -> Endpoints:
    """External where configured, unless the value is just the local stack's own
    address (as after ``eval "$(rolebus stack env)"``): then it stays local."""
    lay = stack_layout or layout(settings)
    local_kafka = local_bootstrap(lay.kafka_port, lay.brokers)
    local_pg = local_dsn(lay.pg_port)
    return Endpoints(
        kafka_bootstrap=settings.kafka_bootstrap or local_kafka,
        pg_dsn=settings.pg_dsn or local_pg,
        kafka_external=settings.kafka_bootstrap not in (None, local_kafka),
        pg_external=settings.pg_dsn not in (None, local_pg),
    )


def bootstrap_origin(ends: Endpoints) -> str:
    """How to name the bootstrap setting in errors."""
    if ends.kafka_external:
        return f"ROLEBUS_KAFKA_BOOTSTRAP={ends.kafka_bootstrap}"
    return f"local stack Kafka at {ends.kafka_bootstrap} (is `rolebus stack up` running?)"
