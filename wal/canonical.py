"""Canonical bytes for hashing: the same logical value always gives the same bytes.

Rules (so any language can reproduce commit ids): JSON, UTF-8, map keys sorted,
no insignificant whitespace; datetimes as integer microseconds since the epoch
(UTC); UUIDs as lowercase hyphenated strings; enums as their value; tuples,
lists and (sorted) sets/frozensets as arrays; dataclasses as maps of their fields.
Floats are refused: their text form is not portable across implementations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from rolebus.errors import SchemaError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are refused."""
    if moment.tzinfo is None:
        raise SchemaError(f"datetime {moment!r} has no timezone; use UTC-aware datetimes")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Inverse of ``to_micros`` (UTC-aware, exact)."""
    return _EPOCH + timedelta(microseconds=micros)


def plain(value: Any) -> Any:
    """Turn a value into JSON-able data following the canonical rules."""
    if isinstance(value, Enum):  # before str: a StrEnum member is a str too
        return plain(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    raise SchemaError(f"canonical encoding: values of type {type(value).__name__} are not allowed")


def canonical_text(data: Any) -> str:
    """The canonical JSON text of ``data`` that is already plain (``plain``'s output)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(value: Any) -> bytes:
    """The canonical encoding of ``value``."""
    return canonical_text(plain(value)).encode("utf-8")


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_bytes(value)).hexdigest()
