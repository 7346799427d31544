"""The schema registry: every published version of the wire contract, by fingerprint.

Each version lives in ``rolebus.schemas`` as ``versions/v<N>/envelope.avsc``, a
self-contained Avro schema any Avro implementation can parse. ``envelope.avsc`` at
the top of the package is a byte-identical copy of the newest version: the schema
writers use. Readers resolve every older version against it.

Invariants (checked at first use, failing with ``SchemaError``): versions are
numbered 1..N without gaps, their fingerprints are distinct, and the top-level
``envelope.avsc`` is the newest version. A fingerprint is the CRC-64-AVRO of the
schema's Parsing Canonical Form (Avro spec), i.e. the unsigned 64-bit value whose
little-endian bytes follow the ``C3 01`` marker of the single-object encoding.

Nothing is read at import: files are loaded and parsed once, on first use.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, Final

from fastavro.schema import parse_schema, to_parsing_canonical_form

from rolebus.errors import SchemaError

SCHEMA_PACKAGE: Final = "rolebus.schemas"
ENVELOPE_FILE: Final = "envelope.avsc"
NAMESPACE: Final = "io.rolebus.wal"
SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
"""Marker of Avro single-object encoding (spec: 'Single object encoding')."""
HEADER_SIZE: Final = 10
"""Marker (2 bytes) + CRC-64-AVRO fingerprint (8 bytes, little-endian)."""

_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_CRC64_EMPTY: Final = 0xC15D213AA4D7A795
"""CRC-64-AVRO's initial value and polynomial (Avro spec, 'Schema Fingerprints')."""


@dataclass(frozen=True)
class SchemaVersion:
    """One published version of the envelope schema."""

    version: int
    """Version number N (folder ``versions/vN``)."""
    text: str
    """The .avsc file as shipped (JSON)."""
    parsed: dict[str, Any]
    """The schema parsed by fastavro (named types resolved), ready for reading/writing."""
    canonical_form: str
    """Parsing Canonical Form (Avro spec): what the fingerprint covers."""
    fingerprint: int
    """CRC-64-AVRO of ``canonical_form``, as an unsigned 64-bit integer."""
    header: bytes
    """Single-object header: ``C3 01`` + fingerprint as 8 little-endian bytes."""

    @property
    def fingerprint_hex(self) -> str:
        return fingerprint_hex(self.fingerprint)


def fingerprint_hex(fingerprint: int) -> str:
    """The fingerprint's 8 bytes as they appear on the wire (little-endian), in hex.

    This is also how fastavro's and Apache avro's ``fingerprint()`` print it.
    """
    return fingerprint.to_bytes(8, "little").hex()


@functools.cache
def _crc64_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO of ``data``: the Avro spec's reference algorithm, transcribed."""
    table = _crc64_table()
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def build_version(version: int, text: str, origin: str = "<string>") -> SchemaVersion:
    """Parse an .avsc text and compute its canonical form and fingerprint."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SchemaError(f"schema {origin}: not valid JSON ({exc})") from exc
    try:
        parsed = parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise SchemaError(f"schema {origin}: not a valid Avro schema ({exc})") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError(f"schema {origin}: the top-level schema must be a record")
    fingerprint = crc64_avro(canonical.encode("utf-8"))
    return SchemaVersion(
        version=version,
        text=text,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=fingerprint,
        header=SINGLE_OBJECT_MAGIC + fingerprint.to_bytes(8, "little"),
    )


def _read_text(resource: Traversable, origin: str) -> str:
    try:
        return resource.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(
            f"schema {origin}: cannot be read ({exc}); is the rolebus package installed "
            "with its package data?"
        ) from exc


def _version_dirs(root: Traversable) -> dict[int, Traversable]:
    found: dict[int, Traversable] = {}
    for entry in root.joinpath("versions").iterdir():
        match = _VERSION_DIR.fullmatch(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = entry
    expected = list(range(1, len(found) + 1))
    if not found or sorted(found) != expected:
        raise SchemaError(
            f"{SCHEMA_PACKAGE}/versions: expected folders v1..vN without gaps "
            f"(found {sorted(found)}); every published version must be kept"
        )
    return found


@functools.cache
def versions() -> tuple[SchemaVersion, ...]:
    """Every published version, oldest first (loaded and checked once)."""
    root = resources.files(SCHEMA_PACKAGE)
    built = []
    for number, folder in sorted(_version_dirs(root).items()):
        origin = f"versions/v{number}/{ENVELOPE_FILE}"
        built.append(
            build_version(number, _read_text(folder.joinpath(ENVELOPE_FILE), origin), origin)
        )
    seen: dict[int, int] = {}
    for item in built:
        if item.fingerprint in seen:
            raise SchemaError(
                f"schema versions v{seen[item.fingerprint]} and v{item.version} have the same "
                f"canonical form (fingerprint {item.fingerprint_hex}); a new version must "
                "change the wire format"
            )
        seen[item.fingerprint] = item.version
    _check_current_copy(root, built[-1])
    return tuple(built)


def _check_current_copy(root: Traversable, newest: SchemaVersion) -> None:
    text = _read_text(root.joinpath(ENVELOPE_FILE), ENVELOPE_FILE)
    if text != newest.text:
        raise SchemaError(
            f"{SCHEMA_PACKAGE}/{ENVELOPE_FILE} differs from versions/v{newest.version}/"
            f"{ENVELOPE_FILE}; it must be a byte-identical copy of the newest version"
        )


def current() -> SchemaVersion:
    """The version writers use and readers resolve to (the newest)."""
    return versions()[-1]


@functools.cache
def registry() -> Mapping[int, SchemaVersion]:
    """Fingerprint -> writer schema, for every kept version."""
    return MappingProxyType({item.fingerprint: item for item in versions()})


def by_fingerprint(fingerprint: int) -> SchemaVersion | None:
    """The kept version with this fingerprint, or None when it is unknown."""
    return registry().get(fingerprint)


def by_version(version: int) -> SchemaVersion:
    """Version N; ``SchemaError`` naming the known versions when there is none."""
    known = versions()
    if not 1 <= version <= len(known):
        raise SchemaError(f"schema version {version} does not exist (known: 1..{len(known)})")
    return known[version - 1]
