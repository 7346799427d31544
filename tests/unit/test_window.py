"""The dedupe window keeps at least the last ``size`` ids, boundedly many."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from rolebus.streams.core.window import MAX_CHUNK, EventWindow, chunk_for


def _ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=i + 1, version=4) for i in range(n)]


@given(size=st.integers(1, 300), added=st.integers(0, 900))
def test_holds_the_last_size_ids_and_a_bounded_number(size: int, added: int) -> None:
    ids = _ids(added)
    window = EventWindow.of(*ids, size=size)
    kept = set(window)
    assert set(ids[-size:]) <= kept
    assert len(window) == len(kept) < size + 2 * chunk_for(size)
    assert all(i in window for i in ids[-size:])
    assert all((i in window) == (i in kept) for i in ids)


def test_small_window_is_exact_and_large_one_is_chunked() -> None:
    ids = _ids(10)
    # chunks of 3: {7, 8, 9} is the one full chunk kept, 10 opens the next
    assert list(EventWindow.of(*ids, size=3)) == ids[-4:]
    assert list(EventWindow.of(*ids[:5], size=3)) == ids[:5]
    big = EventWindow.of(*_ids(1000), size=1000)
    assert all(len(chunk) == MAX_CHUNK for chunk in big.full)
    assert len(big.tail) < MAX_CHUNK


def test_same_ids_same_window_and_old_windows_unchanged() -> None:
    ids = _ids(200)
    first = EventWindow.of(*ids, size=100)
    assert EventWindow.of(*ids, size=100) == first
    before = EventWindow.of(*ids[:150], size=100)
    snapshot = (before.full, before.tail)
    before.add(uuid.uuid4(), 100)
    assert (before.full, before.tail) == snapshot  # frozen: adding builds a new window


def test_only_uuids_are_members() -> None:
    (one,) = _ids(1)
    window = EventWindow.of(one, size=5)
    assert one in window
    assert one.int not in window
    assert str(one) not in window
