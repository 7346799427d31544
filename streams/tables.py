"""The worker's faust tables: ``roles`` (role id -> RoleState) and ``commits``
(commit id -> Commit), in memory, recovered from their changelog topics.

Both are co-partitioned with the WAL: an entry is written to the changelog
partition of the WAL record that produced it (explicit partition, not the
key's hash), so whoever owns WAL partition p recovers exactly the roles of p
and every commit of those roles; a rollback only ever looks up commits of its
own role, hence of its own partition.

Values are decoded lazily: recovery stores the changelog bytes as
``Encoded`` and a value is decoded on first use, so replaying many versions
of a key costs one decode, not one per version.

Invariants: memory is updated only after the changelog record was handed to
the producer, so memory never holds a value the changelog will not hold once
the producer flushes (faust flushes before it commits offsets and on
rebalance); values are immutable (frozen dataclasses), so sharing them is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import faust
from faust.serializers.codecs import Codec

from rolebus.streams.commits import Commit
from rolebus.streams.serde import commit_from_record, commit_record, decode_state, encode_state
from rolebus.streams.state import RoleState
from rolebus.wal import records
from rolebus.wal.events import CommitId, RoleId

V = TypeVar("V")


class Encoded:
    """A changelog value not decoded yet."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class _LazyCodec(Codec):
    """faust codec: ``dumps`` encodes a value, ``loads`` defers decoding."""

    def __init__(self, encode: Callable[[Any], bytes], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encode = encode

    def _dumps(self, obj: Any) -> bytes:
        return obj if isinstance(obj, bytes) else self._encode(obj)

    def _loads(self, s: bytes) -> Any:
        return Encoded(s)

    def clone(self, *children: Any) -> Any:  # pragma: no cover - faust never clones these
        raise NotImplementedError("rolebus table codecs are not chainable")


def _encode_commit(commit: Commit) -> bytes:
    return records.encode(commit_record(commit))


def _decode_commit(raw: bytes) -> Commit:
    return commit_from_record(records.decode_commit(raw))


class Store(Generic[V]):
    """Typed access to one table: lazy decode on read; writes are split in
    ``encode`` (the changelog record, sent by the caller with an explicit
    partition) and ``remember`` (memory), see ``rolebus.streams.pipeline``."""

    def __init__(self, table: Any, codec: _LazyCodec, decode: Callable[[bytes], V]) -> None:
        self.table = table
        self.codec = codec
        self._decode = decode

    @property
    def _data(self) -> Any:
        # The store is created on first access, inside the worker's running loop.
        return self.table.data

    @property
    def changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def get(self, key: str, /) -> V | None:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return None
        if isinstance(value, Encoded):
            value = self._decode(value.raw)
            data[key] = value
        return value  # type: ignore[no-any-return]

    def encode(self, key: str, value: V) -> tuple[bytes, bytes]:
        """The changelog record (key, value) of an entry, as faust's recovery reads it."""
        return json.dumps(key).encode(), self.codec.dumps(value)

    def remember(self, key: str, value: V) -> None:
        self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)


class RoleStore(Store[RoleState]):
    """Role states by role id, plus one marker per partition (an int key, so no
    role id can collide with it): the first WAL offset the stored states of
    that partition do not reflect yet."""

    def state(self, role_id: RoleId, /) -> RoleState | None:
        return self.get(role_id)

    def marker(self, partition: int) -> int | None:
        try:
            value = self._data[partition]
        except KeyError:
            return None
        if isinstance(value, Encoded):
            value = int(value.raw)
            self._data[partition] = value
        return value if isinstance(value, int) else None

    def encode_marker(self, partition: int, next_offset: int) -> tuple[bytes, bytes]:
        return json.dumps(partition).encode(), str(next_offset).encode()

    def remember_marker(self, partition: int, next_offset: int) -> None:
        self._data[partition] = next_offset

    def __len__(self) -> int:
        return sum(1 for key in self._data if isinstance(key, str))  # markers excluded


class CommitStore(Store[Commit]):
    """A ``CommitLookup`` over the commits of this worker's partitions."""

    def get(self, commit_id: CommitId | str, /) -> Commit | None:
        return super().get(commit_id)


def _table(
    app: faust.App, name: str, codec: Codec, partitions: int, configs: dict[str, str]
) -> Any:
    table_class: Any = app.conf.Table  # faust types it as a special form
    table = table_class(
        app,
        name=name,
        beacon=app.tables.beacon,
        partitions=partitions,
        extra_topic_configs=configs,
        help=f"rolebus {name}, recovered from its changelog",
    )
    table.key_serializer = "json"
    table.value_serializer = codec
    return app.tables.add(table)  # the changelog topic is created here, with the codec


def role_table(app: faust.App, partitions: int, configs: dict[str, str]) -> RoleStore:
    codec = _LazyCodec(encode_state)
    return RoleStore(_table(app, "roles", codec, partitions, configs), codec, decode_state)


def commit_table(app: faust.App, partitions: int, configs: dict[str, str]) -> CommitStore:
    codec = _LazyCodec(_encode_commit)
    return CommitStore(_table(app, "commits", codec, partitions, configs), codec, _decode_commit)


def changelog_name(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"
