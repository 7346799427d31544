"""Dashboard aggregates: the shared definitions of ``agg_minute``.

Assistant latencies are counted per minute in fixed buckets, so percentiles
over any time window come from summed histograms (never from scanning every
message). ``latency_hist[i]`` counts latencies ``<= LATENCY_BUCKETS_MS[i]``
and above the previous bound; the last bucket has no upper bound.

Invariants: the bounds are strictly increasing and never change once data
exists (a change needs a new column and a rebuild); ``bucket_of`` is total.
"""

from __future__ import annotations

import bisect
import math
from typing import Final

LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = (
    5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000,
    4_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 60_000, math.inf,
)  # fmt: skip
"""Upper bounds (ms) of the latency histogram buckets; the last is open."""


def bucket_of(latency_ms: float) -> int:
    """Index of the bucket that counts ``latency_ms``."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
