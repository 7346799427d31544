"""``rolebus demo`` on the real stack: it folds, rolls back, projects and prints
the LLM context without the hallucinated answer; then ``replay fold --verify``
proves the log reproduces everything the demo's worker wrote."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from rolebus.config import Settings
from rolebus.endpoints import resolve

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def test_demo_then_replay_verify(
    settings: Settings, run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    ends = resolve(settings)
    env = {
        "ROLEBUS_KAFKA_BOOTSTRAP": ends.kafka_bootstrap,  # the session stack, as external
        "ROLEBUS_PG_DSN": ends.pg_dsn,
        "ROLEBUS_TOPIC_PREFIX": settings.topic_prefix,
        "ROLEBUS_WAL_PARTITIONS": str(settings.wal_partitions),
        "ROLEBUS_APP_ID": f"demo-{uuid.uuid4().hex[:8]}",
        "ROLEBUS_PG_SCHEMA": f"demo_{uuid.uuid4().hex[:8]}",
        "ROLEBUS_DATA_DIR": str(tmp_path / "data"),  # not created: nothing local is started
        "COLUMNS": "200",
    }
    demo = run_cli("demo", env=env, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "It shipped yesterday and arrives Friday." in demo.stdout
    context = demo.stdout.split("The context an LLM gets now")[1]
    assert "made of cheese" not in context  # superseded by the rollback
    assert "rollback" in demo.stdout
    proof = run_cli("replay", "fold", "--verify", "--json", env=env, timeout=300)
    assert proof.returncode == 0, proof.stdout[-2000:] + proof.stderr[-2000:]
    assert json.loads(proof.stdout)
