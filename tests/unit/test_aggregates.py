"""Latency bucket boundaries of the dashboard aggregates."""

from __future__ import annotations

import math

from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS, bucket_of


def test_buckets_are_increasing_and_open_ended() -> None:
    assert list(LATENCY_BUCKETS_MS) == sorted(set(LATENCY_BUCKETS_MS))
    assert LATENCY_BUCKETS_MS[-1] == math.inf


def test_bucket_of_counts_the_upper_bound_inclusively() -> None:
    assert bucket_of(0) == 0
    assert bucket_of(5) == 0
    assert bucket_of(5.1) == 1
    assert bucket_of(1_000) == LATENCY_BUCKETS_MS.index(1_000)
    assert bucket_of(10**9) == len(LATENCY_BUCKETS_MS) - 1
