"""Test and benchmark harness for the workers: spawn ``rolebus worker``
processes, read the output topics back, fold the WAL in process as the
reference, and compare runs.

``Outputs`` is what a group of workers wrote: output records with the app id
of the group (``rolebus-app`` header) and their offsets. ``summarize`` checks
the at-least-once contract while it reads: duplicates of a record must be
identical, an event gets one seq, a role's seqs are 1..n without gaps.
Nothing here is used by the workers themselves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from aiokafka import AIOKafkaConsumer

from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.streams.core.log import LogResult, WalItem, fold_log, items_by_partition
from rolebus.streams.core.state import FoldConfig, state_digest
from rolebus.wal import records, topics
from rolebus.wal.reader import assign_from_beginning, open_consumer
from rolebus.wal.records import ChangeRecord, CommitRecord, OutputRecord, RejectionRecord

# --- worker processes ----------------------------------------------------------------


def worker_env(settings: Settings, ends: Endpoints, app_id: str) -> dict[str, str]:
    """Environment for a ``rolebus worker`` subprocess on ``settings``' topics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLEBUS_")}
    env.update(
        ROLEBUS_KAFKA_BOOTSTRAP=ends.kafka_bootstrap,
        ROLEBUS_PG_DSN=ends.pg_dsn,
        ROLEBUS_DATA_DIR=str(settings.data_dir),
        ROLEBUS_TOPIC_PREFIX=settings.topic_prefix,
        ROLEBUS_WAL_PARTITIONS=str(settings.wal_partitions),
        ROLEBUS_COMMIT_EVERY=str(settings.commit_every),
        ROLEBUS_MESSAGE_WINDOW=str(settings.message_window),
        ROLEBUS_APP_ID=app_id,
    )
    return env


