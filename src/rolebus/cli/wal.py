"""``rolebus wal tail|inspect``: read the WAL back, decoded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import print_json, state
from rolebus.errors import ConfigError
from rolebus.wal import reader, topics
from rolebus.wal.canonical import plain

app = typer.Typer(help="Read the write-ahead log.", no_args_is_help=True)


def _line(rec: reader.WalRecord) -> str:
    where = f"{rec.position.partition}:{rec.position.offset}"
    if rec.envelope is None:
        return f"{where}  UNDECODABLE  {rec.error}"
    env = rec.envelope
    body = json.dumps(plain(env.payload), ensure_ascii=False)
    if len(body) > 160:
        body = body[:157] + "..."
    return (
        f"{where}  {env.occurred_at:%Y-%m-%dT%H:%M:%S.%fZ}  {env.role_id}  {env.event_type}  {body}"
    )


@app.command()
def tail(
    ctx: typer.Context,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record")
    ] = False,
    follow: Annotated[
        bool | None, typer.Option("--follow/--no-follow", help="Keep waiting for new records")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="Only this role's events")] = None,
    topic: Annotated[str, typer.Option(help="wal|changes|commits|rejections")] = "wal",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Print decoded WAL events. Follows by default unless --from-beginning."""
    if topic not in topics.KINDS:
        raise ConfigError(f"--topic: must be one of {', '.join(topics.KINDS)} (got {topic!r})")
    settings = state(ctx).settings()
    keep_following = (not from_beginning) if follow is None else follow

    async def run() -> None:
        async for rec in reader.tail(
            settings, endpoints.resolve(settings), topics.topic_name(settings, topic),
            from_beginning=from_beginning, follow=keep_following, role_id=role,
        ):  # fmt: skip
            print(
                json.dumps(reader.record_json(rec), default=str) if as_json else _line(rec),
                flush=True,
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def inspect(
    ctx: typer.Context,
    where: Annotated[str, typer.Argument(metavar="PARTITION:OFFSET")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one WAL record: headers, schema fingerprint, decoded event."""
    part, sep, off = where.partition(":")
    if not sep or not part.isdigit() or not off.isdigit():
        raise ConfigError(f"PARTITION:OFFSET: expected two integers like 3:1042 (got {where!r})")
    settings = state(ctx).settings()
    wal = topics.topic_name(settings, "wal")
    rec = asyncio.run(
        reader.read_at(settings, endpoints.resolve(settings), wal, int(part), int(off))
    )
    data = reader.record_json(rec)
    if as_json:
        print_json(data)
    else:
        for key, value in data.items():
            print(f"{key}: {json.dumps(value, indent=2, ensure_ascii=False, default=str)}")
    if rec.envelope is None:
        raise typer.Exit(4)
