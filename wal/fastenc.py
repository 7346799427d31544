"""A specialised Avro binary encoder for ``Envelope`` under the current schema.

fastavro's ``schemaless_writer`` is generic: for every value it looks the schema
node up, resolves union branches by trying each one, searches enum symbols and
runs logical-type hooks; that was most of the producer's per-event cost. This
module walks the parsed schema ONCE and generates one plain Python function per
record (as ``dataclasses`` generates ``__init__``), which writes the dataclass
attributes straight into a ``bytearray``, in schema order, with every per-field
decision already taken:

* records: the dataclass with the record's name (``Envelope``, ``ToolCall``, each
  payload type); the schema and the dataclass must have the same field names;
* ``long``/``int``: zigzag varint, range-checked, ``bool`` refused; small values
  come from a table of pre-encoded bytes; ``string``: varint length + UTF-8;
  ``boolean``; ``null``;
* unions: ``["null", X]`` by a ``None`` check; any other union by a Python type
  -> branch map (the payload union: payload dataclass -> record branch);
* enums: a symbol -> index dict (``StrEnum`` members are added on first use);
* arrays and maps: one block with a positive count, the items, then ``0``, an
  empty one is a single ``0`` (fastavro's framing); sets are written sorted and
  map keys sorted, as ``rolebus.wal.codec`` always did (deterministic output);
* logical types: ``uuid`` (the text of ``str(UUID)``) and ``timestamp-micros``
  (``rolebus.wal.canonical.to_micros``'s arithmetic).

The output is byte-identical to fastavro's for every envelope the codec accepts;
tests/unit/test_fastenc.py proves it against ``schemaless_writer``. A value the
schema cannot hold raises ``SchemaError`` naming the field path. A schema
construct not implemented here (``bytes``, ``double``, other logical types, ...)
makes ``build`` raise ``Unsupported``; ``current()`` is then None and the codec
writes with fastavro, so a schema change never breaks encoding, it only makes it
slower until this module learns the construct (a test fails meanwhile).
``source()`` shows the generated code.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, NoReturn

from rolebus.errors import SchemaError
from rolebus.wal import schema
from rolebus.wal.canonical import to_micros
from rolebus.wal.events import PAYLOAD_TYPES, Envelope, ToolCall

Encoder = Callable[[Envelope], bytes]
"""Envelope -> Avro single-object encoding (header + body)."""

CLASSES: Final[Mapping[str, type]] = {
    cls.__name__: cls for cls in (Envelope, ToolCall, *PAYLOAD_TYPES)
}
"""The dataclass of each Avro record, by the record's name (without namespace)."""

