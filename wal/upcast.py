"""Upcasters: what an event written under an older schema version means today.

Avro schema resolution (writer schema found by fingerprint, read into the
current reader schema) fixes the SHAPE of old events: added fields take their
defaults, unknown enum symbols the enum default. It cannot fix MEANING: if a
field kept its name and type but a version changed what its value stands for,
old values must be converted. That is an upcaster's job (schemas/EVOLUTION.md).

An upcaster is a pure function on the resolved Avro datum (current shape,
payload in tuple notation ``(record name, fields)``), registered under the
writer version whose meaning it converts FROM: ``steps[N]`` takes version N's
meaning to version N+1's. ``codec.decode`` applies the steps of every version
from the writer's up to the current one, in order, after resolution and
before the ``Envelope`` is built: every event, old or new, takes that one path.

Invariants: upcasters never read the clock or anything but the datum (replay
must stay deterministic); an event written with the current version is never
touched; upcasting is not undone on export (the exported original bytes keep
the old meaning, the exported event carries the current one).

The shipped table is empty: v1 -> v2 added ``tool_call`` and the ``safety``
flag but changed no existing field's meaning (EVOLUTION.md history).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

Datum = dict[str, Any]
Upcast = Callable[[Datum], Datum]


@dataclass(frozen=True)
class Upcasters:
    """A registry of upcasters by writer version (see the module docstring)."""

    steps: Mapping[int, tuple[Upcast, ...]] = field(default_factory=dict)
    """Version N -> conversions from version N's meaning to version N+1's."""

    def chain(self, writer: int, current: int) -> tuple[Upcast, ...]:
        """The conversions for an event written with ``writer``, in order."""
        return tuple(step for n in range(writer, current) for step in self.steps.get(n, ()))

    def apply(self, writer: int, current: int, datum: Datum) -> Datum:
        for step in self.chain(writer, current):
            datum = step(datum)
        return datum


SHIPPED: Final = Upcasters(MappingProxyType({}))
"""What ``codec.decode`` applies: no kept version changed a field's meaning yet."""


def payload_step(record: str, convert: Callable[[Datum], Datum]) -> Upcast:
    """An upcaster that converts one payload record type (full name) and leaves
    every other event as it is."""

    def step(datum: Datum) -> Datum:
        name, fields = datum["payload"]
        if name != record:
            return datum
        return {**datum, "payload": (name, convert(dict(fields)))}

    return step
