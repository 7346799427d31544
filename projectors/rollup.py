"""Dashboard aggregates of one batch, planned purely: ``agg_minute`` and
``agg_rejections_minute`` increments from the NEW inputs only.

Rows are keyed by tenant, role and the minute of EVENT time (a rejection of
an undecodable record has no event: its minute is the rejection record's Kafka
time, and it counts under tenant '' and role ''). Projection lag is the
projection's wall time (passed in, never read here) minus the event time.

Invariants: increments are additive (the store adds them to what is there),
so the same inputs split over any batches sum to the same rows; only inputs
the store did not have before count (``Plan.only_new``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS, bucket_of
from rolebus.projectors.plan import Change, Rejection
from rolebus.wal.canonical import from_micros
from rolebus.wal.events import (
    Author,
    CommitRequested,
    MessageAppended,
    PersonaUpdated,
    RoleActivated,
    RoleArchived,
    RoleCreated,
    RoleDeleted,
    RoleForked,
    RoleResumed,
    RoleSuspended,
    RolledBack,
)

_COUNTED: Final[dict[type, str]] = {
    RoleCreated: "created", RoleActivated: "activated", RoleSuspended: "suspended",
    RoleResumed: "resumed", RoleArchived: "archived", RoleDeleted: "deleted",
    RoleForked: "forked", RolledBack: "rollbacks", CommitRequested: "commits_requested",
    PersonaUpdated: "persona_updates",
}  # fmt: skip

COUNT_COLUMNS: Final[tuple[str, ...]] = (
    "events", "msg_user", "msg_assistant", "msg_system", "msg_tool", "tokens_in",
    "tokens_out", "flag_hallucination", "flag_refusal", "flag_error", "flag_tool_error",
    "flag_safety", "created", "activated", "suspended", "resumed", "archived", "deleted",
    "forked", "rollbacks", "commits_requested", "persona_updates", "rejections", "lag_ms_sum",
    "lag_count",
)  # fmt: skip
"""The additive bigint columns of ``agg_minute`` (besides lag_ms_max and latency_hist)."""

Key = tuple[str, str, datetime]


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


@dataclass
class MinuteAgg:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_COLUMNS, 0))
    lag_ms_max: int = 0
    latency_hist: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))

    def add(self, column: str, n: int = 1) -> None:
        self.counts[column] += n


def _message(agg: MinuteAgg, p: MessageAppended) -> None:
    agg.add(f"msg_{p.author.value}")
    agg.add("tokens_in", p.tokens_in)
    agg.add("tokens_out", p.tokens_out)
    for flag in p.flags:
        agg.add(f"flag_{flag.value}")
    if p.author is Author.ASSISTANT and p.latency_ms is not None:
        agg.latency_hist[bucket_of(p.latency_ms)] += 1


def plan_minutes(
    changes: Iterable[Change], rejections: Iterable[Rejection], projected_at: datetime
) -> dict[Key, MinuteAgg]:
    """Increments per (tenant, role, minute) for NEW changes and rejections."""
    out: dict[Key, MinuteAgg] = {}
    for c in changes:
        r = c.record
        at = from_micros(r.occurred_at_us)
        agg = out.setdefault((r.tenant_id, r.role_id, minute_of(at)), MinuteAgg())
        agg.add("events")
        payload = c.envelope.payload
        if isinstance(payload, MessageAppended):
            _message(agg, payload)
        elif type(payload) in _COUNTED:
            agg.add(_COUNTED[type(payload)])
        lag = max(0, (projected_at - at) // timedelta(milliseconds=1))
        agg.add("lag_ms_sum", lag)
        agg.add("lag_count")
        agg.lag_ms_max = max(agg.lag_ms_max, lag)
    for j in rejections:
        key = (j.record.tenant_id or "", j.record.role_id or "", minute_of(j.seen_at))
        out.setdefault(key, MinuteAgg()).add("rejections")
    return out


def plan_rejection_minutes(rejections: Iterable[Rejection]) -> dict[tuple[Key, str], int]:
    """Counts per ((tenant, role, minute), reason) for NEW rejections."""
    out: dict[tuple[Key, str], int] = {}
    for j in rejections:
        r = j.record
        key = ((r.tenant_id or "", r.role_id or "", minute_of(j.seen_at)), r.reason)
        out[key] = out.get(key, 0) + 1
    return out
