"""Read commands over the context store: ``rolebus role show|list``, ``log``,
``show``, ``diff``, ``rejections``, ``recall`` and ``context``.

Each command runs one query of ``rolebus.projectors.queries`` against the
store schema (``ROLEBUS_PG_SCHEMA``) and prints either JSON (``--json``) or
rich tables. User text (personas, messages, labels) only ever goes into
tables as ``rich.text.Text``, so brackets in it are printed, never read as
markup. An unknown role or commit is a ``RolebusError``: one line on stderr
and a non-zero exit (``rolebus.cli.main``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rolebus.cli.common import print_json, progress, state
from rolebus.cli.role import Json, Tenant
from rolebus.cli.role import app as role_app
from rolebus.endpoints import resolve
from rolebus.errors import StoreError
from rolebus.projectors import queries
from rolebus.projectors.db import connect
from rolebus.projectors.views import CommitDiff, LogEntry, RoleView, SeqRanges
from rolebus.wal.snapshot import Lifecycle

T = TypeVar("T")
console = Console(highlight=False, soft_wrap=False)
Role = Annotated[str, typer.Argument(help="Role id (see `rolebus role list`)")]
SHORT = 12
"""Characters of a commit id shown in tables (``rolebus show`` takes a prefix)."""


def _query(ctx: typer.Context, run: Callable[[queries.Conn], Awaitable[T]]) -> T:
    return _with_provider(ctx, False, lambda conn, _: run(conn))


def _with_provider(
    ctx: typer.Context, needed: bool, run: Callable[[queries.Conn, Any], Awaitable[T]]
) -> T:
    """Run a query on the store, with the configured embedding provider if
    ``needed``; PostgreSQL's refusals become one ``StoreError`` line."""
    settings = state(ctx).settings()

    async def go() -> T:
        # Imported here: the providers pull in numpy and model code that only
        # recall and context need.
        from rolebus.projectors.embeddings import load_provider

        provider = load_provider(settings) if needed else None
        try:
            async with connect(settings, resolve(settings)) as conn:
                return await run(conn, provider)
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(
                f"context store schema {settings.pg_schema!r} has no tables yet ({exc}); "
                "run `rolebus db migrate` or start `rolebus project`, or set ROLEBUS_PG_SCHEMA"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"context store query failed: {exc}") from exc
        finally:
            if provider is not None:
                await provider.aclose()

    return asyncio.run(go())


def _plain(value: Any) -> Any:
    """A view as JSON data (bytes as base64)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _text(value: object) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, (dict, list)):
        return Text(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return Text(str(value))


def _ranges(ranges: SeqRanges) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges) or "-"


def _short(commit_id: str | None) -> str | None:
    return None if commit_id is None else commit_id[:SHORT]


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_text(v) for v in row))
    return table


# --- role show / list ------------------------------------------------------


@role_app.command("show")
def role_show(ctx: typer.Context, role: Role, tenant: Tenant, as_json: Json = False) -> None:
    """Show a role's current state as the context store has it."""
    view = _query(ctx, lambda c: queries.role_show(c, tenant, role))
    if as_json:
        print_json(_plain(view))
        return
    console.print(_table(f"role {view.role_id}", ["field", "value"], _role_rows(view)))


def _role_rows(v: RoleView) -> list[tuple[str, object]]:
    forked = None if v.forked_from_role is None else (
        f"{v.forked_from_role} at {_short(v.forked_from_commit)}"
    )  # fmt: skip
    return [
        ("tenant", v.tenant_id), ("name", v.name), ("lifecycle", v.lifecycle),
        ("model", v.model), ("skills", ", ".join(v.skills) or None), ("seq", v.seq),
        ("head commit", v.head_commit_id), ("live seqs", _ranges(v.live)),
        ("forked from", forked), ("created", v.created_at), ("updated", v.updated_at),
        ("traits", dict(v.traits)), ("counters", dict(v.counters)), ("persona", v.persona),
    ]  # fmt: skip


@role_app.command("list")
def role_list(
    ctx: typer.Context,
    tenant: Tenant,
    lifecycle: Annotated[
        Lifecycle | None, typer.Option("--state", help="Only roles in this lifecycle state")
    ] = None,
    as_json: Json = False,
) -> None:
    """List the tenant's roles."""
    state_ = None if lifecycle is None else lifecycle.value
    views = _query(ctx, lambda c: queries.role_list(c, tenant, state_))
    if as_json:
        print_json([_plain(v) for v in views])
        return
    rows = [
        (v.role_id, v.name, v.lifecycle, v.seq, _short(v.head_commit_id), v.updated_at)
        for v in views
    ]
    console.print(
        _table(f"{len(views)} role(s)", ["role", "name", "state", "seq", "head", "updated"], rows)
    )


# --- log / show / diff ---------------------------------------------------------


def log(ctx: typer.Context, role: Role, tenant: Tenant, as_json: Json = False) -> None:
    """Show a role's commit history, newest first (like git log)."""
    entries = _query(ctx, lambda c: queries.log(c, tenant, role))
    if as_json:
        print_json([_plain(e) for e in entries])
        return
    rows = [
        (_short(e.commit_id), e.seq, e.kind, e.label, _short(e.parent_id), e.occurred_at, _note(e))
        for e in entries
    ]
    columns = ["commit", "seq", "kind", "label", "parent", "time", "note"]
    console.print(_table(f"role {role}: {len(entries)} commit(s)", columns, rows))


def _note(e: LogEntry) -> str | None:
    if e.rollback_to is None:
        return e.reason
    return f"rolled back to {_short(e.rollback_to)}" + (f": {e.reason}" if e.reason else "")


