"""The rolebus topics and their wanted configuration; ``ensure`` creates what is
missing and reports drift from the wanted config without changing it unless asked.

All four topics keep records forever: the WAL is the source of truth, and
changes, commits and rejections are the audit trail projections rebuild from.
Partition counts are never raised automatically: that would move role keys to
other partitions and break per-role ordering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from rolebus.config import Settings
from rolebus.endpoints import Endpoints, bootstrap_origin
from rolebus.errors import TransportError
from rolebus.wal.connect import admin_client, within

KINDS = ("wal", "changes", "commits", "rejections")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicReport:
    name: str
    action: str
    """'created', 'ok', 'drift' or 'fixed'."""
    drift: tuple[str, ...] = ()


def topic_name(settings: Settings, kind: str) -> str:
    return f"{settings.topic_prefix}.{kind}"


def replication(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) from settings or the cluster size."""
    rf = settings.replication_factor or min(3, brokers)
    isr = settings.min_insync_replicas or max(1, rf - 1)
    return rf, isr


def wanted(settings: Settings, brokers: int) -> list[TopicSpec]:
    rf, isr = replication(settings, brokers)
    configs = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "min.insync.replicas": str(isr),
        "unclean.leader.election.enable": "false",
        "message.timestamp.type": "CreateTime",
        "max.message.bytes": str(max_message_bytes(settings)),
    }
    # A commit record carries the committed state, whose message window dominates.
    sized = {"commits": {"max.message.bytes": str(max_state_bytes(settings))}}
    return [
        TopicSpec(
            topic_name(settings, kind), settings.wal_partitions, rf,
            {**configs, **sized.get(kind, {})},
        )
        for kind in KINDS
    ]  # fmt: skip


def max_message_bytes(settings: Settings) -> int:
    """Room for the largest allowed message content plus envelope and batch overhead."""
    return max(1_048_588, settings.max_content_bytes * 2 + 65_536)


def max_state_bytes(settings: Settings) -> int:
    """Upper bound of one encoded role state or commit (its message window dominates)."""
    return settings.message_window * settings.max_content_bytes * 2 + 1024 * 1024


def drift(spec: TopicSpec, partitions: int, rf: int, configs: dict[str, str]) -> list[str]:
    """Differences between the wanted spec and what the cluster has (pure)."""
    found = []
    if partitions != spec.partitions:
        found.append(f"partitions: wanted {spec.partitions}, has {partitions}")
    if rf != spec.replication_factor:
        found.append(f"replication factor: wanted {spec.replication_factor}, has {rf}")
    for key, value in sorted(spec.configs.items()):
        if configs.get(key) != value:
            found.append(f"{key}: wanted {value}, has {configs.get(key)}")
    return found


async def cluster_size(admin: AIOKafkaAdminClient) -> int:
    cluster = await admin.describe_cluster()
    return len(cluster["brokers"])


async def describe(admin: AIOKafkaAdminClient, name: str) -> tuple[int, int, dict[str, str]]:
    """(partitions, replication factor, configs) of an existing topic.

    A just-created topic takes a moment to reach every broker's metadata, and
    the broker asked may not know it yet: retry for a few seconds.
    """
    for _ in range(50):
        (meta,) = await admin.describe_topics([name])
        parts = meta["partitions"]
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        error_code, error_message, *_, entries = resp.resources[0]
        if parts and all(p["leader"] >= 0 for p in parts) and error_code == 0 and entries:
            rf = max(len(p["replicas"]) for p in parts)
            return len(parts), rf, {str(e[0]): str(e[1]) for e in entries}
        await asyncio.sleep(0.1)
    raise TransportError(
        f"topic {name}: metadata or configs unavailable (error {error_code}: {error_message})"
    )


async def ensure(settings: Settings, ends: Endpoints, *, fix: bool = False) -> list[TopicReport]:
    """Create missing topics; report (and with ``fix``, repair) config drift."""
    async with admin_client(settings, ends) as admin:
        try:
            return await _ensure(settings, ends, admin, fix)
        except KafkaError as exc:
            raise TransportError(f"{bootstrap_origin(ends)}: topics ensure failed: {exc}") from exc


async def _ensure(
    settings: Settings, ends: Endpoints, admin: AIOKafkaAdminClient, fix: bool
) -> list[TopicReport]:
    brokers = await within(settings, ends, cluster_size(admin), "describe cluster")
    specs = wanted(settings, brokers)
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if missing:
        new = [
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
            for s in missing
        ]
        response = await within(settings, ends, admin.create_topics(new), "create topics")
        created_elsewhere = check_created(response, brokers)
        missing = [s for s in missing if s.name not in created_elsewhere]
    return [await _report(admin, s, s in missing, fix) for s in specs]


def check_created(response: Any, brokers: int) -> set[str]:
    """Raise for per-topic errors of a CreateTopics response (aiokafka returns
    them instead of raising); return the topics that already existed (a
    concurrent ``ensure`` created them first)."""
    raced = set()
    for topic, code, *rest in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            raced.add(str(topic))
        elif code != 0:
            detail = rest[0] if rest and rest[0] else for_code(code).__name__
            raise TransportError(
                f"topic {topic}: not created ({detail}); check ROLEBUS_WAL_PARTITIONS, "
                f"ROLEBUS_REPLICATION_FACTOR and ROLEBUS_MIN_INSYNC_REPLICAS against the "
                f"cluster's {brokers} broker(s)",
                retriable=False,
            )
    return raced


async def _report(
    admin: AIOKafkaAdminClient, spec: TopicSpec, created: bool, fix: bool
) -> TopicReport:
    if created:
        return TopicReport(spec.name, "created")
    found = drift(spec, *await describe(admin, spec.name))
    if not found:
        return TopicReport(spec.name, "ok")
    config_only = all(d.split(":")[0] in spec.configs for d in found)
    if fix and config_only:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name, spec.configs)]
        )
        return TopicReport(spec.name, "fixed", tuple(found))
    return TopicReport(spec.name, "drift", tuple(found))
