"""Settings: one frozen object, built once from ``ROLEBUS_*`` env vars and an
optional ``rolebus.toml``, validated at start and passed explicitly.

Precedence: environment > config file > defaults. Nothing here runs at import.
Every error names the setting (env var spelling) and the rule.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolebus.errors import ConfigError

ENV_PREFIX = "ROLEBUS_"
DEFAULT_CONFIG_FILE = "rolebus.toml"


@dataclass(frozen=True)
class Settings:
    """Every knob of rolebus. Field names map to ``ROLEBUS_<NAME>`` env vars."""

    data_dir: Path = Path(".rolebus")
    """Folder holding the local stack's data, logs and pid files."""
    kafka_bootstrap: str | None = None
    """External Kafka (host:port[,host:port]); when set no local broker is started."""
    pg_dsn: str | None = None
    """External PostgreSQL DSN; when set no local Postgres is started."""
    kafka_port: int = 9092
    """First local broker's client port; broker i listens on kafka_port + i."""
    kafka_controller_port: int = 9192
    """First local controller port; controller i listens on this + i."""
    pg_port: int = 55432
    """Local PostgreSQL port (not 5432, to stay clear of a system Postgres)."""
    brokers: int = 1
    """Number of local KRaft nodes (combined broker + controller)."""
    kafka_heap: str = "512m"
    """JVM heap (-Xmx) of each local broker."""
    kafka_libs_dir: Path | None = None
    """Where Maven copies the Kafka jars; default ~/.cache/rolebus/kafka-<version>."""
    topic_prefix: str = "rolebus"
    """Topic names are <prefix>.wal, <prefix>.changes, ..."""
    wal_partitions: int = 12
    """Partitions of the WAL topic (and of the topics keyed like it)."""
    replication_factor: int | None = None
    """Topic replication factor; default min(3, brokers in the cluster)."""
    min_insync_replicas: int | None = None
    """min.insync.replicas; default replication_factor - 1 (at least 1)."""
    max_content_bytes: int = 256 * 1024
    """Largest message content a client may send (UTF-8 bytes)."""
    commit_every: int = 50
    """A commit is cut every N accepted events of a role."""
    message_window: int = 20
    """Messages kept in a role's state for context building."""
    app_id: str = "rolebus-streams"
    """Consumer group of the stream workers (also names their state changelog)."""
    connect_timeout_s: float = 10.0
    """How long to wait for Kafka or Postgres to answer before failing."""
    pg_schema: str = "rolebus"
    """PostgreSQL schema of the context store (a replay rebuilds into another)."""
    embeddings: str = "wordllama"
    """Embedding provider: wordllama | sentence-transformers:<model> | openai:<base url>."""
    embeddings_model: str | None = None
    """Model name sent to an openai: endpoint (required there)."""
    embeddings_api_key: str | None = field(default=None, repr=False)
    """Bearer token for an openai: endpoint (unset: no Authorization header)."""
    embeddings_dim: int | None = None
    """Expected vector size; for openai: it skips the start-up probe request."""
    embeddings_batch: int = 64
    """Texts per embedding call (per HTTP request for openai:)."""
    embeddings_timeout_s: float = 30.0
    """How long one embedding request to an openai: endpoint may take."""
    projector_group: str | None = None
    """Consumer group of `rolebus project` (default <app_id>-projector)."""
    projector_batch: int = 2000
    """Most output records `rolebus project` writes in one transaction."""

    def env_name(self, field_name: str) -> str:
        return ENV_PREFIX + field_name.upper()


def _parse_port(name: str, raw: Any) -> int:
    port = _parse_int(name, raw)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: must be a TCP port between 1 and 65535 (got {raw!r})")
    return port


def _parse_int(name: str, raw: Any, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be an integer (got {raw!r})") from None
    if isinstance(raw, float) and raw != value:
        raise ConfigError(f"{name}: must be an integer (got {raw!r})")
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum} (got {raw!r})")
    return value


def _positive(name: str, raw: Any) -> int:
    return _parse_int(name, raw, minimum=1)