_LONG: Final = (-(2**63), 2**63 - 1)
_INT: Final = (-(2**31), 2**31 - 1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SMALL_LIMIT: Final = 1024


class Unsupported(Exception):
    """The schema uses a construct this encoder does not implement."""


class _Misfit(Exception):
    """A value the schema cannot hold; the generated code adds the path on the way out."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.path: list[str] = []

    def where(self) -> str:
        text = ""
        for part in reversed(self.path):
            text += part if part.startswith("[") or not text else "." + part
        return text


# --- helpers the generated code calls (slow paths and rare cases) -------------


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _bad(value: object, rule: str) -> NoReturn:
    raise _Misfit(f"{rule} (got {_show(value)})")


def _varint(z: int) -> bytes:
    """A non-negative (already zigzagged) integer as a base-128 varint."""
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL: Final = tuple(_varint(n << 1) for n in range(_SMALL_LIMIT))
"""``_SMALL[n]``: the Avro encoding of the long ``n`` (also of a length ``n``)."""


def _integer(value: Any, bounds: tuple[int, int], kind: str) -> bytes:
    """The Avro encoding of an int/long outside the small table (or not an exact int)."""
    if not isinstance(value, int) or isinstance(value, bool):
        _bad(value, f"must be an integer (Avro {kind})")
    number = int(value)
    low, high = bounds
    if not low <= number <= high:
        raise _Misfit(f"must be an Avro {kind}, in [{low}, {high}] (got {number})")
    if 0 <= number < _SMALL_LIMIT:
        return _SMALL[number]
    return _varint((number << 1) ^ (number >> 63))


def _utf8(value: Any) -> bytes:
    """UTF-8 of a string field's value, or the misfit saying why there is none."""
    if not isinstance(value, str):
        _bad(value, "must be a string")
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise _Misfit(f"must be valid Unicode ({exc.reason} at index {exc.start})") from None


def _length(size: int) -> bytes:
    return _SMALL[size] if size < _SMALL_LIMIT else _varint(size << 1)


def _uuid(value: Any) -> bytes:
    if not isinstance(value, uuid.UUID):
        _bad(value, "must be a uuid.UUID")
    return str(value).encode()


def _micros(value: Any) -> int:
    if not isinstance(value, datetime):
        _bad(value, "must be a timezone-aware datetime")
    if value.tzinfo is None:
        raise _Misfit(f"has no timezone ({_show(value)}); use UTC-aware datetimes")
    try:
        return to_micros(value)
    except TypeError:  # a tzinfo whose utcoffset() is None: naive after all
        raise _Misfit(f"has no UTC offset ({_show(value)}); use UTC-aware datetimes") from None


def _record(value: Any, cls: type) -> None:
    if not isinstance(value, cls):
        _bad(value, f"must be an instance of {cls.__name__}")


def _enum(table: dict[Any, bytes], value: Any, rule: str) -> bytes:
    """Slow path of an enum lookup: a str subclass (``StrEnum`` hashes by name)."""
    tag = table.get(str.__str__(value)) if isinstance(value, str) else None
    if tag is None:
        _bad(value, rule)
    if isinstance(value, Enum):
        table[value] = tag  # enums have finitely many members: remember this one
    return tag


def _array_items(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError as exc:
            raise _Misfit(f"must hold mutually comparable items ({exc})") from None
    if isinstance(value, list | tuple):
        return value
    _bad(value, "must be a tuple, list or set")


def _map_keys(value: Any) -> list[str]:
    if not isinstance(value, Mapping):
        _bad(value, "must be a mapping")
    for key in value:
        if not isinstance(key, str):
            raise _Misfit(f"keys must be strings (got {_show(key)})")
    return sorted(value)


def _union(branches: Mapping[type, tuple[bytes, Any]], value: Any, rule: str) -> Any:
    """Slow path of a union lookup: the first branch accepting a subclass of its type.

    Record branches are chosen by exact type only (as ``codec.to_datum`` does): a
    subclass of a payload type would decode as the base type.
    """
    for accepted, branch in branches.items():
        if dataclasses.is_dataclass(accepted) or (accepted is int and type(value) is bool):
            continue
        if isinstance(value, accepted):
            return branch
    raise _Misfit(f"type {type(value).__name__} {rule}")


def _timestamp_cache() -> list[tuple[int, bytes]]:
    return [(-1, b"")]


_HELPERS: Final[Mapping[str, Any]] = {
    "_Misfit": _Misfit,
    "_bad": _bad,
    "_SMALL": _SMALL,
    "_integer": _integer,
    "_utf8": _utf8,
    "_length": _length,
    "_varint": _varint,
    "_uuid": _uuid,
    "_micros": _micros,
    "_record": _record,
    "_enum": _enum,
    "_array_items": _array_items,
    "_map_keys": _map_keys,
    "_union": _union,
    "_encode": str.encode,
    "_UUID": uuid.UUID,
    "_datetime": datetime,
    "_EPOCH": _EPOCH,
    "_LONG": _LONG,
    "_INT": _INT,
}

# --- code generation ---------------------------------------------------------

_PRIMITIVE_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "string": (str,),
}
"""The Python types that select a branch of a general union."""


class _Generator:
    """Walks a parsed schema and emits the source of its writer functions."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        self.classes = classes
        self.namespace: dict[str, Any] = dict(_HELPERS)
        self.functions: list[str] = []
        self.records: dict[str, str] = {}  # record fullname -> function name
        self.enums: dict[str, str] = {}  # enum fullname -> table name
        self.defined: dict[str, Any] = {}  # named type fullname -> its schema node
        self.unions: list[str] = []  # union tables, whose writers are bound after exec
        self.counter = 0

    def name(self, prefix: str, value: Any = None) -> str:
        self.counter += 1
        name = f"{prefix}_{self.counter}"
        if value is not None:
            self.namespace[name] = value
        return name

    # Python types of a node's values, for dispatch in a general union.
    def types(self, node: Any) -> tuple[type, ...]:
        node = self.resolve(node)
        if isinstance(node, str):
            return _PRIMITIVE_TYPES[node]
        if isinstance(node, list):
            return tuple(t for branch in node for t in self.types(branch))
        kind = node["type"]
        if node.get("logicalType") == "uuid":
            return (uuid.UUID,)
        if node.get("logicalType") == "timestamp-micros":
            return (datetime,)
        if kind == "record":
            return (self.record_class(node),)
        if kind == "enum":
            return (str,)
        if kind == "array":
            return (tuple, list, set, frozenset)
        if kind == "map":
            return (dict, Mapping)
        if kind not in _PRIMITIVE_TYPES:
            raise Unsupported(f"type {kind!r} is not supported")
        return _PRIMITIVE_TYPES[kind]

    def resolve(self, node: Any) -> Any:
        """A named-type reference -> the named type's node (primitives unchanged)."""
        if isinstance(node, str) and node not in _PRIMITIVE_TYPES:
            if node not in self.defined:
                raise Unsupported(f"type {node!r} is not supported")
            return self.defined[node]
        if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
            self.defined.setdefault(node["name"], node)
        return node

    def record_class(self, node: dict[str, Any]) -> type:
        fullname: str = node["name"]
        cls = self.classes.get(fullname.rpartition(".")[2])
        if cls is None or not dataclasses.is_dataclass(cls):
            raise Unsupported(f"record {fullname} has no dataclass")
        names = [field["name"] for field in node["fields"]]
        attrs = [f.name for f in dataclasses.fields(cls)]
        if sorted(names) != sorted(attrs):
            raise Unsupported(
                f"record {fullname} has fields {sorted(names)} but {cls.__name__} has "
                f"{sorted(attrs)}: the dataclass and the schema have drifted apart"
            )
        return cls

    # A function writing one value of ``node`` (records: their own function).
    def function(self, node: Any) -> str:
        node = self.resolve(node)
        if isinstance(node, dict) and node.get("type") == "record":
            return self.record(node)
        name = self.name("_write")
        body = self.emit(node, "value", 1)
        self.functions.append(f"def {name}(buf, value):\n" + "\n".join(body))
        return name

    def record(self, node: dict[str, Any]) -> str:
        fullname: str = node["name"]
        if fullname in self.records:
            return self.records[fullname]
        cls = self.record_class(node)
        self.defined[fullname] = node
        name = f"_write_{cls.__name__}"
        self.records[fullname] = name  # before the fields: recursive records call it
        cls_name = f"_cls_{cls.__name__}"
        self.namespace[cls_name] = cls
        lines = [
            f"def {name}(buf, obj):",
            f"    if type(obj) is not {cls_name}:",
            f"        _record(obj, {cls_name})",
        ]
        for field in node["fields"]:
            fname: str = field["name"]
            if not fname.isidentifier():
                raise Unsupported(f"record {fullname}: field name {fname!r}")
            lines.append("    try:")
            lines.append(f"        v = obj.{fname}")
            lines.extend(self.emit(field["type"], "v", 2))
            lines.append("    except _Misfit as misfit:")
            lines.append(f"        misfit.path.append({fname!r})")
            lines.append("        raise")
        self.functions.append("\n".join(lines))
        return name

    def emit(self, node: Any, var: str, depth: int) -> list[str]:
        """Lines (indented ``depth`` levels) appending the encoding of local ``var``."""
        node = self.resolve(node)
        pad = "    " * depth
        if isinstance(node, list):
            return self.emit_union(node, var, depth)
        if isinstance(node, str):
            return self.emit_primitive(node, var, pad)
        kind = node.get("type")
        logical = node.get("logicalType")
        if logical == "uuid" and kind == "string":
            return [
                f"{pad}if type({var}) is _UUID:",
                f"{pad}    b = {var}.bytes",  # str(UUID), without its slower formatting:
                f"{pad}    d = f\"{{b[:4].hex()}}-{{b[4:10].hex('-', 2)}}-{{b[10:].hex()}}\""
                ".encode()",
                f"{pad}else:",
                f"{pad}    d = _uuid({var})",
                f"{pad}n = len(d)",
                f"{pad}buf += _SMALL[n] if n < {_SMALL_LIMIT} else _length(n)",
                f"{pad}buf += d",
            ]
        if logical == "timestamp-micros" and kind == "long":
            return self.emit_timestamp(var, depth)
        if logical is not None:
            raise Unsupported(f"logical type {logical!r} on {kind!r} is not supported")
        if kind == "record":
            return [f"{pad}{self.record(node)}(buf, {var})"]
        if kind == "enum":
            return self.emit_enum(node, var, pad)
        if kind == "array":
            return self.emit_array(node, var, depth)
        if kind == "map":
            return self.emit_map(node, var, depth)
        if isinstance(kind, str) and kind in _PRIMITIVE_TYPES:
            return self.emit_primitive(kind, var, pad)
        raise Unsupported(f"type {kind!r} is not supported")

    def emit_primitive(self, kind: str, var: str, pad: str) -> list[str]:
        if kind == "null":
            return [f"{pad}if {var} is not None:", f"{pad}    _bad({var}, 'must be None')"]
        if kind == "boolean":
            return [
                f"{pad}if {var} is True:",
                f"{pad}    buf.append(1)",
                f"{pad}elif {var} is False:",
                f"{pad}    buf.append(0)",
                f"{pad}else:",
                f"{pad}    _bad({var}, 'must be a bool')",
            ]
        if kind in ("int", "long"):
            bounds = "_INT" if kind == "int" else "_LONG"
            return [
                f"{pad}if type({var}) is int and 0 <= {var} < {_SMALL_LIMIT}:",
                f"{pad}    buf += _SMALL[{var}]",
                f"{pad}else:",
                f"{pad}    buf += _integer({var}, {bounds}, {kind!r})",
            ]
        if kind == "string":
            return [
                f"{pad}try:",
                f"{pad}    d = _encode({var})",  # str.encode: TypeError for a non-str
                f"{pad}except (TypeError, UnicodeEncodeError):",
                f"{pad}    d = _utf8({var})",
                f"{pad}n = len(d)",
                f"{pad}buf += _SMALL[n] if n < {_SMALL_LIMIT} else _length(n)",
                f"{pad}buf += d",
            ]
        raise Unsupported(f"type {kind!r} is not supported")

    def emit_timestamp(self, var: str, depth: int) -> list[str]:
        pad = "    " * depth
        cache = self.name("_ts", _timestamp_cache())
        # Varint of the zigzagged micros: the low three 7-bit groups change every
        # event, the higher ones about once a second: reuse the last event's.
        return [
            f"{pad}if type({var}) is _datetime and {var}.tzinfo is not None:",
            f"{pad}    try:",
            f"{pad}        t = {var} - _EPOCH",  # canonical.to_micros, inlined
            f"{pad}    except TypeError:",
            f"{pad}        {var} = _micros({var})",
            f"{pad}    else:",
            f"{pad}        {var} = (t.days * 86400 + t.seconds) * 1000000 + t.microseconds",
            f"{pad}else:",
            f"{pad}    {var} = _micros({var})",
            f"{pad}z = ({var} << 1) ^ ({var} >> 63)",
            f"{pad}if z >= 2097152:",
            f"{pad}    buf.append((z & 127) | 128)",
            f"{pad}    buf.append(((z >> 7) & 127) | 128)",
            f"{pad}    buf.append(((z >> 14) & 127) | 128)",
            f"{pad}    z >>= 21",
            f"{pad}    c = {cache}[0]",
            f"{pad}    if c[0] != z:",
            f"{pad}        c = {cache}[0] = (z, _varint(z))",
            f"{pad}    buf += c[1]",
            f"{pad}else:",
            f"{pad}    buf += _varint(z)",
        ]

    def emit_enum(self, node: dict[str, Any], var: str, pad: str) -> list[str]:
        fullname: str = node["name"]
        table = self.enums.get(fullname)
        if table is None:
            symbols: list[str] = node["symbols"]
            values = {symbol: _varint(i << 1) for i, symbol in enumerate(symbols)}
            table = self.enums[fullname] = self.name("_symbols", values)
            rule = f"must be a symbol of enum {fullname} ({', '.join(symbols)})"
            self.namespace[table + "_rule"] = rule
        return [
            f"{pad}try:",
            f"{pad}    e = {table}[{var}]",
            f"{pad}except (KeyError, TypeError):",  # TypeError: unhashable
            f"{pad}    e = _enum({table}, {var}, {table}_rule)",
            f"{pad}buf += e",
        ]

    def emit_array(self, node: dict[str, Any], var: str, depth: int) -> list[str]:
        pad = "    " * depth
        items, index, item = f"items{depth}", f"i{depth}", f"x{depth}"
        return [
            f"{pad}if type({var}) is tuple or type({var}) is list:",
            f"{pad}    {items} = {var}",
            f"{pad}else:",
            f"{pad}    {items} = _array_items({var})",
            f"{pad}if {items}:",
            f"{pad}    n = len({items})",
            f"{pad}    buf += _SMALL[n] if n < {_SMALL_LIMIT} else _length(n)",
            f"{pad}    for {index}, {item} in enumerate({items}):",
            f"{pad}        try:",
            *self.emit(node["items"], item, depth + 3),
            f"{pad}        except _Misfit as misfit:",
            f"{pad}            misfit.path.append(f'[{{{index}}}]')",
            f"{pad}            raise",
            f"{pad}buf.append(0)",
        ]

    def emit_map(self, node: dict[str, Any], var: str, depth: int) -> list[str]:
        pad = "    " * depth
        keys, key, item = f"keys{depth}", f"k{depth}", f"x{depth}"
        return [
            f"{pad}{keys} = _map_keys({var})",
            f"{pad}if {keys}:",
            f"{pad}    n = len({keys})",
            f"{pad}    buf += _SMALL[n] if n < {_SMALL_LIMIT} else _length(n)",
            f"{pad}    for {key} in {keys}:",
            f"{pad}        try:",
            *self.emit_primitive("string", key, pad + "            "),
            f"{pad}            {item} = {var}[{key}]",
            *self.emit(node["values"], item, depth + 3),
            f"{pad}        except _Misfit as misfit:",
            f"{pad}            misfit.path.append(f'[{{{key}}}]')",
            f"{pad}            raise",
            f"{pad}buf.append(0)",
        ]

    def emit_union(self, branches: list[Any], var: str, depth: int) -> list[str]:
        pad = "    " * depth
        resolved = [self.resolve(branch) for branch in branches]
        if len(resolved) == 2 and "null" in resolved:
            null = resolved.index("null")
            other = resolved[1 - null]
            return [
                f"{pad}if {var} is None:",
                f"{pad}    buf += {_varint(null << 1)!r}",
                f"{pad}else:",
                f"{pad}    buf += {_varint((1 - null) << 1)!r}",
                *self.emit(other, var, depth + 1),
            ]
        by_type: dict[type, tuple[bytes, Any]] = {}
        for position, branch in enumerate(resolved):
            writer = None if branch == "null" else self.function(branch)
            for t in self.types(branch):
                if t in by_type:
                    raise Unsupported(f"union: two branches accept {t.__name__}")
                by_type[t] = (_varint(position << 1), writer)
        names = ", ".join(t.__name__ for t in by_type)
        rule = f"is not part of the schema (expected one of {names})"
        table = self.name("_branches")
        # Writers are functions defined later: ``load`` binds them after exec.
        self.namespace[table] = by_type
        self.unions.append(table)
        self.namespace[table + "_rule"] = rule
        return [
            f"{pad}u = {table}.get(type({var}))",
            f"{pad}if u is None:",
            f"{pad}    u = _union({table}, {var}, {table}_rule)",
            f"{pad}buf += u[0]",
            f"{pad}if u[1] is not None:",
            f"{pad}    u[1](buf, {var})",
        ]

    def load(self) -> dict[str, Any]:
        """Execute the generated functions; the namespace holding them."""
        code = compile(self.source(), "<rolebus.wal.fastenc>", "exec")
        exec(code, self.namespace)
        for table in self.unions:
            self.namespace[table] = {
                t: (tag, None if writer is None else self.namespace[writer])
                for t, (tag, writer) in self.namespace[table].items()
            }
        return self.namespace

    def source(self) -> str:
        return "\n\n\n".join(self.functions) + "\n"


def _generate(version: schema.SchemaVersion) -> tuple[_Generator, str]:
    generator = _Generator(CLASSES)
    root = generator.record(version.parsed)
    if generator.record_class(version.parsed) is not Envelope:
        raise Unsupported(f"the top-level record is {version.parsed['name']}, not Envelope")
    return generator, root


def source(version: schema.SchemaVersion | None = None) -> str:
    """The generated writer code for ``version`` (default: current), for reading/debugging."""
    return _generate(version or schema.current())[0].source()


def build(version: schema.SchemaVersion) -> Encoder:
    """The encoder of ``Envelope`` under ``version`` (``Unsupported`` if it cannot be built)."""
    generator, root = _generate(version)
    write = generator.load()[root]
    header = version.header
    where = f"does not fit the Avro schema v{version.version}"

    def encode(envelope: Envelope) -> bytes:
        buf = bytearray(header)
        try:
            write(buf, envelope)
        except _Misfit as misfit:
            if isinstance(envelope, Envelope):
                what = f"event {envelope.event_id} ({envelope.event_type})"
            else:
                what = f"{type(envelope).__name__} value"
            path = misfit.where()
            detail = f"{path} {misfit.rule}" if path else misfit.rule
            raise SchemaError(f"{what}: {where}: {detail}") from None
        return bytes(buf)

    return encode


@functools.cache
def current() -> Encoder | None:
    """The encoder for the current schema, or None when it uses an unsupported construct."""
    try:
        return build(schema.current())
    except Unsupported:
        return None
