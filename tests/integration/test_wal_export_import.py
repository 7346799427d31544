"""``rolebus wal export`` / ``wal import`` on the real stack: a WAL copied
through Avro container files into topics with another partition count folds
to the same commit ids and states, keeps every byte (garbage included), every
role's order and the headers; filters keep what they say; a second import is
refused unless forced."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import pytest
from aiokafka import AIOKafkaProducer

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, resolve
from rolebus.streams.core.log import LogResult, WalItem, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig, state_digest
from rolebus.wal import archive, reader, topics
from rolebus.wal.archive import Filters
from rolebus.wal.client import RoleClient
from rolebus.wal.events import Envelope
from rolebus.wal.export import export_wal
from rolebus.wal.reader import WalRecord
from rolebus.wal.records import RejectionRecord
from testkit.workload import Workload, WorkloadSpec

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GARBAGE = (b"\x00 definitely not avro", b"\xc3\x01" + bytes(8) + b"unknown fingerprint")
Cli = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Rig:
    settings: Settings
    ends: Endpoints

    def env(self, settings: Settings) -> dict[str, str]:
        """The CLI's environment for ``settings``' topics (nothing local started)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLEBUS_")}
        return {
            **env, "ROLEBUS_KAFKA_BOOTSTRAP": self.ends.kafka_bootstrap,
            "ROLEBUS_PG_DSN": self.ends.pg_dsn, "ROLEBUS_TOPIC_PREFIX": settings.topic_prefix,
            "ROLEBUS_DATA_DIR": str(settings.data_dir),
        }  # fmt: skip

    async def target(self, partitions: int) -> Settings:
        """Empty WAL topics with another prefix and partition count."""
        other = replace(self.settings, topic_prefix=f"{self.settings.topic_prefix}-in")
        other = replace(other, wal_partitions=partitions)
        await topics.ensure(other, self.ends)
        return other

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        async with RoleClient(self.settings, "tenant-w", endpoints=self.ends) as client:
            for i in range(0, len(envelopes), 500):
                await client.send_many(envelopes[i : i + 500])

    async def send_raw(self, values: Sequence[bytes]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.ends.kafka_bootstrap)
        await producer.start()
        try:
            wal = topics.topic_name(self.settings, "wal")
            for i, value in enumerate(values):
                key = None if i % 2 else b"w-00001"
                await producer.send_and_wait(
                    wal, value, key=key, headers=[("x-raw", b"1"), ("x-none", None)]
                )
        finally:
            await producer.stop()

    async def records(self, settings: Settings) -> list[WalRecord]:
        name = topics.topic_name(settings, "wal")
        return [
            rec
            async for rec in reader.tail(
                settings, self.ends, name, from_beginning=True, follow=False
            )
        ]

    def fold(self, records: Sequence[WalRecord]) -> LogResult:
        items = [WalItem(r.position, r.key, r.value) for r in records]
        return fold_log(items_by_partition(items), FoldConfig.from_settings(self.settings))


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    ends = resolve(settings)  # before data_dir moves: the stack's ports live there
    mine = replace(settings, commit_every=5, message_window=4, data_dir=tmp_path / "data")
    await topics.ensure(mine, ends)
    yield Rig(mine, ends)


def workloads(rig: Rig) -> list[Envelope]:
    config = FoldConfig.from_settings(rig.settings)
    envelopes: list[Envelope] = []
    for tenant, prefix, seed in (("tenant-w", "w", 31), ("tenant-b", "b", 32)):
        load = Workload(WorkloadSpec(roles=10, seed=seed, tenant_id=tenant, prefix=prefix), config)
        envelopes += load.take(400) + load.commit_all()
    return envelopes


def summary(result: LogResult) -> tuple[dict[str, object], dict[str, str], dict[str, int]]:
    """Commit ids with their role and seq, each role's state digest, rejections by reason."""
    commits = {cid: (c.role_id, c.seq, c.parent_id) for cid, c in result.commits.items()}
    digests = {role: state_digest(state) for role, state in result.states.items()}
    reasons: dict[str, int] = {}
    for rec in result.records:
        if isinstance(rec, RejectionRecord):
            reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    return commits, digests, reasons


def first_differences(want: Mapping[str, object], have: Mapping[str, object]) -> list[object]:
    keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    return [(k, want.get(k), have.get(k)) for k in keys[:3]]


def per_role(records: Sequence[WalRecord], *, imported: bool = False) -> dict[bytes | None, Any]:
    """Each key's values and headers in offset order (a role lives in one
    partition), without the header an import adds."""
    out: dict[bytes | None, list[object]] = {}
    for rec in sorted(records, key=lambda r: (r.position.partition, r.position.offset)):
        headers = rec.headers[:-1] if imported else rec.headers
        out.setdefault(rec.key, []).append((rec.value, headers))
    return out


