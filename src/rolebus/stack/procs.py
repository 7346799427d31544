"""Pid files and process lifetimes of the local stack's servers.

A pid file is trusted only if the process it names is alive *and* its command
line carries the marker we started it with (a data-folder path): a reused pid
or a leftover file from a killed session is reported stale and removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcState:
    pid: int | None
    alive: bool
    stale: bool
    """A pid file existed but did not name a live process of ours."""


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def inspect(pid_file: Path, marker: str) -> ProcState:
    """What the pid file says, checked against the live process table."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ProcState(pid=None, alive=False, stale=pid_file.exists())
    if _alive(pid) and marker in cmdline(pid):
        return ProcState(pid=pid, alive=True, stale=False)
    return ProcState(pid=pid, alive=False, stale=True)


def write_pid(pid_file: Path, pid: int) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. True if it ended gracefully."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if wait_gone(pid, timeout_s):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    wait_gone(pid, 10.0)
    return False


def terminate_all(pids: list[int], timeout_s: float) -> list[bool]:
    """SIGTERM every pid at once (a KRaft quorum shuts down together), then wait."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    return [
        wait_gone(pid, max(0.0, deadline - time.monotonic())) or terminate(pid, 0) for pid in pids
    ]


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
