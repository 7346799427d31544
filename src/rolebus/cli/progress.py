"""A progress bar for long commands: events, events/s and ETA on stderr.

Implements ``rolebus.wal.export.Progress`` (a total first, then increments)
and ``rolebus.replay.run.Meter`` (phases, each with its total);
rich hides it when stderr is not a terminal, so scripts see only the summary.
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rolebus.cli.common import err_console


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = "" if speed is None else f"{speed:,.0f} {self.unit}/s"
        return Text(text, style="progress.data.speed")


class EventProgress:
    """``with EventProgress("exporting") as bar: run(progress=bar)``."""

    def __init__(self, label: str, unit: str = "events") -> None:
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(unit),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err_console, transient=True,
        )  # fmt: skip
        self._label = label
        self._task: TaskID | None = None

    def __enter__(self) -> EventProgress:
        self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def start(self, total: int) -> None:
        self.phase(self._label, total)

    def phase(self, name: str, total: int) -> None:
        """A new step of the same command (``rolebus.replay.run.Meter``): the
        previous step is shown complete and a new bar starts."""
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[-1].total)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, count)
