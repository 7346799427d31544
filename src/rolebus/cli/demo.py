"""``rolebus demo``: the quick start's main job on the embedded local stack.

Brings the stack up (idempotent), ensures the topics, writes a short support-
agent story through the producer SDK (including refused input, which never
reaches the log) and reads the WAL back decoded. A stream worker, run in this
process, folds it; the demo rolls the role back past a hallucinated answer
and prints the commit history; a projector then fills the PostgreSQL context
store and the demo prints the chat context an LLM would get: the
hallucinated answer is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rolebus import endpoints
from rolebus.cli.common import progress, state
from rolebus.config import Settings
from rolebus.endpoints import Endpoints
from rolebus.errors import StackError, ValidationError
from rolebus.projectors.context import ChatMessage
from rolebus.stack.launcher import LocalStack
from rolebus.streams.runtime.options import WorkerOptions
from rolebus.streams.runtime.process import open_worker, prepare
from rolebus.wal import reader, topics
from rolebus.wal.canonical import plain
from rolebus.wal.client import RoleClient, Sent
from rolebus.wal.records import ChangeRecord, CommitRecord, OutputRecord
from rolebus.wal.records import decode as decode_output

TENANT = "demo"
FOLD_TIMEOUT_S = 120.0


async def _story(client: RoleClient) -> list[Sent]:
    """A support persona's first conversation; returns what landed in the WAL."""
    created = await client.create_role(
        "Nova", "Friendly support agent for a bike shop.", traits={"tone": "warm", "lang": "en"},
        model="llama3:8b", skills=["order_lookup"],
    )  # fmt: skip
    role = created.role_id
    sent = [created, await client.activate(role)]
    sent.append(await client.append_message(role, "user", "Where is my order #1042?", tokens_in=9))
    sent.append(await client.append_message(
        role, "assistant", "It shipped yesterday and arrives Friday.", tokens_out=11,
        latency_ms=412, model="llama3:8b",
    ))  # fmt: skip
    sent.append(await client.request_commit(role, "answered"))
    sent.append(await client.append_message(
        role, "assistant", "Your bike is also made of cheese.", latency_ms=380,
        flags=["hallucination"],
    ))  # fmt: skip
    sent.append(await client.request_commit(role, "first-conversation"))
    try:
        await client.append_message(role, "narrator", "not a valid author")
    except ValidationError as exc:
        progress(f"refused before sending, as it should be: {exc}")
    return sent


@dataclass(frozen=True)
class Story:
    events: list[reader.WalRecord]
    commits: list[CommitRecord]
    context: list[ChatMessage]


async def _run(settings: Settings) -> Story:
    ends = endpoints.resolve(settings)
    options = await prepare(settings, ends, WorkerOptions())
    async with RoleClient(settings, TENANT, producer="rolebus-demo", endpoints=ends) as client:
        sent = await _story(client)
        role = sent[0].role_id
        progress(f"wrote {len(sent)} events for role {role}")
        wal = topics.topic_name(settings, "wal")
        records = reader.tail(settings, ends, wal, from_beginning=True, follow=False, role_id=role)
        events = [rec async for rec in records]
        log_path = Path(settings.data_dir) / "demo-worker.log"
        progress(f"starting a stream worker (group {settings.app_id}; log {log_path})")
        with _worker_log(log_path):
            async with open_worker(settings, ends, options) as worker:
                stop = asyncio.Event()
                running = asyncio.create_task(worker.run(stop))
                try:
                    commits = await _fold_and_roll_back(settings, ends, client, role, len(sent))
                finally:
                    stop.set()
                    await running
        context = await _project(settings, ends, role, commits[-1].seq)
    return Story(events, commits, context)


async def _project(settings: Settings, ends: Endpoints, role: str, seq: int) -> list[ChatMessage]:
    """Run a projector until the role's rollback is in PostgreSQL; the LLM context then."""
    from rolebus.projectors import db, queries
    from rolebus.projectors.embeddings import load_provider
    from rolebus.projectors.projector import ProjectorOptions, default_group, run_projector

    progress("projecting into PostgreSQL (context store) and assembling the LLM context")
    provider = load_provider(settings)
    options = ProjectorOptions(
        default_group(settings), settings.pg_schema, settings.projector_batch
    )
    stop = asyncio.Event()
    projecting = asyncio.create_task(run_projector(settings, ends, options, provider, stop))
    try:
        async with db.connect(settings, ends, autocommit=True) as conn:
            deadline = time.monotonic() + FOLD_TIMEOUT_S
            while not await _projected(conn, role, seq):
                if projecting.done() or time.monotonic() > deadline:
                    projecting.result()  # its error, if it failed
                    raise StackError(f"the projector did not store role {role} in time")
                await asyncio.sleep(0.1)
            found = await queries.context(conn, provider, TENANT, role, "where is my order?")
    finally:
        stop.set()
        await projecting
        await provider.aclose()
    return found.messages