class CliProcess:
    """One ``rolebus <command>`` subprocess; its output goes to ``log_path``."""

    def __init__(
        self, command: str, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.command, self.env, self.log_path, self.args = command, env, log_path, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-c", "from rolebus.cli import main; main()", self.command]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*command, *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_for_log(self, needle: str, timeout_s: float, *, after: int = 0) -> float:
        """Seconds since start until ``needle`` appears in the log (past offset ``after``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log_text()[after:]:
                return time.monotonic() - self.started_at
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self} exited:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self}: no {needle!r} within {timeout_s}s")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        return self.end(signal.SIGTERM, timeout_s)[0]

    def kill(self) -> int | None:
        """kill -9: no shutdown, no checkpoint, no offset commit."""
        return self.end(signal.SIGKILL, 10.0)[0]

    def end(self, sig: signal.Signals, timeout_s: float = 20.0) -> tuple[int | None, float]:
        """Send ``sig`` and wait (SIGKILL after ``timeout_s``); (exit code, seconds)."""
        proc, start = self.proc, time.monotonic()
        if proc is None:
            return None, 0.0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode, time.monotonic() - start

    def __str__(self) -> str:
        return f"rolebus {self.command} ({self.log_path.name})"


class WorkerProcess(CliProcess):
    """One ``rolebus worker`` of the group ``app_id`` on ``settings``' topics."""

    def __init__(
        self, settings: Settings, endpoints: Endpoints, app_id: str, log_path: Path,
        args: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        super().__init__("worker", worker_env(settings, endpoints, app_id), log_path, args)
        self.settings, self.endpoints, self.app_id = settings, endpoints, app_id


class ProjectorProcess(CliProcess):
    """One ``rolebus project``; ``env`` as for a worker plus the store's schema."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        super().__init__("project", env, log_path, args)


# --- reading the outputs -------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    record: OutputRecord
    app_id: str
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class OutputReader:
    """Tails the three output topics from the beginning; ``poll`` reads what is new."""

    settings: Settings
    endpoints: Endpoints
    seen: list[Output] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def start(self) -> OutputReader:
        consumer = await self._stack.enter_async_context(
            open_consumer(self.settings, self.endpoints, "rolebus-harness")
        )
        names = [topics.topic_name(self.settings, k) for k in ("changes", "commits", "rejections")]
        # Topics nobody created yet are skipped: they have no outputs to read.
        await assign_from_beginning(consumer, names, missing_ok=True)
        self._consumer = consumer
        return self

    async def stop(self) -> None:
        self._consumer = None
        await self._stack.aclose()

    async def poll(self, idle_ms: int = 300) -> list[Output]:
        """Read until nothing new arrives for ``idle_ms``; return the new records."""
        assert self._consumer is not None
        new: list[Output] = []
        while True:
            batch = await self._consumer.getmany(timeout_ms=idle_ms, max_records=20_000)
            if not batch:
                break
            for recs in batch.values():
                new.extend(_output(rec) for rec in recs)
        self.seen.extend(new)
        return new


def _output(rec: Any) -> Output:
    headers = tuple(rec.headers or ())
    app = next((v.decode() for k, v in headers if k == records.APP_HEADER), "")
    return Output(records.decode(rec.value), app, rec.topic, rec.partition, rec.offset, headers)


# --- summaries and comparison --------------------------------------------------------


class ContractError(AssertionError):
    """The outputs break the at-least-once / exactly-once-effect contract."""


@dataclass(frozen=True)
class Summary:
    """The logical content of a set of output records (duplicates merged)."""

    changes: Mapping[str, ChangeRecord]
    """By event id."""
    commits: Mapping[str, CommitRecord]
    """By commit id."""
    rejections: Mapping[str, RejectionRecord]
    """By idempotency key."""
    duplicates: int

    def final(self) -> dict[str, tuple[int, str | None, str | None]]:
        """role -> (seq, head commit id, digest of the head commit)."""
        last: dict[str, ChangeRecord] = {}
        for change in self.changes.values():
            if change.role_id not in last or change.seq > last[change.role_id].seq:
                last[change.role_id] = change
        out = {}
        for role, change in last.items():
            head = self.commits.get(change.head_commit_id or "")
            out[role] = (
                change.seq,
                change.head_commit_id,
                None if head is None else head.state_digest,
            )
        return out

    def commit_ids(self) -> dict[str, list[str]]:
        by_role: dict[str, list[CommitRecord]] = {}
        for commit in self.commits.values():
            by_role.setdefault(commit.role_id, []).append(commit)
        return {
            r: [c.commit_id for c in sorted(cs, key=lambda c: c.seq)] for r, cs in by_role.items()
        }

    def terminal_keys(self) -> set[str]:
        """Event ids with a change, plus rejection keys: one per WAL record but duplicates."""
        return set(self.changes) | set(self.rejections)


def _merge(into: dict[str, Any], key: str, rec: Any, what: str) -> int:
    old = into.setdefault(key, rec)
    if old is rec:
        return 0
    if old != rec:
        raise ContractError(f"{what} {key}: two different records\n  {old}\n  {rec}")
    return 1


def summarize(outputs: Iterable[OutputRecord]) -> Summary:
    """Merge duplicates (which must be identical) and check seqs (ContractError)."""
    changes: dict[str, ChangeRecord] = {}
    commits: dict[str, CommitRecord] = {}
    rejections: dict[str, RejectionRecord] = {}
    dups = 0
    for rec in outputs:
        if isinstance(rec, ChangeRecord):
            dups += _merge(changes, rec.event_id, rec, "change of event")
        elif isinstance(rec, CommitRecord):
            dups += _merge(commits, rec.commit_id, rec, "commit")
        else:
            dups += _merge(rejections, rec.idempotency_key, rec, "rejection")
    _check_seqs(changes.values())
    return Summary(changes, commits, rejections, dups)


def _check_seqs(changes: Iterable[ChangeRecord]) -> None:
    seqs: dict[str, list[int]] = {}
    for change in changes:
        seqs.setdefault(change.role_id, []).append(change.seq)
    for role, got in seqs.items():
        if sorted(got) != list(range(1, len(got) + 1)):
            raise ContractError(f"role {role}: seqs are not 1..n once each: {sorted(got)}")


def reference_summary(result: LogResult) -> Summary:
    return summarize(result.records)


def check_reference_states(summary: Summary, result: LogResult) -> None:
    """Every role's final (seq, head, digest) from the outputs equals the reference fold."""
    final = summary.final()
    for role, state in result.states.items():
        head = result.commits.get(state.head_commit_id) if state.head_commit_id else None
        digest = head.state_digest if head is not None else None
        if state.seq and final.get(role) != (state.seq, state.head_commit_id, digest):
            raise ContractError(f"role {role}: outputs say {final.get(role)}, reference "
                                f"({state.seq}, {state.head_commit_id}, {digest})")  # fmt: skip
        if head is not None and head.seq == state.seq and state_digest(state) != digest:
            raise ContractError(f"role {role}: head commit digest is not the state digest")


# --- the WAL and the reference fold --------------------------------------------------


async def read_wal(settings: Settings, ends: Endpoints) -> list[WalItem]:
    """Every record of the WAL, to the end offsets seen at start."""
    from rolebus.wal.reader import tail

    name = topics.topic_name(settings, "wal")
    items = []
    async for rec in tail(settings, ends, name, from_beginning=True, follow=False):
        items.append(WalItem(rec.position, rec.key, rec.value))
    return items


async def reference(settings: Settings, ends: Endpoints) -> LogResult:
    """The pure fold of the whole WAL with the workers' semantics."""
    items = await read_wal(settings, ends)
    return fold_log(items_by_partition(items), FoldConfig.from_settings(settings))


async def wait_for_keys(
    reader: OutputReader, keys: set[str], timeout_s: float, *, app_id: str | None = None
) -> float:
    """Poll until every key (event id / rejection key) has an output; seconds waited."""
    start = time.monotonic()
    found: set[str] = set()
    for out in reader.seen:
        _collect(out, found, app_id)
    while not keys <= found:
        if time.monotonic() - start > timeout_s:
            missing = sorted(keys - found)
            raise TimeoutError(f"{len(missing)} WAL records without output, e.g. {missing[:5]}")
        for out in await reader.poll():
            _collect(out, found, app_id)
    return time.monotonic() - start


def _collect(out: Output, found: set[str], app_id: str | None) -> None:
    if app_id is not None and out.app_id != app_id:
        return
    rec = out.record
    if isinstance(rec, ChangeRecord | RejectionRecord):
        found.add(rec.idempotency_key)
