from pathlib import Path

import pytest

from rolebus.config import Settings, load_settings
from rolebus.errors import ConfigError


def test_defaults() -> None:
    s = load_settings(env={}, config_file=None)
    assert s == Settings()
    assert s.kafka_bootstrap is None and s.wal_partitions == 12 and s.commit_every == 50


def test_env_values_are_parsed() -> None:
    s = load_settings(
        env={"ROLEBUS_KAFKA_PORT": "19092", "ROLEBUS_KAFKA_BOOTSTRAP": "a:1, b:2"},
        config_file=None,
    )
    assert s.kafka_port == 19092
    assert s.kafka_bootstrap == "a:1,b:2"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ROLEBUS_KAFKA_PORT": "70000"}, "ROLEBUS_KAFKA_PORT: must be a TCP port"),
        ({"ROLEBUS_PG_PORT": "abc"}, "ROLEBUS_PG_PORT: must be an integer"),
        (
            {"ROLEBUS_KAFKA_BOOTSTRAP": "nohostport"},
            "ROLEBUS_KAFKA_BOOTSTRAP: 'nohostport' is not host:port",
        ),
        ({"ROLEBUS_PG_DSN": "mysql://x"}, "ROLEBUS_PG_DSN: must be a PostgreSQL URI"),
        ({"ROLEBUS_WAL_PARTITIONS": "0"}, "ROLEBUS_WAL_PARTITIONS: must be >= 1"),
        ({"ROLEBUS_KAFKA_HEAP": "lots"}, "ROLEBUS_KAFKA_HEAP: must be a JVM size"),
        ({"ROLEBUS_TOPIC_PREFIX": "bad prefix"}, "ROLEBUS_TOPIC_PREFIX"),
        (
            {"ROLEBUS_REPLICATION_FACTOR": "1", "ROLEBUS_MIN_INSYNC_REPLICAS": "2"},
            "ROLEBUS_MIN_INSYNC_REPLICAS: must be <= ROLEBUS_REPLICATION_FACTOR",
        ),
        ({"ROLEBUS_KAFKA_CONTROLLER_PORT": "9092"}, "port ranges overlap"),
        (
            {"ROLEBUS_CONNECT_TIMEOUT_S": "nan"},
            "ROLEBUS_CONNECT_TIMEOUT_S: must be a finite number",
        ),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env, config_file=None)
    assert needle in str(err.value)


def test_config_file_and_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "rolebus.toml"
    cfg.write_text("[rolebus]\nkafka_port = 19000\nwal_partitions = 6\n")
    s = load_settings(env={"ROLEBUS_WAL_PARTITIONS": "3"}, config_file=cfg)
    assert s.kafka_port == 19000 and s.wal_partitions == 3


def test_config_file_errors_name_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "rolebus.toml"
    cfg.write_text("[rolebus]\nkafka_prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*kafka_prot"):
        load_settings(env={}, config_file=cfg)
    cfg.write_text("[rolebus]\npg_port = 'x'\n")
    with pytest.raises(ConfigError, match=r"pg_port \(in .*rolebus.toml\): must be an integer"):
        load_settings(env={}, config_file=cfg)


def test_missing_config_file_named() -> None:
    with pytest.raises(ConfigError, match="ROLEBUS_CONFIG: no such file"):
        load_settings(env={"ROLEBUS_CONFIG": "/nonexistent/rolebus.toml"})


def test_cli_overrides_win() -> None:
    s = load_settings(env={"ROLEBUS_BROKERS": "1"}, config_file=None, brokers=3)
    assert s.brokers == 3