def _parse_float(name: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be a number of seconds (got {raw!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a finite number > 0 (got {raw!r})")
    return value


def parse_bootstrap(name: str, raw: Any) -> str:
    """Validate ``host:port[,host:port...]``; return it normalised (no spaces)."""
    text = str(raw).strip()
    if not text:
        raise ConfigError(f"{name}: must be host:port[,host:port...] (got {raw!r})")
    parts = [p.strip() for p in text.split(",")]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{name}: '{part}' is not host:port (got {raw!r})")
        _parse_port(name, port)
    return ",".join(parts)


def _parse_dsn(name: str, raw: Any) -> str:
    text = str(raw).strip()
    if not text.startswith(("postgresql://", "postgres://")) and "=" not in text:
        raise ConfigError(
            f"{name}: must be a PostgreSQL URI (postgresql://user@host:port/db) "
            f"or key=value DSN (got {raw!r})"
        )
    return text


def _parse_topic_prefix(name: str, raw: Any) -> str:
    text = str(raw)
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not text or len(text) > 200 or not set(text) <= allowed:
        raise ConfigError(f"{name}: must be 1-200 characters of [a-zA-Z0-9._-] (got {raw!r})")
    return text


def _parse_identifier(name: str, raw: Any) -> str:
    text = str(raw)
    if (
        not text
        or len(text) > 63
        or not (text[0].isalpha() or text[0] == "_")
        or not all(c.isalnum() or c == "_" for c in text)
    ):
        raise ConfigError(
            f"{name}: must be a PostgreSQL identifier: 1-63 letters, digits or _, "
            f"not starting with a digit (got {raw!r})"
        )
    return text.lower()


def _parse_heap(name: str, raw: Any) -> str:
    text = str(raw).strip().lower()
    if not text[:-1].isdigit() or text[-1] not in "mg":
        raise ConfigError(f"{name}: must be a JVM size such as 512m or 2g (got {raw!r})")
    return text


def _optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def parse_optional(name: str, raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return parse(name, raw)

    return parse_optional


def parse_embeddings(name: str, raw: Any) -> str:
    """``wordllama`` | ``sentence-transformers:<model name or path>`` | ``openai:<http(s) url>``."""
    text = str(raw).strip()
    kind, sep, arg = text.partition(":")
    if text == "wordllama":
        return text
    if kind == "sentence-transformers" and sep and arg.strip():
        return f"{kind}:{arg.strip()}"
    if kind == "openai" and arg.startswith(("http://", "https://")) and len(arg) > 8:
        return f"{kind}:{arg.rstrip('/')}"
    raise ConfigError(
        f"{name}: must be wordllama, sentence-transformers:<model name or path> or "
        f"openai:<base url such as http://127.0.0.1:11434/v1> (got {raw!r})"
    )


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "data_dir": lambda n, v: Path(str(v)).expanduser(),
    "kafka_bootstrap": _optional(parse_bootstrap),
    "pg_dsn": _optional(_parse_dsn),
    "kafka_port": _parse_port,
    "kafka_controller_port": _parse_port,
    "pg_port": _parse_port,
    "brokers": _positive,
    "kafka_heap": _parse_heap,
    "kafka_libs_dir": _optional(lambda n, v: Path(str(v)).expanduser()),
    "topic_prefix": _parse_topic_prefix,
    "wal_partitions": _positive,
    "replication_factor": _optional(_positive),
    "min_insync_replicas": _optional(_positive),
    "max_content_bytes": _positive,
    "commit_every": _positive,
    "message_window": _positive,
    "app_id": _parse_topic_prefix,
    "connect_timeout_s": _parse_float,
    "pg_schema": _parse_identifier,
    "projector_group": _optional(_parse_topic_prefix),
    "projector_batch": _positive,
    "embeddings": parse_embeddings,
    "embeddings_model": _optional(lambda n, v: str(v).strip()),
    "embeddings_api_key": _optional(lambda n, v: str(v).strip()),
    "embeddings_dim": _optional(_positive),
    "embeddings_batch": _positive,
    "embeddings_timeout_s": _parse_float,
}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    section = data.get("rolebus", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [rolebus] must be a table")
    unknown = sorted(set(section) - set(_PARSERS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_PARSERS))})"
        )
    return dict(section)


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Build and validate Settings. ``overrides`` (from CLI flags) win over env."""
    env = os.environ if env is None else env
    if config_file is None and env.get("ROLEBUS_CONFIG"):
        config_file = Path(env["ROLEBUS_CONFIG"])
        if not config_file.is_file():
            raise ConfigError(f"ROLEBUS_CONFIG: no such file {config_file}")
    if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = Path(DEFAULT_CONFIG_FILE)
    raw: dict[str, tuple[str, Any]] = {}
    if config_file is not None:
        for key, value in _read_file(config_file).items():
            raw[key] = (f"{key} (in {config_file})", value)
    for key in _PARSERS:
        env_key = ENV_PREFIX + key.upper()
        if env_key in env:
            raw[key] = (env_key, env[env_key])
    for key, value in overrides.items():
        if value is not None:
            raw[key] = (f"--{key.replace('_', '-')}", value)
    values = {key: _PARSERS[key](label, value) for key, (label, value) in raw.items()}
    return _check(Settings(**values))


def _check(settings: Settings) -> Settings:
    """Cross-field rules."""
    rf, isr = settings.replication_factor, settings.min_insync_replicas
    if rf is not None and isr is not None and isr > rf:
        raise ConfigError(
            f"ROLEBUS_MIN_INSYNC_REPLICAS: must be <= ROLEBUS_REPLICATION_FACTOR ({isr} > {rf})"
        )
    if settings.kafka_bootstrap is None:
        ports = {settings.kafka_port + i for i in range(settings.brokers)}
        ctl = {settings.kafka_controller_port + i for i in range(settings.brokers)}
        if ports & ctl or settings.pg_port in ports | ctl:
            raise ConfigError(
                "ROLEBUS_KAFKA_PORT / ROLEBUS_KAFKA_CONTROLLER_PORT / ROLEBUS_PG_PORT: "
                f"port ranges overlap (brokers {sorted(ports)}, controllers {sorted(ctl)}, "
                f"postgres {settings.pg_port})"
            )
    if settings.embeddings.startswith("openai:") and not settings.embeddings_model:
        raise ConfigError(
            "ROLEBUS_EMBEDDINGS_MODEL: required with ROLEBUS_EMBEDDINGS=openai:<url> "
            "(the model name the endpoint serves, e.g. nomic-embed-text)"
        )
    return settings
