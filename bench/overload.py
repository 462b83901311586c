"""Overload scenarios (issue 14 items 3 and 4; DESIGN.md "Faults it must survive").

    overload    the check-hit ceiling (h2load closed loop, c32 m1, 5 s), an unloaded point at
                a quarter of it, then --duration (30 s when the only scenario) at 2x it
                (--rate overrides the offered rate): admitted p99 against the unloaded p99,
                shed fraction, RSS growth, UNKNOWN count
    burst       on an idle process, --repeat rounds of B simultaneous CheckAccess calls (one
                Python client, one connection; B = 16, 32, 64, 128, 256): how many the
                pending-call bound refuses, and the answered calls' p99, per target
    auth-flood  made-up `gh_` admin keys at --rate (300/s) from one address beside 10
                legitimate admin calls/s (a key verified once, before the flood): the
                legitimate calls' p99 and codes, the flood's codes, RSS growth

What h2load cannot see, and how it is covered: h2load logs HTTP status only, and a shed
call is an HTTP 200 whose gRPC status (RESOURCE_EXHAUSTED) is in a trailers-only response.
So the shed count is the number of answers that carried no message (`inferred`, see
bench/h2load.py), and each code's share and the latency of admitted calls come from a
Python sampler sending the same request beside h2load (`--sample-rate`, at least 200/s
here): its answered calls are the "admitted" ones. The unloaded p99 is measured the same
way (sampler beside h2load at a quarter of the ceiling), so the ratio compares like with
like, client overhead included.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from typing import Any

import grpc

from bench import h2load
from bench.scenarios import CHECK, Harness, Verifier, rss_series, rss_summary, warm
from bench.stats import latency_summary
from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc

SAMPLE_RATE = 200.0
GET_TENANT = "/gatehouse.v1.AdminService/GetTenant"


def _split_shed(point: dict[str, Any]) -> dict[str, Any]:
    """Take the expected refusals out of a point's errors (the rest stay errors)."""
    errors = point["errors"]
    inferred = errors.pop("GRPC_INFERRED_FROM_DATA_BYTES", 0)
    # Refused in Python (RESOURCE_EXHAUSTED) or by grpc's core past GATEHOUSE_MAX_PENDING_CALLS
    # (the stream reset: CANCELLED at the client, which never cancels its own calls here).
    sampled_shed = errors.pop("SAMPLED_RESOURCE_EXHAUSTED", 0) + errors.pop("SAMPLED_CANCELLED", 0)
    sampled = point["verification"]["sampled"] or 1
    point["error_count"] = sum(errors.values())
    point["shed"] = {
        "h2load_unanswered": inferred,
        "h2load_fraction": round(inferred / point["requests"], 4) if point["requests"] else 0.0,
        "sampled_refused": sampled_shed,
        "sampled_fraction": round(sampled_shed / sampled, 4),
    }
    point["unknown_sampled"] = point["verification"]["codes"].get("UNKNOWN", 0)
    return point


async def overload(h: Harness) -> list[dict[str, Any]]:
    """Each of `--targets` in turn: the empty-handler baseline under the same pending-call bound
    as Gatehouse (`GATEHOUSE_MAX_PENDING_CALLS` from `--gh-env`, else the default), so the
    admitted-p99 ratio can be read against what grpc.aio itself does at 2x its own ceiling."""
    points: list[dict[str, Any]] = []
    for name in h.o.targets:
        points += await _overload_one(h, name)
    by_target = {p["target"]: p["overload"] for p in points if "overload" in p}
    base, gh = by_target.get("baseline"), by_target.get("gatehouse")
    if base and gh and base["admitted_vs_unloaded_p99"] and gh["admitted_vs_unloaded_p99"]:
        ratio = round(gh["admitted_vs_unloaded_p99"] / base["admitted_vs_unloaded_p99"], 2)
        gh["ratio_vs_baseline_ratio"] = ratio
        h.log(f"  overload: Gatehouse's admitted/unloaded p99 ratio ÷ the baseline's: {ratio}")
    return points


def _pending_bound(h: Harness) -> int:
    from gatehouse.settings import Settings  # the default as `gatehouse serve` has it

    given = h.o.gh_env.get("GATEHOUSE_MAX_PENDING_CALLS")
    return int(given) if given is not None else Settings().max_pending_calls


