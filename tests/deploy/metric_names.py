"""The metric names Gatehouse exposes, as a scrape shows them, for the deploy/ tests:
read from gatehouse.server.metrics itself, so a renamed or removed metric fails the rule
and dashboard tests instead of leaving an alert that can never fire."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gatehouse.server.metrics import SERIES, Metrics


def _made_at_start() -> dict[str, str]:
    """{name: type} of the metrics `Metrics()` makes itself (the RPC, lag, publish and
    build series), as its registry describes them."""
    metrics = Metrics()
    registry: CollectorRegistry = metrics.registry
    return {family.name: family.type for family in registry.collect()}


def _exposed() -> frozenset[str]:
    kinds = _made_at_start()
    kinds.update({series.name: series.kind for series in SERIES.values() if series is not None})
    names: set[str] = set()
    for name, kind in kinds.items():
        if kind == "counter":
            names.add(f"{name.removesuffix('_total')}_total")
        elif kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(name)
    return frozenset(names)


# Prometheus' own, per target.
SCRAPE = frozenset({"up"})

EXPOSED = _exposed() | SCRAPE