async def _projected(conn: Any, role: str, seq: int) -> bool:
    from rolebus.projectors import queries
    from rolebus.projectors.views import UnknownRoleError

    try:
        return (await queries.role_show(conn, TENANT, role)).seq >= seq
    except (UnknownRoleError, psycopg.errors.UndefinedTable):  # not there yet
        return False


@contextmanager
def _worker_log(path: Path) -> Iterator[None]:
    """The in-process worker's progress lines go to a file, not over the demo's output."""
    path.parent.mkdir(parents=True, exist_ok=True)  # no local stack: no data folder yet
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("rolebus.streams")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()


async def _fold_and_roll_back(
    settings: Settings, ends: Endpoints, client: RoleClient, role: str, sent: int
) -> list[CommitRecord]:
    """Wait for the fold, roll back before the hallucinated answer, wait again; the commits."""
    names = [topics.topic_name(settings, kind) for kind in ("changes", "commits")]
    async with reader.open_consumer(settings, ends, "rolebus-demo") as consumer:
        await reader.assign_from_beginning(consumer, names, wait_s=5.0)
        seen: list[OutputRecord] = []
        commits = await _folded(consumer, seen, role, sent)
        before = next(c for c in commits if c.label == "answered")  # before the hallucination
        target = f"{before.commit_id[:12]} (seq {before.seq})"
        progress(f"rolling back to {target}, before the hallucinated answer")
        await client.rollback(role, before.commit_id, reason="hallucinated answer")
        return await _folded(consumer, seen, role, sent + 1)


async def _folded(
    consumer: AIOKafkaConsumer, seen: list[OutputRecord], role: str, events: int
) -> list[CommitRecord]:
    """Read outputs until the worker accepted ``events`` events of ``role``; its commits."""
    deadline = time.monotonic() + FOLD_TIMEOUT_S
    while True:
        for recs in (await consumer.getmany(timeout_ms=200)).values():
            seen.extend(decode_output(rec.value or b"") for rec in recs)
        mine = [r for r in seen if r.role_id == role]
        changes = {r.event_id: r for r in mine if isinstance(r, ChangeRecord)}
        commits = {r.commit_id: r for r in mine if isinstance(r, CommitRecord)}
        named = {cid for change in changes.values() for cid in change.commit_ids}
        if len(changes) >= events and named <= commits.keys():  # two topics: wait for both
            head = max(changes.values(), key=lambda c: c.seq)
            progress(f"folded: seq {head.seq}, head commit {(head.head_commit_id or '')[:12]}")
            return sorted(commits.values(), key=lambda c: c.seq)
        if time.monotonic() > deadline:
            raise StackError(
                f"the stream worker folded {len(changes)} of {events} events of role {role} "
                f"in {FOLD_TIMEOUT_S:.0f}s (see its log in the data folder, demo-worker.log)"
            )


def _brief(payload: dict[str, object]) -> str:
    if "content" in payload:
        flags = f"  (flagged: {', '.join(map(str, payload['flags']))})" if payload["flags"] else ""  # type: ignore[call-overload]
        return f"{payload['author']}: {payload['content']}{flags}"
    return ", ".join(f"{k}={v}" for k, v in payload.items() if v not in (None, [], {}))


def demo(
    ctx: typer.Context,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the local stack at the end")] = False,
) -> None:
    """Start the local stack and run a produce/consume round trip of a role's story."""
    settings = state(ctx).settings()
    started = time.monotonic()
    stack = LocalStack(settings, progress)
    stack.up()
    try:
        story = asyncio.run(_run(settings))
    finally:
        if stop:
            progress("stopped: " + ", ".join(stack.down()))
    records, commits = story.events, story.commits
    table = Table(
        "partition:offset", "event", "details", title="The role's events, read back from the WAL"
    )
    for rec in records:
        env = rec.envelope
        detail = "" if env is None else _brief(plain(env.payload))
        table.add_row(
            f"{rec.position.partition}:{rec.position.offset}",
            env.event_type if env else "?",
            escape(detail),  # user text is not rich markup
        )
    Console().print(table)
    history = Table("seq", "commit", "kind", "label", "parent", title="The role's commits")
    for c in commits:
        parent = (c.parent_id or "")[:12]
        history.add_row(str(c.seq), c.commit_id[:12], c.kind, escape(c.label or ""), parent)
    Console().print(history)
    chat = Table("role", "content", title="The context an LLM gets now (rolebus context)")
    for message in story.context:
        chat.add_row(message["role"], escape(message["content"]))
    Console().print(chat)
    progress(f"demo done in {time.monotonic() - started:.1f}s")
    if not stop:
        progress(
            "the stack keeps running: try `rolebus wal tail`; stop it with `rolebus stack down`"
        )