async def test_round_trip_across_partition_counts(rig: Rig, tmp_path: Path, run_cli: Cli) -> None:
    await rig.send(workloads(rig))
    await rig.send_raw(GARBAGE)
    source = await rig.records(rig.settings)
    out = tmp_path / "export"

    exported = run_cli("wal", "export", "--to", str(out), "--json", env=rig.env(rig.settings))
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads(exported.stdout)
    assert manifest["records"] == len(source) and manifest["undecodable"] == len(GARBAGE)
    assert manifest["source_partitions"] == 4 and len(manifest["partitions"]) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(archive.file_name(p) for p in range(4)), archive.MANIFEST]
    )

    target = await rig.target(partitions=3)
    imported = run_cli("wal", "import", str(out), "--json", env=rig.env(target))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["target_partitions"] == 3
    copied = await rig.records(target)

    # Same bytes, same per-role order, headers kept plus the import marker.
    assert {r.position.partition for r in copied} == {0, 1, 2}
    assert per_role(copied, imported=True) == per_role(source)
    for rec in copied:
        assert rec.headers[-1][0] == archive.IMPORT_HEADER
        assert rec.headers[-1][1].startswith(manifest["export_id"].encode())
    raw = [r.headers[:2] for r in copied if dict(r.headers).get("x-raw") == b"1"]
    assert raw == [(("x-raw", b"1"), ("x-none", None))] * len(GARBAGE)
    assert {r.value for r in copied if r.envelope is None} == set(GARBAGE)

    # The determinism proof: the same commit ids and states from either WAL.
    expected, got = summary(rig.fold(source)), summary(rig.fold(copied))
    assert len(expected[0]) > 100 and len(expected[1]) >= 20
    for name, want, have in zip(("commits", "digests", "rejections"), expected, got, strict=True):
        assert want == have, f"{name} differ, first: {first_differences(want, have)}"
    assert expected[2]["undecodable"] == len(GARBAGE)

    again = run_cli("wal", "import", str(out), env=rig.env(target))
    assert again.returncode != 0
    assert f"already holds {len(source)} records" in again.stderr and "--force" in again.stderr
    forced = run_cli("wal", "import", str(out), "--force", "--json", env=rig.env(target))
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["forced"] is True
    assert len(await rig.records(target)) == 2 * len(source)


async def test_export_filters_and_any_avro_reader(rig: Rig, tmp_path: Path, run_cli: Cli) -> None:
    envelopes = workloads(rig)
    await rig.send(envelopes)
    await rig.send_raw(GARBAGE)
    source = [r for r in await rig.records(rig.settings) if r.envelope is not None]
    times = sorted(r.envelope.occurred_at for r in source if r.envelope)
    since, until = times[len(times) // 4], times[len(times) // 2] + timedelta(microseconds=1)

    filters = Filters(since=since, until=until, tenant="tenant-b")
    manifest = await export_wal(rig.settings, rig.ends, tmp_path / "b", filters)
    wanted = {
        r.envelope.event_id for r in source
        if r.envelope and r.envelope.tenant_id == "tenant-b"
        and since <= r.envelope.occurred_at < until
    }  # fmt: skip
    assert 0 < len(wanted) == manifest.records and manifest.undecodable == 0
    assert manifest.filters["tenant"] == "tenant-b"

    found = set()
    for part in manifest.partitions:  # Apache avro, not fastavro: any Avro tool reads it
        with (tmp_path / "b" / part.file).open("rb") as fo:
            for row in avro.datafile.DataFileReader(fo, avro.io.DatumReader()):
                assert row["partition"] == part.partition and row["original"] is None
                found.add(uuid.UUID(str(row["event"]["event_id"])))
    assert found == wanted
    assert (
        manifest.time_range["first"]
        == min(
            r.envelope.occurred_at for r in source if r.envelope and r.envelope.event_id in wanted
        ).isoformat()
    )

    # The command line gives the same export (a time without a zone is UTC).
    naive = since.replace(tzinfo=None).isoformat()
    args = ["--tenant", "tenant-b", "--from", naive, "--until", until.isoformat(), "--json"]
    cli = run_cli("wal", "export", "--to", str(tmp_path / "c"), *args, env=rig.env(rig.settings))
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["content_sha256"] == manifest.content_sha256
    bad = run_cli("wal", "export", "--to", str(tmp_path / "d"), "--from", "yesterday",
                  env=rig.env(rig.settings))  # fmt: skip
    assert bad.returncode == 2 and "--from: 'yesterday' is not an ISO-8601 time" in bad.stderr
