"""Shared fixtures. Integration tests get a real local stack (Kafka + Postgres)
started through rolebus's own launcher on free loopback ports, one per session,
stopped at the end. Each test gets its own topic prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from rolebus.config import Settings, load_settings
from rolebus.stack import ports
from rolebus.stack.launcher import LocalStack


def make_stack_settings(data_dir: Path, brokers: int = 1, **extra: object) -> Settings:
    """Settings for a private local stack: own data folder and free ports."""
    base = ports.free_port_block(2 * brokers + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLEBUS_")}
    return load_settings(
        env=env,
        config_file=None,
        data_dir=data_dir,
        brokers=brokers,
        kafka_port=base,
        kafka_controller_port=base + brokers,
        pg_port=base + 2 * brokers,
        kafka_heap="384m",
        **extra,
    )


def _run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """``rolebus ARGS`` in a child process with ``env`` added to ours; never raises
    on a failing exit code (tests check it)."""
    return subprocess.run(
        [sys.executable, "-c", "from rolebus.cli import main; main()", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
        timeout=timeout,
    )


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The CLI runner (a fixture: tests run with --import-mode=importlib and
    cannot import conftest)."""
    return _run_cli


@pytest.fixture
def stack_settings() -> Callable[..., Settings]:
    """Factory of settings for a private extra stack (own folder, free ports)."""
    return make_stack_settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One real local stack for the whole test session."""
    settings = make_stack_settings(tmp_path_factory.mktemp("stack") / "data")
    launcher = LocalStack(settings)
    try:
        launcher.up()
        yield settings
    finally:
        launcher.down()


@pytest.fixture
def settings(stack: Settings) -> Settings:
    """The session stack's settings with a topic prefix of this test's own."""
    return replace(stack, topic_prefix=f"t{uuid.uuid4().hex[:10]}", wal_partitions=4)
