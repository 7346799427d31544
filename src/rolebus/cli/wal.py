"""``rolebus wal tail|inspect|export|import``: read the WAL back, decoded, and copy
it between clusters through Avro container files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from rolebus import endpoints
from rolebus.cli.common import print_json, state
from rolebus.cli.progress import EventProgress
from rolebus.errors import ConfigError
from rolebus.wal import archive, reader, topics
from rolebus.wal.canonical import plain
from rolebus.wal.export import export_wal, import_wal

app = typer.Typer(help="Read, export and import the write-ahead log.", no_args_is_help=True)


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


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option}: {value!r} is not an ISO-8601 time (e.g. 2026-11-29T08:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def export(
    ctx: typer.Context,
    to: Annotated[Path, typer.Option("--to", help="New or empty folder to write into")],
    since: Annotated[
        str | None, typer.Option("--from", help="Only events at or after this time (ISO, UTC)")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only events before this time (ISO, UTC)")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON")] = False,
) -> None:
    """Copy the WAL into Avro container files (one per partition) plus manifest.json.

    Times filter by event time (record time for records that do not decode);
    --tenant leaves out records that do not decode (they have no tenant)."""
    filters = archive.Filters(_when(since, "--from"), _when(until, "--until"), tenant)
    settings = state(ctx).settings()
    started = time.monotonic()
    with EventProgress("exporting") as bar:
        manifest = asyncio.run(
            export_wal(settings, endpoints.resolve(settings), to, filters, progress=bar)
        )
    seconds = time.monotonic() - started
    if as_json:
        print_json({**dataclasses.asdict(manifest), "folder": str(to), "seconds": seconds})
        return
    print(
        f"exported {manifest.records} records ({manifest.undecodable} undecodable, "
        f"{manifest.filtered_out} filtered out) from {manifest.source_topic} into "
        f"{len(manifest.partitions)} file(s) in {to} in {seconds:.1f}s "
        f"({manifest.records / max(seconds, 1e-9):,.0f} events/s)"
    )


@app.command("import")
def import_(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="A folder written by `rolebus wal export`")],
    force: Annotated[
        bool, typer.Option("--force", help="Append even when the target WAL is not empty")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Write an export into this cluster's WAL, each role in its original order.

    Refuses a target WAL that already holds records (a second import, live
    traffic, an unfinished import) unless --force."""
    settings = state(ctx).settings()
    with EventProgress("importing") as bar:
        report = asyncio.run(
            import_wal(settings, endpoints.resolve(settings), folder, force=force, progress=bar)
        )
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    print(
        f"imported {report.records} records ({report.undecodable} undecodable) of export "
        f"{report.export_id} into {report.target_topic} ({report.target_partitions} "
        f"partitions) in {report.seconds:.1f}s "
        f"({report.records / max(report.seconds, 1e-9):,.0f} events/s)"
    )