async def _overload_one(h: Harness, name: str) -> list[dict[str, Any]]:
    assert h.data is not None
    top = h.data.top_check()
    baseline = name == "baseline"
    verifier = Verifier("check", None if baseline else top.allowed)
    target = await h.start(name, extra_args=["--max-pending", str(_pending_bound(h))] if baseline else None)
    try:
        await warm(target.address, CHECK, [top.body])
        ceiling = await h2load.saturate(
            h.h2load_path, target.address, CHECK, top.body, seconds=5, work_dir=h.work_dir, tag=f"overload-ceiling-{name}"
        )
        h.log(f"  {name} ceiling (closed loop c32 m1): {ceiling:,.0f}/s")
        low = round(ceiling / 4, -2)
        unloaded = await h.h2_point(
            target, CHECK, top.body, verifier, low, f"overload-unloaded-{name}", duration=10.0, sample_rate=SAMPLE_RATE
        )
        unloaded = _split_shed(unloaded)
        unloaded.update(scenario="overload-unloaded", repeat=0)
        rate = h.o.rate or round(2 * ceiling, -2)
        rss_before = target.rss_bytes()
        stop = asyncio.Event()
        rss = asyncio.create_task(rss_series(target, stop))
        loaded = await h.h2_point(target, CHECK, top.body, verifier, rate, f"overload-2x-{name}", sample_rate=SAMPLE_RATE)
        stop.set()
        series = await rss
        loaded = _split_shed(loaded)
        loaded.update(scenario="overload", repeat=0, rss=rss_summary(series, h.o.warmup))
        after_mb = max(b for _, b in series) / 2**20
        admitted, quiet = loaded["verification"]["ok_latency_ms"]["p99"], unloaded["verification"]["ok_latency_ms"]["p99"]
        loaded["overload"] = {
            "ceiling_rps": ceiling,
            "offered_rps": rate,
            "unloaded_rps": low,
            "pending_bound": _pending_bound(h),
            "admitted_p99_ms": admitted,
            "unloaded_p99_ms": quiet,
            "admitted_vs_unloaded_p99": round(admitted / quiet, 2) if quiet else None,
            "h2load_p99_all_ms": loaded["latency_ms"]["p99"],
            "h2load_p99_unloaded_ms": unloaded["latency_ms"]["p99"],
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_max_mb": round(after_mb, 1),
            "rss_growth_pct": round(100.0 * (after_mb * 2**20 - rss_before) / rss_before, 1),
            "unknown_sampled": loaded["unknown_sampled"],
        }
        h.log(f"  {name} overload: {loaded['overload']}  shed: {loaded['shed']}")
        return [unloaded, loaded]
    finally:
        await target.stop()


BURST_SIZES = (16, 32, 64, 128, 256)
BURST_ROUNDS_DEFAULT = 20


async def burst(h: Harness) -> list[dict[str, Any]]:
    """What the pending-call bound does to an ordinary burst (a page's fan-out of checks) on a
    process that is otherwise idle: the other side of the trade `overload` measures."""
    assert h.data is not None
    top = h.data.top_check()
    rounds = h.o.repeat if h.o.repeat > 1 else BURST_ROUNDS_DEFAULT
    points: list[dict[str, Any]] = []
    for name in h.o.targets:
        baseline = name == "baseline"
        target = await h.start(name, extra_args=["--max-pending", str(_pending_bound(h))] if baseline else None)
        try:
            await warm(target.address, CHECK, [top.body])
            async with grpc.aio.insecure_channel(target.address) as channel:
                call = channel.unary_unary(CHECK)
                await call(top.body, timeout=10.0)
                for size in BURST_SIZES:
                    codes: Counter[str] = Counter()
                    answered_ms: list[float] = []

                    async def one() -> None:
                        t0 = time.monotonic()
                        try:
                            await call(top.body, timeout=10.0)
                        except grpc.aio.AioRpcError as exc:
                            codes[exc.code().name] += 1
                            return
                        codes["OK"] += 1
                        answered_ms.append((time.monotonic() - t0) * 1000.0)

                    for _ in range(rounds):
                        await asyncio.gather(*(one() for _ in range(size)))
                        await asyncio.sleep(0.2)  # idle again before the next round
                    sent = size * rounds
                    refused = sent - codes["OK"]
                    point: dict[str, Any] = {
                        "scenario": "burst", "target": name, "repeat": 0, "offered_rps": float(size),
                        "achieved_rps": 0.0, "requests": sent, "latency_ms": latency_summary(answered_ms),
                        "errors": {c: n for c, n in codes.items() if c != "OK"}, "error_count": refused,
                        "pacing_ok": True, "server_cpu_pct": 0.0, "generator_cpu_pct": 0.0,
                        "burst": {
                            "size": size, "rounds": rounds, "pending_bound": _pending_bound(h),
                            "refused": refused, "refused_fraction": round(refused / sent, 4),
                        },
                    }
                    h.log(
                        f"  {name} burst {size} x {rounds} (bound {_pending_bound(h)}): refused {refused}/{sent} "
                        f"{dict(codes)}; answered p50 {point['latency_ms']['p50']:.2f} p99 {point['latency_ms']['p99']:.2f} ms"
                    )
                    points.append(point)
        finally:
            await target.stop()
    return points


