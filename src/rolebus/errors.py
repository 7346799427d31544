"""The error tree: one root, a few families, each message naming the object,
the rule and the fix. Adapters translate library errors with ``raise ... from``."""

from __future__ import annotations


class RolebusError(Exception):
    """Root of every error rolebus raises on purpose."""


class ConfigError(RolebusError):
    """A setting is missing or invalid; the message names the setting."""


class StackError(RolebusError):
    """The local stack could not be started, stopped or inspected."""


class SchemaError(RolebusError):
    """An event does not fit the Avro contract or an invariant of its fields."""


class ValidationError(SchemaError):
    """Client-side validation refused an event before anything was sent.

    ``field`` is the dotted path of the offending field, ``rule`` the rule it broke.
    """

    def __init__(self, field: str, rule: str, value: object = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {rule} (got {shown})")


class DecodeError(SchemaError):
    """Bytes from the log could not be decoded (garbage, truncated, unknown schema)."""


class FoldError(RolebusError):
    """An invariant of the fold was broken (a bug or a corrupt log, never user input)."""


class TransportError(RolebusError):
    """Kafka could not be reached or refused a request."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class StoreError(RolebusError):
    """PostgreSQL could not be reached or refused a statement."""


class EmbeddingError(RolebusError):
    """An embedding provider could not load or could not embed a batch.

    ``retriable``: the same call may succeed later (timeout, 5xx, refused connection).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable
