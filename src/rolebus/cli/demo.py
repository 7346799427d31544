"""``rolebus demo``: the quick start's main job on the embedded local stack.

Brings the stack up (idempotent), ensures the topics, writes a short support-
agent story through the producer SDK (including refused input, which never
reaches the log) and reads the WAL back decoded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rolebus import endpoints
from rolebus.cli.common import progress, state
from rolebus.config import Settings
from rolebus.errors import ValidationError
from rolebus.stack.launcher import LocalStack
from rolebus.wal import reader, topics
from rolebus.wal.client import RoleClient, Sent

TENANT = "demo"


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


async def _run(settings: Settings) -> list[reader.WalRecord]:
    ends = endpoints.resolve(settings)
    for report in await topics.ensure(settings, ends):
        progress(f"topic {report.name}: {report.action}")
    async with RoleClient(settings, TENANT, producer="rolebus-demo") as client:
        sent = await _story(client)
    progress(f"wrote {len(sent)} events for role {sent[0].role_id}")
    wal = topics.topic_name(settings, "wal")
    records = reader.tail(
        settings, ends, wal, from_beginning=True, follow=False, role_id=sent[0].role_id
    )
    return [rec async for rec in records]


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
        records = asyncio.run(_run(settings))
    finally:
        if stop:
            progress("stopped: " + ", ".join(stack.down()))
    table = Table(
        "partition:offset", "event", "details", title="The role's events, read back from the WAL"
    )
    for rec in records:
        env = rec.envelope
        detail = "" if env is None else _brief(reader.envelope_json(env)["payload"])
        table.add_row(
            f"{rec.position.partition}:{rec.position.offset}",
            env.event_type if env else "?",
            escape(detail),  # user text is not rich markup
        )
    Console().print(table)
    progress(f"demo done in {time.monotonic() - started:.1f}s")
    if not stop:
        progress(
            "the stack keeps running: try `rolebus wal tail`; stop it with `rolebus stack down`"
        )
