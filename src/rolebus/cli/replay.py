"""``rolebus replay fold`` (the determinism proof) and ``rolebus asof`` (a role's
state at a point). Both only read topics; progress goes to stderr."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rolebus import endpoints
from rolebus.cli.common import err_console, print_json, state
from rolebus.cli.progress import EventProgress
from rolebus.errors import ConfigError
from rolebus.replay.asof import AsOf, asof
from rolebus.replay.points import AtCommit, AtTime, Point, parse_offset
from rolebus.replay.run import FoldRun, replay_fold

app = typer.Typer(help="Replay the log: prove it reproduces the outputs.", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="Machine-readable summary on stdout")]
SHOWN = 20
"""Divergences printed on stderr (all are in --json)."""


@app.command()
def fold(
    ctx: typer.Context,
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare with the live commits and changes topics")
    ] = False,
    role: Annotated[
        str | None, typer.Option("--role", help="Only this role (and the roles it forks from)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Re-fold the whole WAL in process with a fresh state, as the workers fold it.

    No worker, no consumer group, nothing written. With --verify, every commit
    id (per role, in seq order) and every role's final state must equal the
    live outputs; a difference names the role, the seq and the first event
    that differs, and the exit code is 3.
    """
    settings = state(ctx).settings()
    with EventProgress("replaying", unit="records") as bar:
        run = asyncio.run(
            replay_fold(settings, endpoints.resolve(settings), verify=verify, role=role, meter=bar)
        )
    report = run.report
    for divergence in () if report is None else report.divergences[:SHOWN]:
        err_console.print(f"[red]DIVERGES[/red] {divergence.line()}", highlight=False)
    err_console.print(_summary(run), highlight=False)
    if as_json:
        print_json(run.json())
    if not run.ok:
        raise typer.Exit(3)


def _summary(run: FoldRun) -> str:
    took = sum(run.seconds.values())
    line = (
        f"replay fold: {run.events:,} WAL records ({run.folded:,} folded), {run.roles:,} roles, "
        f"{run.commits:,} commits in {took:.1f}s ({run.events_per_s:,.0f} events/s)"
    )
    report = run.report
    if report is None:
        return line
    if not report.divergences:
        return f"{line}; verified: {report.roles:,} roles identical to the live outputs"
    return f"{line}; [red]{len(report.divergences)} divergence(s)[/red] in {report.roles:,} roles"


def asof_command(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="Role id")],
    commit: Annotated[str | None, typer.Option("--commit", help="As of this commit id")] = None,
    offset: Annotated[
        str | None,
        typer.Option("--offset", metavar="P:O", help="After the WAL record at partition:offset"),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="After the role's events up to this event time "
            "(ISO 8601; UTC when it names no time zone)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """A role's state as of a commit, a WAL offset or an event time.

    Computed from the nearest commit at or before that point plus the role's
    WAL events after it, not from the role's first event.
    """
    point = _point(commit, offset, at)
    settings = state(ctx).settings()
    found = asyncio.run(asof(settings, endpoints.resolve(settings), role, point))
    if as_json:
        print_json(found.json())
    else:
        _show(found)


def _point(commit: str | None, offset: str | None, at: str | None) -> Point:
    given = [x for x in (commit, offset, at) if x is not None]
    if len(given) != 1:
        raise ConfigError("asof: give exactly one of --commit, --offset or --time")
    if commit is not None:
        return AtCommit(commit)
    if offset is not None:
        return parse_offset(offset)
    assert at is not None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise ConfigError(
            f"--time: not an ISO 8601 time like 2026-01-01T12:00:00Z ({at!r})"
        ) from None
    return AtTime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _show(found: AsOf) -> None:
    data: dict[str, Any] = found.json()
    s = data["state"]
    table = Table(title=f"role {found.role_id} as of {data['point']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("tenant_id", "lifecycle", "name", "persona", "model", "traits", "skills"):
        table.add_row(key, str(s[key]))
    table.add_row("seq", str(data["seq"]))
    table.add_row("head commit", str(data["head_commit_id"]))
    table.add_row("state digest", data["state_digest"])
    table.add_row("counters", str(s["counters"]))
    for m in s["messages"]:
        table.add_row(f"message {m['seq']}", f"{m['author']}: {m['content'][:100]}")
    how = data["computed"]
    table.caption = (f"from commit {how['snapshot_commit_id'][:12]} (seq {how['snapshot_seq']}) "
                     f"+ {how['tail_events']} WAL records")  # fmt: skip
    Console().print(table)