async def auth_flood(h: Harness) -> list[dict[str, Any]]:
    """Wrong keys at --rate beside legitimate admin calls at 10/s, for --duration."""
    assert h.data is not None
    tenant_id = h.data.tenants[0].id
    flood_rate = h.o.rate or 300.0
    legit_rate = 10.0
    target = await h.start("gatehouse")
    try:
        async with grpc.aio.insecure_channel(target.address) as legit_channel, grpc.aio.insecure_channel(
            target.address
        ) as flood_channel:
            legit = admin_pb2_grpc.AdminServiceStub(legit_channel)
            flood = admin_pb2_grpc.AdminServiceStub(flood_channel)
            request = admin_pb2.GetTenantRequest(tenant_id=tenant_id)
            good = (("authorization", f"Bearer {h.admin_token}"),)
            await legit.GetTenant(request, metadata=good, timeout=10.0)  # verified once, before the flood
            rss_before = target.rss_bytes()
            stop = asyncio.Event()
            rss = asyncio.create_task(rss_series(target, stop))
            legit_ms: list[float] = []
            flood_ms: list[float] = []
            legit_codes: Counter[str] = Counter()
            flood_codes: Counter[str] = Counter()
            t_start = time.monotonic()
            measured_from = t_start + h.o.warmup
            end = measured_from + h.o.duration

            async def call(stub: Any, metadata: Any, codes: Counter[str], into: list[float]) -> None:
                t0 = time.monotonic()
                try:
                    await stub.GetTenant(request, metadata=metadata, timeout=30.0)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                if t0 >= measured_from:
                    into.append((time.monotonic() - t0) * 1000.0)

            async def open_loop(rate: float, make: Any) -> None:
                tasks, i = [], 0
                while True:
                    due = t_start + i / rate
                    if due >= end:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    tasks.append(asyncio.ensure_future(make()))
                    i += 1
                await asyncio.gather(*tasks)

            def wrong() -> Any:
                key = f"gh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
                return call(flood, (("authorization", f"Bearer {key}"),), flood_codes, flood_ms)

            await asyncio.gather(
                open_loop(legit_rate, lambda: call(legit, good, legit_codes, legit_ms)),
                open_loop(flood_rate, wrong),
            )
            stop.set()
            series = await rss
        wall = time.monotonic() - t_start
        after_mb = max(b for _, b in series) / 2**20
        point: dict[str, Any] = {
            "scenario": "auth-flood",
            "target": "gatehouse",
            "repeat": 0,
            "offered_rps": flood_rate,
            "achieved_rps": round(len(flood_ms) / h.o.duration, 1),
            "requests": len(legit_ms),
            "latency_ms": latency_summary(legit_ms),
            "flood_latency_ms": latency_summary(flood_ms),
            "legit_codes": dict(legit_codes),
            "flood_codes": dict(flood_codes),
            "errors": {f"LEGIT_{c}": n for c, n in legit_codes.items() if c != "OK"},
            "pacing_ok": True,
            "server_cpu_pct": 0.0,
            "generator_cpu_pct": 0.0,
            "wall_s": round(wall, 1),
            "rss": rss_summary(series, h.o.warmup),
            "rss_growth_pct": round(100.0 * (after_mb * 2**20 - rss_before) / rss_before, 1),
        }
        point["error_count"] = sum(point["errors"].values())
        h.log(
            f"  auth-flood {flood_rate:g}/s wrong keys + {legit_rate:g}/s legitimate: legitimate p50 "
            f"{point['latency_ms']['p50']:.2f} p99 {point['latency_ms']['p99']:.2f} max {point['latency_ms']['max']:.2f} ms "
            f"codes {dict(legit_codes)}; flood codes {dict(flood_codes)} p99 {point['flood_latency_ms']['p99']:.2f} ms; "
            f"RSS growth {point['rss_growth_pct']} %"
        )
        return [point]
    finally:
        await target.stop()
