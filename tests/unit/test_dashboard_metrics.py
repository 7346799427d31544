"""/metrics families from a store snapshot: OTel names, Prometheus translation."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from rolebus.projectors.aggregates import LATENCY_BUCKETS_MS
from rolebus.projectors.dashboard_sql import RoleTotals, TenantNow
from rolebus.projectors.metrics import StoreCollector, by_tenant, latency_buckets

HIST = [0] * len(LATENCY_BUCKETS_MS)
HIST[LATENCY_BUCKETS_MS.index(500)] = 3
HIST[-1] = 1
NOVA = RoleTotals(
    "acme",
    "r-nova",
    "gpt-x",
    {"events": 9, "msg_assistant": 4, "msg_user": 5, "tokens_in": 70, "tokens_out": 90,
     "flag_hallucination": 1, "created": 1, "rollbacks": 2, "lag_ms_sum": 900, "lag_count": 9},
    HIST,
    {"duplicate_event": 2},
)  # fmt: skip
NOW = [TenantNow("acme", 250, {"active": 1})]


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector([NOVA], NOW))
    return reg


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry()).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_latency_buckets_are_cumulative_seconds_with_inf_last() -> None:
    buckets = latency_buckets([1, 2])
    assert buckets[:2] == [("0.005", 1.0), ("0.01", 3.0)]
    assert buckets[-1] == ("+Inf", 3.0)
    assert len(buckets) == len(LATENCY_BUCKETS_MS)


def test_default_exposition_uses_the_otel_to_prometheus_names() -> None:
    got = samples()
    role = {("rolebus_tenant_id", "acme"), ("rolebus_role_id", "r-nova")}
    model = role | {("gen_ai_request_model", "gpt-x")}
    chat = model | {("gen_ai_operation_name", "chat")}
    bucket = "gen_ai_client_operation_duration_seconds_bucket"
    assert got[(bucket, frozenset(chat | {("le", "0.5")}))] == 3
    assert got[(bucket, frozenset(chat | {("le", "60.0")}))] == 3
    assert got[(bucket, frozenset(chat | {("le", "+Inf")}))] == 4
    tokens = chat | {("gen_ai_token_type", "output")}
    assert got[("gen_ai_client_token_usage_sum", frozenset(tokens))] == 90
    assert got[("gen_ai_client_token_usage_count", frozenset(tokens))] == 4
    assert got[("rolebus_events_total", frozenset(model))] == 9
    flagged = model | {("rolebus_flag", "hallucination")}
    assert got[("rolebus_messages_flagged_total", frozenset(flagged))] == 1
    reason = model | {("rolebus_rejection_reason", "duplicate_event")}
    assert got[("rolebus_rejections_total", frozenset(reason))] == 2
    assert got[("rolebus_projection_lag_seconds_sum", frozenset(model))] == 0.9
    assert got[("rolebus_projection_lag_seconds_count", frozenset(model))] == 9
    tenant = frozenset({("rolebus_tenant_id", "acme")})
    assert got[("rolebus_projection_lag_max_seconds", tenant)] == 0.25
    assert got[("rolebus_rollbacks_total", frozenset(model))] == 2
    # No invented latency sum: the store keeps bucket counts only.
    assert not any(name == "gen_ai_client_operation_duration_seconds_sum" for name, _ in got)


def test_a_utf8_scraper_gets_the_dotted_names() -> None:
    encoder, content_type = choose_encoder("text/plain;version=1.0.0;escaping=allow-utf-8")
    text = encoder(registry()).decode()
    assert "escaping=allow-utf-8" in content_type
    assert '{"gen_ai.client.operation.duration_seconds_bucket",' in text
    assert '"gen_ai.token.type"="input"' in text


def test_by_tenant_sums_roles_per_tenant_and_model() -> None:
    other = RoleTotals("acme", "r-orion", "gpt-x", {"events": 1}, [1], {"duplicate_event": 1})
    third = RoleTotals("acme", "r-vega", "other", {"events": 5}, HIST, {})
    merged = by_tenant([NOVA, other, third])
    assert [(t.tenant, t.role, t.model) for t in merged] == [
        ("acme", "", "gpt-x"),
        ("acme", "", "other"),
    ]
    assert merged[0].counts["events"] == 10
    assert merged[0].hist[0] == 1 and sum(merged[0].hist) == sum(HIST) + 1
    assert merged[0].rejections_by_reason == {"duplicate_event": 3}
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector([NOVA, other, third], NOW, by_role=False))
    text = generate_latest(reg).decode()
    assert "rolebus_role_id" not in text
    assert (
        'rolebus_events_total{gen_ai_request_model="gpt-x",rolebus_tenant_id="acme"} 10.0' in text
    )
