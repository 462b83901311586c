"""Latency summaries of one measured point.

Percentiles are nearest-rank on the raw samples (no histogram bucketing): with at most a
few hundred thousand samples per point, sorting is cheaper than explaining bucket error.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


def nearest_rank(sorted_values: Sequence[float], pct: float) -> float:
    """The smallest sample with at least `pct` % of the samples at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float]:
    """p50 … p99.9, max and mean of latencies in milliseconds (rounded to µs)."""
    values = sorted(latencies_ms)
    out = {name: round(nearest_rank(values, pct), 3) for name, pct in PERCENTILES}
    out["max"] = round(values[-1], 3) if values else math.nan
    out["mean"] = round(sum(values) / len(values), 3) if values else math.nan
    return out


def send_lag_ms(starts_s: Sequence[float], rate: float) -> dict[str, float]:
    """How far the sender fell behind a perfectly even schedule at `rate`.

    `starts_s` are actual send times (sorted, seconds). Request i of the window was due at
    t0 + i/rate; lag_i = actual - due. Many connections at 100/s each do not interleave
    perfectly, so a healthy run shows lags within about one timer tick (~1 ms); a sender
    that cannot keep up (or a connection whose stream limit is full, so requests wait
    inside h2load) drifts: its lag grows without bound and hides latency from the log.
    """
    if len(starts_s) < 2:
        return {"p99": 0.0, "max": 0.0}
    t0 = starts_s[0]
    lags = sorted((s - t0 - i / rate) * 1000.0 for i, s in enumerate(starts_s))
    # Anchor on the median so a constant phase offset of the first sample reads as 0.
    mid = lags[len(lags) // 2]
    rel = [lag - mid for lag in lags]
    return {"p99": round(nearest_rank(rel, 99.0), 3), "max": round(rel[-1], 3)}