def show(
    ctx: typer.Context,
    commit: Annotated[str, typer.Argument(help="Commit id, or a unique prefix of it")],
    tenant: Tenant,
    as_json: Json = False,
) -> None:
    """Show a commit and the role state it recorded."""
    view = _query(ctx, lambda c: queries.show_commit(c, tenant, commit))
    if as_json:
        print_json(_plain(view))
        return
    e, snap = view.entry, view.snapshot
    head = [
        ("commit", e.commit_id), ("role", e.role_id), ("kind", e.kind), ("label", e.label),
        ("parent", e.parent_id), ("seq", e.seq), ("time", e.occurred_at), ("note", _note(e)),
        *((key, snap.get(key)) for key in ("name", "lifecycle", "model", "skills", "traits",
                                          "counters", "lineage", "persona")),
    ]  # fmt: skip
    console.print(_table(f"commit {e.commit_id[:SHORT]}", ["field", "value"], head))
    messages = [(m["seq"], m["role_id"], m["author"], m["content"]) for m in snap["messages"]]
    console.print(_table("messages in the committed window", ["seq", "role", "author",
                                                              "content"], messages))  # fmt: skip


def diff(
    ctx: typer.Context,
    commit_a: Annotated[str, typer.Argument(help="The older commit (id or unique prefix)")],
    commit_b: Annotated[str, typer.Argument(help="The newer commit (id or unique prefix)")],
    tenant: Tenant,
    as_json: Json = False,
) -> None:
    """Show what changed between two commits: fields, traits, counters, messages."""
    result = _query(ctx, lambda c: queries.diff(c, tenant, commit_a, commit_b))
    if as_json:
        print_json(_plain(result))
        return
    _print_diff(result)


def _print_diff(d: CommitDiff) -> None:
    if d.empty:
        console.print(Text(f"no difference between {d.commit_a} and {d.commit_b}"))
        return
    rows = [(c.field, c.before, c.after) for c in d.changes]
    console.print(_table("changed fields", ["field", "A", "B"], rows))
    for title, messages in (("only in A", d.only_in_a), ("only in B", d.only_in_b)):
        if messages:
            listed = [(m.seq, m.role_id, m.author, m.content) for m in messages]
            columns = ["seq", "role", "author", "content"]
            console.print(_table(f"messages {title}", columns, listed))
    console.print(Text(f"live seqs only in A: {_ranges(d.live_only_in_a)}"))
    console.print(Text(f"live seqs only in B: {_ranges(d.live_only_in_b)}"))


# --- rejections ------------------------------------------------------------------


def rejections(
    ctx: typer.Context,
    tenant: Tenant,
    role: Annotated[str | None, typer.Option("--role", help="Only this role's")] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this reason code (e.g. not_active)")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most rows shown")] = 50,
    as_json: Json = False,
) -> None:
    """List refused events, newest first, with the reason and the WAL position."""
    views = _query(ctx, lambda c: queries.rejections(c, tenant, role, reason, limit))
    if as_json:
        print_json([_plain(v) for v in views])
        return
    rows = [
        (f"{v.wal_topic}[{v.wal_partition}]@{v.wal_offset}", v.role_id, v.event_type, v.reason,
         v.message)
        for v in views
    ]  # fmt: skip
    columns = ["WAL position", "role", "event", "reason", "message"]
    console.print(_table(f"{len(views)} rejection(s)", columns, rows))


# --- recall / context --------------------------------------------------------------


def recall(
    ctx: typer.Context,
    role: Role,
    text: Annotated[str, typer.Argument(help="What to look for, in plain words")],
    tenant: Tenant,
    k: Annotated[int, typer.Option("-k", min=1, help="How many messages")] = 5,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Recall among the messages live at this commit of the role"),
    ] = None,
    as_json: Json = False,
) -> None:
    """Find the role's live messages closest in meaning to TEXT (never another role's
    or tenant's, never ones a rollback superseded); --as-of COMMIT: as they were
    live at that commit."""
    hits = _with_provider(
        ctx, True, lambda c, p: queries.recall(c, p, tenant, role, text, k, as_of=as_of)
    )
    if as_json:
        print_json([_plain(h) for h in hits])
        return
    rows = [(f"{h.distance:.3f}", h.role_id, h.seq, h.author, h.content) for h in hits]
    columns = ["distance", "role", "seq", "author", "content"]
    console.print(_table(f"{len(hits)} message(s) recalled", columns, rows))


def context(
    ctx: typer.Context,
    role: Role,
    tenant: Tenant,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Also recall messages about this")
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Token budget of the whole context")
    ] = queries.DEFAULT_MAX_TOKENS,
    k: Annotated[int, typer.Option("-k", min=1, help="Messages recalled for --query")] = 5,
    as_json: Json = False,
) -> None:
    """Build the chat messages to send to an LLM for this role: persona, recent live
    messages and (with --query) recalled ones, within --max-tokens. --json prints
    the list of {"role", "content"} messages as it is."""
    built = _with_provider(ctx, bool(query), lambda c, p: queries.context(
        c, p, tenant, role, query, max_tokens, k=k
    ))  # fmt: skip
    progress(
        f"context of {role}: {len(built.messages)} messages, {built.tokens}/{max_tokens} "
        f"tokens ({built.recent} recent, {built.recalled} recalled)"
    )
    if as_json:
        print_json(built.messages)
        return
    rows = [(m["role"], m["content"]) for m in built.messages]
    console.print(_table(f"context of {role}", ["role", "content"], rows))
