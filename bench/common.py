"""Shared benchmark plumbing: a Kafka to measure against and progress output.

Without ROLEBUS_KAFKA_BOOTSTRAP a private local stack (real Kafka + Postgres via
rolebus's own launcher, free loopback ports, temp data folder) is started for
the run and stopped at the end, so a benchmark never touches your data.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

# Workloads and worker harnesses are test tools, not product code: they live in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rolebus.config import Settings, load_settings
from rolebus.stack import ports
from rolebus.stack.launcher import LocalStack

console = Console(stderr=True)
RESULTS = Path(__file__).parent / "results"


def say(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}", highlight=False)


@contextmanager
def bench_settings(partitions: int = 12) -> Iterator[Settings]:
    """Settings pointing at Kafka, with a fresh topic prefix for this run."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    if os.environ.get("ROLEBUS_KAFKA_BOOTSTRAP"):
        yield replace(load_settings(), topic_prefix=prefix, wal_partitions=partitions)
        return
    with tempfile.TemporaryDirectory(prefix="rolebus-bench-") as tmp:
        base = ports.free_port_block(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLEBUS_")}
        settings = load_settings(
            env=env, data_dir=Path(tmp), kafka_port=base, kafka_controller_port=base + 1,
            pg_port=base + 2, topic_prefix=prefix, wal_partitions=partitions,
        )  # fmt: skip
        stack = LocalStack(settings, say)
        say("starting a private local stack for this run")
        try:
            stack.up()
            yield settings
        finally:
            stack.down()


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
