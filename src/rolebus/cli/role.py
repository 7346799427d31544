"""``rolebus role ...``, ``rolebus say``, ``commit``, ``rollback``, ``fork``:
write events to the WAL through the producer SDK. Input is validated before
anything is sent; a refusal names the field and the rule and exits non-zero."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from rolebus import __version__
from rolebus.cli.common import print_json, state
from rolebus.errors import ValidationError
from rolebus.wal.client import RoleClient, Sent
from rolebus.wal.events import ToolCall

app = typer.Typer(help="Create roles and move them through their lifecycle.", no_args_is_help=True)

Tenant = Annotated[str, typer.Option("--tenant", "-t", envvar="ROLEBUS_TENANT", help="Tenant id")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why (kept in the log)")]
ExpectedSeq = Annotated[
    int | None, typer.Option("--expected-seq", help="Refuse unless the role's seq is this")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _send(ctx: typer.Context, tenant: str, call: Callable[[RoleClient], Awaitable[Sent]]) -> Sent:
    settings = state(ctx).settings()

    async def run() -> Sent:
        # Not started up front: the event is validated before any connection.
        client = RoleClient(settings, tenant, producer=f"rolebus-cli/{__version__}")
        try:
            return await call(client)
        finally:
            await client.stop()

    return asyncio.run(run())


def _report(sent: Sent, as_json: bool, *, id_only: bool = False) -> None:
    """JSON, or a line for humans: the role id alone (``id_only``) or where it landed."""
    if as_json:
        print_json(sent._asdict())
    elif id_only:
        print(sent.role_id)
    else:
        print(
            f"{sent.role_id} event {sent.event_id} -> {sent.topic}[{sent.partition}]@{sent.offset}"
        )


def _pairs(option: str, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(option, "must be KEY=VALUE", item)
        out[key] = value
    return out


@app.command()
def create(
    ctx: typer.Context,
    name: str,
    tenant: Tenant,
    persona: Annotated[str, typer.Option(help="Persona / system prompt text")],
    trait: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable")] = None,
    model: Annotated[str | None, typer.Option(help="Model the role speaks through")] = None,
    skill: Annotated[list[str] | None, typer.Option(help="Skill / tool name, repeatable")] = None,
    role_id: Annotated[
        str | None, typer.Option(help="Choose the role id (default: generated)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a role; prints its id."""
    traits = _pairs("--trait", trait or [])
    sent = _send(ctx, tenant, lambda c: c.create_role(
        name, persona, traits=traits, model=model, skills=skill or [], role_id=role_id
    ))  # fmt: skip
    _report(sent, as_json, id_only=True)


def _lifecycle(verb: str, doc: str) -> None:
    def command(
        ctx: typer.Context, role: str, tenant: Tenant, reason: Reason = None,
        expected_seq: ExpectedSeq = None, as_json: Json = False,
    ) -> None:  # fmt: skip
        sent = _send(ctx, tenant, lambda c: getattr(c, verb)(
            role, reason=reason, expected_seq=expected_seq
        ))  # fmt: skip
        _report(sent, as_json)

    command.__doc__ = doc
    app.command(name=verb)(command)


for _verb, _doc in [
    ("activate", "created|suspended -> active."),
    ("suspend", "active -> suspended."),
    ("resume", "suspended -> active."),
    ("archive", "created|active|suspended -> archived."),
    ("delete", "Any state but deleted -> deleted (terminal)."),
]:
    _lifecycle(_verb, _doc)


def say(
    ctx: typer.Context,
    role: str,
    text: str,
    tenant: Tenant,
    author: Annotated[str, typer.Option(help="user|assistant|system|tool")] = "user",
    latency_ms: Annotated[int | None, typer.Option(help="Model latency (assistant)")] = None,
    tokens_in: Annotated[int, typer.Option()] = 0,
    tokens_out: Annotated[int, typer.Option()] = 0,
    model: Annotated[str | None, typer.Option()] = None,
    flag: Annotated[
        list[str] | None, typer.Option(help="hallucination|refusal|error|tool_error|safety")
    ] = None,
    tool: Annotated[str | None, typer.Option(help="Tool call name")] = None,
    tool_args: Annotated[str, typer.Option(help="Tool call arguments (JSON)")] = "{}",
    tool_result: Annotated[str | None, typer.Option(help="Tool call result")] = None,
    message_id: Annotated[str | None, typer.Option(help="Default: generated")] = None,
    expected_seq: ExpectedSeq = None,
    as_json: Json = False,
) -> None:
    """Append a message to an active role's conversation (TEXT '-' reads stdin)."""
    if text == "-":
        text = sys.stdin.read()
    call = ToolCall(tool, tool_args, tool_result) if tool else None
    sent = _send(ctx, tenant, lambda c: c.append_message(
        role, author, text, message_id=message_id, tokens_in=tokens_in, tokens_out=tokens_out,
        latency_ms=latency_ms, model=model, flags=flag or [], tool_call=call,
        expected_seq=expected_seq,
    ))  # fmt: skip
    _report(sent, as_json)


def commit(
    ctx: typer.Context, role: str, tenant: Tenant,
    message: Annotated[str, typer.Option("-m", "--message", help="Commit label (a tag)")],
    as_json: Json = False,
) -> None:  # fmt: skip
    """Request a manual, labelled commit of a role."""
    _report(_send(ctx, tenant, lambda c: c.request_commit(role, message)), as_json)


def rollback(
    ctx: typer.Context, role: str, commit_id: str, tenant: Tenant, reason: Reason = None,
    as_json: Json = False,
) -> None:  # fmt: skip
    """Roll a role back to one of its commits (history is kept)."""
    _report(_send(ctx, tenant, lambda c: c.rollback(role, commit_id, reason=reason)), as_json)


def fork(
    ctx: typer.Context, role: str, commit_id: str, tenant: Tenant,
    name: Annotated[str, typer.Option(help="Name of the new role")],
    as_json: Json = False,
) -> None:  # fmt: skip
    """Start a new role from a commit of ROLE; prints the new role id."""
    _report(_send(ctx, tenant, lambda c: c.fork(role, commit_id, name)), as_json, id_only=True)
