"""Loopback port checks for the local stack (and for tests and benchmarks that
start private stacks next to a running one)."""

from __future__ import annotations

import errno
import socket


def bind_error(port: int) -> OSError | None:
    """Why 127.0.0.1:``port`` cannot be bound right now, or None if it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc
    return None


def in_use(exc: OSError) -> bool:
    return exc.errno == errno.EADDRINUSE


def free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are all free on loopback."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + count < 65000 and all(bind_error(base + i) is None for i in range(count)):
            return base
    raise OSError("no block of free ports on 127.0.0.1")
