"""The metric names Gatehouse exposes, as a scrape shows them, for the deploy/ tests.

MUST MATCH server/metrics.py (branch `metrics`: `SERIES` and `Metrics.__init__`). Written
out here until that branch is merged; at the merge, derive `EXPOSED` from
`gatehouse.server.metrics` instead (counters: `Series.name` + `_total`; gauges as they are;
the histograms' `_bucket`, `_sum`, `_count`), so a renamed metric fails these tests.
"""

from __future__ import annotations

# Counters as named in code; prometheus_client exposes them with `_total`.
COUNTERS = frozenset(
    {
        "grpc_server_handled",
        "gatehouse_decisions",
        "gatehouse_admission_shed",
        "gatehouse_auth_refused",
        "gatehouse_auth_rejected",
        "gatehouse_argon2_verifications",
        "gatehouse_cache_requests",
        "gatehouse_single_flight_merges",
        "gatehouse_l1_below_floor",
        "gatehouse_unconfirmed_loads",
        "gatehouse_stale_refusals",
        "gatehouse_redis_errors",
        "gatehouse_tenant_events_applied",
        "gatehouse_tenant_event_gaps",
        "gatehouse_tenant_events_unreadable",
        "gatehouse_relay_heartbeats_received",
        "gatehouse_staleness_confirmations",
        "gatehouse_blind_refreshes",
        "gatehouse_relay_published",
        "gatehouse_relay_heartbeats",
        "gatehouse_postgres_errors",
        "gatehouse_idempotency_replays",
    }
)

GAUGES = frozenset(
    {
        "gatehouse_admission_in_flight",
        "gatehouse_admission_limit",
        "gatehouse_auth_pending",
        "gatehouse_confirmed_age_seconds",
        "gatehouse_l2_circuit_open",
        "gatehouse_relay_backlog_rows",
        "gatehouse_relay_backlog_oldest_seconds",
        "gatehouse_postgres_pool_connections",
        "gatehouse_postgres_pool_max_connections",
        "gatehouse_health_serving",
        "gatehouse_build_info",
    }
)

HISTOGRAMS = frozenset(
    {
        "grpc_server_handling_seconds",
        "gatehouse_tenant_event_lag_seconds",
        "gatehouse_relay_publish_seconds",
    }
)

# Prometheus' own, per target.
SCRAPE = frozenset({"up"})

EXPOSED = frozenset(
    {f"{name}_total" for name in COUNTERS}
    | GAUGES
    | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | SCRAPE
)
