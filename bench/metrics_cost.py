"""`metrics-cost`: what Prometheus metrics cost the hit path, metrics on against off.

Two Gatehouse servers from the same build run side by side, `--metrics-listen
127.0.0.1:<free>` (on: the RPC interceptor, the stats exporter, the /metrics thread) and
`--metrics-listen off`, and take turns (the order alternates each repeat), so a drift
in the machine's speed hits both alike:

* fixed rate: check-hit at `--rate` (2,000/s: below both ceilings, so CPU per call is
  comparable) `--repeat` times each; server CPU per call in µs (server CPU seconds over
  the measured window ÷ answers) and p99;
* ceiling: check-hit at rising `--rates` (default 2,000 … 5,000) per repeat until p99 >
  `--p99-limit-ms`, an error, or achieved < 95 % of offered; the highest good rate of each.

Goal (issue 15): on ≤ 5 % more server CPU per call than off, and the same ceiling
within noise. A scrape during the run (every second, as a Prometheus would) is included.
"""

from __future__ import annotations

import asyncio
import statistics
import urllib.request
from typing import Any

from bench.scenarios import CHECK, Harness, Verifier, past_limits, warm

DEFAULT_RATE = 2000.0
DEFAULT_CEILING_RATES = [2000.0, 3000.0, 4000.0, 5000.0, 5500.0, 6000.0, 6500.0, 7000.0]


async def _scraper(url: str, stop: asyncio.Event) -> int:
    """GET /metrics every second until `stop`: the load a Prometheus adds. Scrapes made."""
    scrapes = 0
    while not stop.is_set():
        try:
            await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
            scrapes += 1
        except OSError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass
    return scrapes


def _metrics_url(log_text: str) -> str | None:
    """From the "serving on ... (metrics: URL)" line."""
    for line in log_text.splitlines():
        if "(metrics: http://" in line:
            return line.split("(metrics: ", 1)[1].split(")")[0]
    return None


async def metrics_cost(h: Harness) -> list[dict[str, Any]]:
    assert h.data is not None
    o = h.o
    top = h.data.top_check()
    on = await h.start("gatehouse", ["--metrics-listen", "127.0.0.1:0"])
    on.name = "metrics-on"
    off = await h.start("gatehouse", ["--metrics-listen", "off"])
    off.name = "metrics-off"
    url = None
    for _ in range(50):
        url = _metrics_url(on.log_path.read_text(errors="replace"))
        if url:
            break
        await asyncio.sleep(0.1)
    h.log(f"  metrics-on scraped at {url}")
    points: list[dict[str, Any]] = []
    verifier = Verifier("check", top.allowed)
    stop = asyncio.Event()
    scraper = asyncio.create_task(_scraper(url, stop)) if url else None
    try:
        for target in (on, off):
            await warm(target.address, CHECK, [top.body])
        rate = o.rate or DEFAULT_RATE
        for r in range(o.repeat):
            for target in (on, off) if r % 2 == 0 else (off, on):
                point = await h.h2_point(target, CHECK, top.body, verifier, rate, f"metrics-cost-{target.name}-{r}")
                point.update(scenario="metrics-cost", repeat=r)
                points.append(point)
        rates = o.rates if o.rates and o.rates[0] != 1000 else DEFAULT_CEILING_RATES  # 1000: the sweep default
        for r in range(o.repeat):
            broken: set[str] = set()
            for rate in rates:
                for target in (on, off) if r % 2 == 0 else (off, on):
                    if target.name in broken:
                        continue
                    point = await h.h2_point(
                        target, CHECK, top.body, verifier, rate, f"metrics-ceiling-{target.name}-{rate:g}-{r}"
                    )
                    broke = past_limits(point, rate, o.p99_limit_ms)
                    point.update(scenario="metrics-ceiling", repeat=r, within_limits=not broke)
                    points.append(point)
                    if broke:
                        broken.add(target.name)
                if len(broken) == 2:
                    break
    finally:
        stop.set()
        scrapes = await scraper if scraper is not None else 0
        for target in (on, off):
            await target.stop()
    for p in points:
        p["server_cpu_us_per_call"] = (
            round(p["server_cpu_pct"] / 100.0 / p["achieved_rps"] * 1e6, 1) if p["achieved_rps"] else None
        )
    if points:
        points[-1]["scrapes_during_run"] = scrapes
    return points


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per repeat: CPU per call on ÷ off and ceilings; medians and ranges over repeats."""
    fixed = [p for p in points if p["scenario"] == "metrics-cost"]
    ceiling = [p for p in points if p["scenario"] == "metrics-ceiling"]
    repeats = sorted({p["repeat"] for p in fixed})
    rows = []
    for r in repeats:
        by = {p["target"]: p for p in fixed if p["repeat"] == r}
        row: dict[str, Any] = {"repeat": r}
        for name in ("metrics-on", "metrics-off"):
            if name in by:
                row[f"{name} cpu_us_per_call"] = by[name]["server_cpu_us_per_call"]
                row[f"{name} p99_ms"] = by[name]["latency_ms"]["p99"]
        for name in ("metrics-on", "metrics-off"):
            ok = [p["achieved_rps"] for p in ceiling if p["target"] == name and p["repeat"] == r and p["within_limits"]]
            row[f"{name} ceiling"] = max(ok, default=0.0)
        if row.get("metrics-off cpu_us_per_call"):
            row["cpu_on_vs_off"] = round(row["metrics-on cpu_us_per_call"] / row["metrics-off cpu_us_per_call"], 3)
        if row.get("metrics-off ceiling"):
            row["ceiling_on_vs_off"] = round(row["metrics-on ceiling"] / row["metrics-off ceiling"], 3)
        rows.append(row)
    out: dict[str, Any] = {"repeats": rows}
    for key in ("cpu_on_vs_off", "ceiling_on_vs_off"):
        values = [row[key] for row in rows if key in row]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| repeat | CPU µs/call on | off | on ÷ off | p99 ms on | off | ceiling on | off | on ÷ off |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["repeats"]:
        lines.append(
            f"| {row['repeat']} | {row.get('metrics-on cpu_us_per_call')} | {row.get('metrics-off cpu_us_per_call')} | "
            f"{row.get('cpu_on_vs_off')} | {row.get('metrics-on p99_ms')} | {row.get('metrics-off p99_ms')} | "
            f"{row.get('metrics-on ceiling'):,.0f} | {row.get('metrics-off ceiling'):,.0f} | {row.get('ceiling_on_vs_off')} |"
        )
    for key in ("cpu_on_vs_off", "ceiling_on_vs_off"):
        if key in result:
            s = result[key]
            lines.append(f"\n{key}: median {s['median']} [{s['min']}–{s['max']}]")
    return "\n".join(lines)
