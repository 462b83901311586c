"""What each scenario sends, at which rates, to which targets.

Every scenario runs the empty-handler baseline and Gatehouse in the same run, one after
the other at the same offered rate, so each report can give Gatehouse ÷ baseline.

    check-hit    CheckAccess on a warm L1, h2load, default 5,000/s
    check-miss   CheckAccess, every call a (tenant, subject) never asked before: L1 and L2
                 miss, Postgres answers; Python generator (bodies differ), default 1,000/s
    check-l2     CheckAccess over thousands of Zipf-chosen warm keys with the server's L1
                 cut to 16 entries (`--l1-max-entries 16`): answers come from Redis
    batch        CheckAccessBatch, 100 checks per call, h2load, default 50 calls/s
    config       GetTenantConfig, warm, h2load, default 2,000/s
    mixed        90 % CheckAccess + 9 % GetTenantConfig (two h2loads) + 1 % admin writes
                 (AddMember/RemoveMember from an in-process open-loop client, Gatehouse only)
    sweep        check-hit at rising rates until p99 > --p99-limit-ms, errors, or the
                 achieved rate falls under 95 % of offered: the throughput ceiling
    propagation  write committed → every sidecar answers the new data: 2 sidecars (one relay),
                 background writes at --rate (1,000/s) via the store, probes at --probe-rate
    overload     check-hit at 2x its measured ceiling: admitted p99 vs unloaded, shed, RSS
    burst        rounds of 16-256 simultaneous CheckAccess calls to an idle process: refused
                 by the pending-call bound, answered p99 (bench/overload.py)
    auth-flood   wrong admin keys at --rate (300/s) beside legitimate admin calls (bench/overload.py)
    envoy        GET through Envoy to a service, with and without the ext_authz filter asking
                 Gatehouse, beside the direct CheckAccess (bench/envoy_bench.py), default 1,000/s
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from bench import h2load, pygen
from bench.dataset import BenchStorage, Dataset, generate
from bench.stats import latency_summary
from bench.targets import Target, baseline_target, gatehouse_target
from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc, common_pb2

CHECK = "/gatehouse.v1.AccessService/CheckAccess"
BATCH = "/gatehouse.v1.AccessService/CheckAccessBatch"
CONFIG = "/gatehouse.v1.ConfigService/GetTenantConfig"

DEFAULT_RATES = {"envoy": 1000, "check-hit": 5000, "check-miss": 1000, "check-l2": 2000, "batch": 50, "config": 2000, "mixed": 5000, "propagation": 1000}
DEFAULT_SWEEP = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000, 14000, 16000]
SCENARIOS = (
    "check-hit", "check-miss", "check-l2", "batch", "config", "mixed", "sweep", "propagation", "overload", "burst",
    "auth-flood", "traces",
    "metrics-cost", "envoy",
)


@dataclass
class Options:
    scenarios: list[str]
    rate: float | None = None
    rates: list[float] = field(default_factory=lambda: list(DEFAULT_SWEEP))
    duration: float = 10.0
    warmup: float = 1.0
    repeat: int = 1
    tenants: int = 1000
    members: int = 20
    cold_members: int | None = None
    zipf_s: float = 1.1
    batch_size: int = 100
    distinct_keys: int = 5000
    gh_workers: int | None = None
    gh_args: list[str] = field(default_factory=list)
    gh_env: dict[str, str] = field(default_factory=dict)  # extra environment of every gatehouse serve
    traces_sampler_arg: float = 0.01  # `traces`: the traced variant's sampling ratio
    generator: str = "auto"
    py_workers: int = 2
    writer: str = "pgbench"
    sample_rate: float = 20.0
    p99_limit_ms: float = 10.0
    profile: bool = False
    profile_native: bool = False
    unix: bool = False
    targets: tuple[str, ...] = ("baseline", "gatehouse")
    # `--variant LABEL=ARGS`: target `gatehouse-LABEL` is Gatehouse started with ARGS too
    # (the same scenario and rates, in the same run: a setting's cost against it off).
    variants: dict[str, list[str]] = field(default_factory=dict)
    interleave: bool = False  # fixed-rate scenarios: all targets up, taking turns per repeat
    probe_rate: float = 10.0
    # `--caller-key`: every hot call of check-hit, batch and config (h2load) carries an
    # operator key's `authorization: Bearer` (what GATEHOUSE_CALLER_CREDENTIALS=required asks);
    # the baseline gets it too, so the same bytes reach every target.
    caller_key: bool = False


# --- verification: what h2load cannot see -------------------------------------------------


@dataclass
class Verifier:
    """Checks a target's answer to the one body h2load repeats: status, and for Gatehouse
    the content (allowed as expected, config of the right tenant)."""

    kind: str
    expected: Any  # None: status only (the baseline's constant answers are not data)

    def ok(self, answer: bytes) -> bool:
        return self.expected is None or pygen._answer_ok(self.kind, answer, self.expected)


async def sample(
    address: str, method: str, message: bytes, verifier: Verifier, rate_hz: float, stop: asyncio.Event, post: int,
    metadata: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Send `message` `rate_hz` times a second until `stop`, then `post` more; count outcomes."""
    codes: Counter[str] = Counter()
    ok_ms: list[float] = []  # latency of the calls answered, while `stop` is unset
    frame_bytes = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)

        async def one() -> None:
            nonlocal frame_bytes
            t0 = time.monotonic()
            try:
                answer = await call(message, timeout=5.0, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                return
            if not stop.is_set():
                ok_ms.append((time.monotonic() - t0) * 1000.0)
            frame_bytes = 5 + len(answer)
            codes["OK" if verifier.ok(answer) else "WRONG_ANSWER"] += 1

        while not stop.is_set() and rate_hz > 0:
            asyncio.ensure_future(one())
            try:
                await asyncio.wait_for(stop.wait(), 1.0 / rate_hz)
            except asyncio.TimeoutError:
                pass
        for _ in range(post):
            await one()
    return {
        "sampled": sum(codes.values()), "codes": dict(codes), "frame_bytes": frame_bytes,
        "ok_latency_ms": latency_summary(ok_ms),
    }


async def warm(
    address: str, method: str, bodies: list[bytes], concurrency: int = 32, metadata: tuple[tuple[str, str], ...] = ()
) -> None:
    """Ask every body once (closed loop), so caches hold what the measured run asks."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        queue = list(dict.fromkeys(bodies))

        async def drain() -> None:
            while queue:
                body = queue.pop()
                try:
                    await call(body, timeout=10.0, metadata=metadata)
                except grpc.aio.AioRpcError:
                    pass

        await asyncio.gather(*(drain() for _ in range(concurrency)))


# --- the harness ---------------------------------------------------------------------------


class Harness:
    def __init__(self, options: Options, log: Callable[[str], None] = print) -> None:
        self.o = options
        self.log = log
        self.storage = BenchStorage()
        self.operator_key = "gh_op_" + secrets.token_urlsafe(24)
        self.admin_token = ""
        self.call_metadata: tuple[tuple[str, str], ...] = ()  # `--caller-key`
        self.work_dir = Path(tempfile.mkdtemp(prefix="ghbench-"))
        self.data: Dataset | None = None
        self.h2load_path = ""
        self._starts = 0
        self.profiles: list[dict[str, Any]] = []
        self.cold_by_repeat: dict[int, list[Any]] = {}

    def uses_h2load(self) -> bool:
        h2_scenarios = {"check-hit", "batch", "config", "mixed", "sweep", "overload", "traces", "metrics-cost", "envoy"}
        if self.o.generator == "python":
            h2_scenarios -= {"check-hit"}
        return bool(h2_scenarios & set(self.o.scenarios))

    async def __aenter__(self) -> "Harness":
        if self.uses_h2load():
            self.h2load_path = h2load.ensure_h2load()
        t0 = time.monotonic()
        await self.storage.create()
        cold = self.o.cold_members
        if cold is None:
            need = 0
            if "check-miss" in self.o.scenarios:
                rate = self.o.rate or DEFAULT_RATES["check-miss"]
                need = int(rate * (self.o.warmup + self.o.duration) * self.o.repeat * 1.1)
            cold = max(2, -(-need // self.o.tenants))
        self.data = generate(self.o.tenants, self.o.members, cold, zipf_s=self.o.zipf_s)
        await self.storage.seed(self.data)
        self.admin_token = await _operator_token(self.storage.dsn)
        if self.o.caller_key:
            self.call_metadata = (("authorization", f"Bearer {self.admin_token}"),)
        self.seed_seconds = round(time.monotonic() - t0, 2)
        self.log(
            f"bench: database {self.storage.database}: {self.o.tenants} tenants, "
            f"{self.data.member_count} members seeded in {self.seed_seconds}s (create + migrate + seed)"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.storage.close()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- targets ---

    async def start(
        self, name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> Target:
        """`env`: added to a gatehouse target's environment after `--gh-env` (e.g. OTEL_*)."""
        workers = self.o.gh_workers
        if name == "baseline":
            target = baseline_target(workers or 1, self.work_dir, unix=self.o.unix, extra_args=extra_args)
        else:
            self._starts += 1
            variant = self.o.variants.get(name.removeprefix("gatehouse-"), []) if name != "gatehouse" else []
            # A variant's `NAME=VALUE` words (an upper-case name) are environment, e.g. OTEL_*.
            variant_env = dict(word.split("=", 1) for word in variant if _ENV_WORD.fullmatch(word))
            variant = [word for word in variant if not _ENV_WORD.fullmatch(word)]
            target = gatehouse_target(
                self.storage, self.operator_key, self._starts, self.work_dir,
                workers=workers, extra_args=[*self.o.gh_args, *variant, *(extra_args or [])], unix=self.o.unix,
                name=name,
            )
            target.env.update({**self.o.gh_env, **variant_env, **(env or {})})
        await target.start()
        return target

    # --- one measured point ---

    async def h2_point(
        self, target: Target, method: str, message: bytes, verifier: Verifier, rate: float, tag: str,
        *, duration: float | None = None, sample_rate: float | None = None,
    ) -> dict[str, Any]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            sample(
                target.address, method, message, verifier,
                self.o.sample_rate if sample_rate is None else sample_rate, stop, post=50,
                metadata=self.call_metadata,
            )
        )
        cpu0, t0 = target.cpu_seconds(), time.monotonic()
        profile = self._maybe_profile(target, tag)
        run = await h2load.run(
            self.h2load_path, target.address, method, message,
            rate=rate, duration=duration or self.o.duration, warmup=self.o.warmup, work_dir=self.work_dir, tag=tag,
            metadata=self.call_metadata,
        )
        wall, cpu = time.monotonic() - t0, target.cpu_seconds() - cpu0
        stop.set()
        checked = await sampler
        if profile is not None:
            await profile
        point = h2load.summarize(run, rate, checked["frame_bytes"] or None)
        return self._finish(point, target, rate, "h2load", wall, cpu, run.cpu_seconds, checked)

    async def py_point(
        self, target: Target, method: str, bodies: list[bytes], expected: list[Any] | None, kind: str, rate: float, tag: str
    ) -> dict[str, Any]:
        cpu0, t0 = target.cpu_seconds(), time.monotonic()
        profile = self._maybe_profile(target, tag)
        point = await pygen.run(
            target.address, method, bodies, expected, kind=kind, rate=rate, duration=self.o.duration,
            warmup=self.o.warmup, workers=self.o.py_workers, work_dir=self.work_dir, tag=tag,
        )
        wall, cpu = time.monotonic() - t0, target.cpu_seconds() - cpu0
        if profile is not None:
            await profile
        return self._finish(point, target, rate, "python", wall, cpu, point.pop("generator_cpu_seconds"), None)

    def _finish(
        self, point: dict[str, Any], target: Target, rate: float, generator: str,
        wall: float, server_cpu: float, gen_cpu: float, checked: dict[str, Any] | None,
    ) -> dict[str, Any]:
        errors: dict[str, int] = dict(point.pop("errors"))
        if point.get("inferred_grpc_errors"):
            errors["GRPC_INFERRED_FROM_DATA_BYTES"] = point["inferred_grpc_errors"]
        if checked is not None:
            for code, count in checked["codes"].items():
                if code != "OK":
                    errors[f"SAMPLED_{code}"] = count
            point["verification"] = checked
        point.update(
            target=target.name,
            offered_rps=rate,
            generator=generator,
            errors=errors,
            error_count=sum(errors.values()),
            server_cpu_pct=round(100.0 * server_cpu / wall, 1),
            generator_cpu_pct=round(100.0 * gen_cpu / wall, 1),
        )
        lat = point["latency_ms"]
        flag = "" if point["pacing_ok"] else "  (pacing NOT ok: sends fell behind schedule, latencies understate)"
        self.log(
            f"  {target.name:9s} {rate:>8g}/s  achieved {point['achieved_rps']:>8.1f}/s  p50 {lat['p50']:.2f}  "
            f"p99 {lat['p99']:.2f}  max {lat['max']:.2f} ms  errors {point['error_count']}  "
            f"cpu server {point['server_cpu_pct']}% gen {point['generator_cpu_pct']}%{flag}"
        )
        return point

    def _maybe_profile(self, target: Target, tag: str) -> Awaitable[None] | None:
        """py-spy the first point of each target (same load, so the two profiles compare)."""
        if not self.o.profile or any(p["target"] == target.name for p in self.profiles):
            return None
        spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
        if not Path(spy).exists():
            self.log("bench: --profile needs py-spy (pip install py-spy); skipping the profile")
            return None
        out = self.work_dir / f"{tag}.pyspy.txt"
        # --native walks C/Cython frames too; py-spy must pause the process to do that.
        mode = ["--native"] if self.o.profile_native else ["--nonblocking"]
        placeholder: dict[str, Any] = {"tag": tag, "target": target.name}
        self.profiles.append(placeholder)

        async def record() -> None:
            await asyncio.sleep(self.o.warmup)
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(target.pid), "--subprocesses", *mode, "--rate", "250",
                "--duration", str(max(1, int(self.o.duration - 1))), "--format", "raw", "--output", str(out),
                stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0 or not out.exists():
                self.log(f"bench: py-spy failed: {err.decode(errors='replace')[-500:]}")
                self.profiles.remove(placeholder)
                return
            collapsed = out.read_text()
            placeholder.update(native=self.o.profile_native, collapsed=collapsed, **summarize_profile(collapsed))

        return asyncio.ensure_future(record())


def summarize_profile(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_samples: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_samples[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    share = lambda c: round(100.0 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "self_top": [(f, share(c)) for f, c in self_samples.most_common(top)],
        "inclusive_top": [(f, share(c)) for f, c in incl.most_common(top)],
    }


# --- scenarios ------------------------------------------------------------------------------


def _ratio(points: list[dict[str, Any]]) -> None:
    """Annotate each Gatehouse point with ÷ baseline at the same offered rate and repeat."""
    base = {(p["scenario"], p["offered_rps"], p.get("repeat", 0)): p for p in points if p["target"] == "baseline"}
    for p in points:
        b = base.get((p["scenario"], p["offered_rps"], p.get("repeat", 0)))
        if not p["target"].startswith("gatehouse") or b is None:
            continue
        p["vs_baseline"] = {
            "throughput": round(p["achieved_rps"] / b["achieved_rps"], 3) if b["achieved_rps"] else None,
            "p99": round(p["latency_ms"]["p99"] / b["latency_ms"]["p99"], 2) if b["latency_ms"]["p99"] else None,
        }


async def fixed_rate(
    h: Harness, scenario: str, method: str, *, extra_args: list[str] | None = None,
) -> list[dict[str, Any]]:
    """check-hit, check-miss, check-l2, batch, config: one rate, each target, `repeat` times."""
    assert h.data is not None
    o, data = h.o, h.data
    rate = o.rate or DEFAULT_RATES[scenario]
    points: list[dict[str, Any]] = []

    async def one(name: str, target: Target, r: int) -> dict[str, Any]:
        gh = name.startswith("gatehouse")
        tag = f"{scenario}-{name}-{r}"
        if scenario == "check-miss":
            # The same never-seen keys for both targets: they are different servers.
            if r not in h.cold_by_repeat:
                h.cold_by_repeat[r] = data.cold_checks(int(rate * (o.warmup + o.duration)) + 1, seed=r)
            checks = h.cold_by_repeat[r]
            point = await h.py_point(
                target, CHECK, [c.body for c in checks], [c.allowed for c in checks] if gh else None,
                "check", rate, tag,
            )
        elif scenario == "check-l2" or (scenario == "check-hit" and o.generator == "python"):
            checks = data.hot_checks(o.distinct_keys)
            if r == 0:
                await warm(target.address, CHECK, [c.body for c in checks])
            point = await h.py_point(
                target, CHECK, [c.body for c in checks], [c.allowed for c in checks] if gh else None,
                "check", rate, tag,
            )
        elif scenario == "check-hit":
            top = data.top_check()
            await warm(target.address, CHECK, [top.body], metadata=h.call_metadata)
            point = await h.h2_point(target, CHECK, top.body, Verifier("check", top.allowed if gh else None), rate, tag)
        elif scenario == "batch":
            body, expected = data.batch_body(o.batch_size)
            await warm(target.address, BATCH, [body], metadata=h.call_metadata)
            point = await h.h2_point(target, BATCH, body, Verifier("batch", expected if gh else None), rate, tag)
            point["checks_per_call"] = o.batch_size
            point["decisions_per_s"] = round(point["achieved_rps"] * o.batch_size, 1)
        elif scenario == "config":
            body = data.top_config()
            await warm(target.address, CONFIG, [body], metadata=h.call_metadata)
            point = await h.h2_point(
                target, CONFIG, body, Verifier("config", data.tenants[0].id if gh else None), rate, tag
            )
        else:
            raise ValueError(scenario)
        point.update(scenario=scenario, repeat=r)
        return point

    if o.interleave:
        # Every target up at once (an idle one costs nothing), taking turns at each repeat:
        # drift in the machine's load (other work) spreads over all of them alike.
        started: list[Target] = []
        try:
            for name in o.targets:
                started.append(await h.start(name, extra_args if name.startswith("gatehouse") else None))
            for r in range(o.repeat):
                for name, target in zip(o.targets, started):
                    points.append(await one(name, target, r))
        finally:
            for target in started:
                await target.stop()
        return points
    for name in o.targets:
        target = await h.start(name, extra_args if name.startswith("gatehouse") else None)
        try:
            for r in range(o.repeat):
                points.append(await one(name, target, r))
        finally:
            await target.stop()
    return points


async def mixed(h: Harness) -> list[dict[str, Any]]:
    """90 % check, 9 % config (h2load each) and, against Gatehouse, 1 % admin writes."""
    assert h.data is not None
    o, data = h.o, h.data
    rate = o.rate or DEFAULT_RATES["mixed"]
    points: list[dict[str, Any]] = []
    top = data.top_check()
    cfg = data.top_config()
    for name in o.targets:
        target = await h.start(name)
        gh = name.startswith("gatehouse")
        try:
            for r in range(o.repeat):
                tag = f"mixed-{name}-{r}"
                await warm(target.address, CHECK, [top.body])
                await warm(target.address, CONFIG, [cfg])
                cpu0, t0 = target.cpu_seconds(), time.monotonic()
                stop = asyncio.Event()
                sampler = asyncio.create_task(
                    sample(target.address, CHECK, top.body, Verifier("check", top.allowed if gh else None),
                           o.sample_rate, stop, post=50)
                )
                jobs = [
                    h2load.run(h.h2load_path, target.address, CHECK, top.body, rate=0.9 * rate,
                               duration=o.duration, warmup=o.warmup, work_dir=h.work_dir, tag=tag + "-check"),
                    h2load.run(h.h2load_path, target.address, CONFIG, cfg, rate=0.09 * rate,
                               duration=o.duration, warmup=o.warmup, work_dir=h.work_dir, tag=tag + "-config"),
                ]
                admin_job = admin_writes(h, target, 0.01 * rate) if gh else None
                memory = asyncio.create_task(rss_series(target, stop))
                results = await asyncio.gather(*jobs, *([admin_job] if admin_job else []))
                wall, cpu = time.monotonic() - t0, target.cpu_seconds() - cpu0
                stop.set()
                rss = await memory
                checked = await sampler
                check_run, config_run = results[0], results[1]
                parts = {
                    "check": h2load.summarize(check_run, 0.9 * rate, checked["frame_bytes"] or None),
                    "config": h2load.summarize(config_run, 0.09 * rate, None),
                }
                merged = h2load.H2Run(
                    starts_s=check_run.starts_s + config_run.starts_s,
                    latencies_ms=check_run.latencies_ms + config_run.latencies_ms,
                    statuses=check_run.statuses + config_run.statuses,
                )
                order = sorted(range(len(merged.starts_s)), key=merged.starts_s.__getitem__)
                merged.starts_s = [merged.starts_s[i] for i in order]
                merged.latencies_ms = [merged.latencies_ms[i] for i in order]
                point = h2load.summarize(merged, 0.99 * rate, None)
                point["inferred_grpc_errors"] = parts["check"]["inferred_grpc_errors"]
                point["parts"] = parts
                if admin_job:
                    point["parts"]["admin"] = results[2]
                gen_cpu = check_run.cpu_seconds + config_run.cpu_seconds
                point = h._finish(point, target, rate, "h2load+python", wall, cpu, gen_cpu, checked)
                if admin_job:
                    for code, count in results[2]["errors"].items():
                        point["errors"][f"ADMIN_{code}"] = count
                    point["error_count"] = sum(point["errors"].values())
                point.update(scenario="mixed", repeat=r, rss=rss_summary(rss, o.warmup))
                points.append(point)
        finally:
            await target.stop()
    return points


RSS_INTERVAL_S = 5.0


async def rss_series(target: Target, stop: asyncio.Event) -> list[tuple[float, int]]:
    """(seconds since start, RSS bytes of the server's process tree) every RSS_INTERVAL_S."""
    t0, series = time.monotonic(), []
    while not stop.is_set():
        series.append((round(time.monotonic() - t0, 1), target.rss_bytes()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_INTERVAL_S)
    series.append((round(time.monotonic() - t0, 1), target.rss_bytes()))
    return series


def rss_summary(series: list[tuple[float, int]], warmup: float) -> dict[str, Any]:
    """Memory over the run: flat means the end is within a few % of the first sample
    taken after the warm-up (caches fill during the warm-up)."""
    settled = [b for t, b in series if t >= warmup] or [b for _, b in series]
    mb = [round(b / 2**20, 1) for b in settled]
    return {
        "interval_s": RSS_INTERVAL_S,
        "first_mb": mb[0],
        "last_mb": mb[-1],
        "min_mb": min(mb),
        "max_mb": max(mb),
        "growth_pct": round(100.0 * (settled[-1] - settled[0]) / settled[0], 2) if settled[0] else 0.0,
        "series": [(t, round(b / 2**20, 1)) for t, b in series],
    }


async def _operator_token(dsn: str) -> str:
    """An operator API key in the bench database, for admin calls (the bootstrap key
    only manages operator keys)."""
    from gatehouse.server.admin_auth import create_operator_key
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    store = await connect(dsn, min_size=1, max_size=1)
    try:
        return await create_operator_key(store, Actor("bench"), name="bench")
    finally:
        await store.close()


async def admin_writes(h: Harness, target: Target, rate: float) -> dict[str, Any]:
    """AddMember then RemoveMember of throwaway subjects in Zipf-chosen tenants, open loop."""
    assert h.data is not None
    import random

    rng = random.Random(9)
    n = int(rate * (h.o.warmup + h.o.duration))
    auth = (("authorization", f"Bearer {h.admin_token}"),)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        ops: list[tuple[str, Any]] = []
        for i in range(0, n, 2):
            tenant, _ = h.data.hot_pick(rng)
            subject = common_pb2.Subject(type="user", id=f"churn{i:06d}")
            ops.append(("add", admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=subject)))
            ops.append(("remove", admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=subject)))
        start = time.monotonic()
        previous: dict[int, asyncio.Task[None]] = {}

        async def one(i: int, due: float) -> None:
            kind, request = ops[i]
            if kind == "remove" and (i - 1) in previous:
                await previous[i - 1]  # remove only what was added
            try:
                if kind == "add":
                    await admin.AddMember(request, metadata=auth, timeout=10.0)
                else:
                    await admin.RemoveMember(request, metadata=auth, timeout=10.0)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            if due - start >= h.o.warmup:
                latencies.append((time.monotonic() - due) * 1000.0)

        tasks = []
        for i in range(len(ops)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.ensure_future(one(i, due))
            previous[i] = task
            tasks.append(task)
        await asyncio.gather(*tasks)
    return {
        "requests": len(latencies),
        "offered_rps": rate,
        "latency_ms": latency_summary(latencies),
        "errors": {c: k for c, k in codes.items() if c != "OK"},
    }


async def sweep(h: Harness) -> list[dict[str, Any]]:
    """check-hit at rising rates; each target stops at its first rate that breaks.

    The targets run side by side and take turns at each rate (an idle one costs nothing
    measurable), so a drift in the machine's speed hits both alike; `--repeat N` runs the
    whole sweep N times and `sweep_ceilings` reports each repeat's ratio."""
    assert h.data is not None
    o = h.o
    top = h.data.top_check()
    points: list[dict[str, Any]] = []
    targets = [await h.start(name) for name in o.targets]
    try:
        for target in targets:
            await warm(target.address, CHECK, [top.body])
        for r in range(o.repeat):
            broken: set[str] = set()
            for rate in o.rates:
                for target in targets:
                    if target.name in broken:
                        continue
                    gh = target.name.startswith("gatehouse")
                    point = await h.h2_point(
                        target, CHECK, top.body, Verifier("check", top.allowed if gh else None), rate,
                        f"sweep-{target.name}-{rate:g}-{r}",
                    )
                    broke = past_limits(point, rate, o.p99_limit_ms)
                    point.update(scenario="sweep", repeat=r, within_limits=not broke)
                    points.append(point)
                    if broke:
                        broken.add(target.name)
                if len(broken) == len(targets):
                    break
    finally:
        for target in targets:
            await target.stop()
    return points


def sweep_ceilings(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target's highest good rate below its first break, per repeat; the summary is
    the median over repeats, and `repeats` keeps every ratio (the spread)."""
    sweep_points = [p for p in points if p["scenario"] == "sweep"]
    repeats = sorted({p.get("repeat", 0) for p in sweep_points})
    per_repeat = []
    for r in repeats:
        row: dict[str, Any] = {"repeat": r}
        for name in ("baseline", "gatehouse"):
            ok = [p for p in sweep_points if p["target"] == name and p.get("repeat", 0) == r and p["within_limits"]]
            row[name] = max((p["achieved_rps"] for p in ok), default=0.0)
        if row.get("baseline"):
            row["gatehouse_vs_baseline"] = round(row["gatehouse"] / row["baseline"], 3)
        per_repeat.append(row)
    out: dict[str, Any] = {"repeats": per_repeat}
    for key in ("baseline", "gatehouse", "gatehouse_vs_baseline"):
        values = sorted(row[key] for row in per_repeat if key in row)
        if values:
            out[key] = values[len(values) // 2]
    return out


async def propagation(h: Harness) -> list[dict[str, Any]]:
    """Write committed → every sidecar answers the new data (DESIGN.md: p99 ≤ 100 ms at
    1,000 events/s). Two sidecars on one database and one Redis prefix, one relay (the
    first; the second runs `--relay 0`), background writes at `--rate` from writer
    processes, probes at `--probe-rate`; see bench/propagation.py."""
    import asyncpg
    import redis.asyncio as aioredis

    from bench import propagation as prop
    from gatehouse.engine.model import SubjectRef
    from gatehouse.events import stream_key
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    assert h.data is not None
    o, data = h.o, h.data
    rate = o.rate or DEFAULT_RATES["propagation"]
    prefix = f"{h.storage.redis_prefix}prop"  # shared: one stream, one L2, both sidecars
    targets: list[Target] = []
    for i, relay in enumerate((True, False)):
        h._starts += 1
        t = gatehouse_target(
            h.storage, h.operator_key, h._starts, h.work_dir, workers=o.gh_workers,
            extra_args=[*o.gh_args, *([] if relay else ["--relay", "0"])],
        )
        t.env["GATEHOUSE_REDIS_PREFIX"] = prefix
        targets.append(t)
    names = ["sidecar-1 (relay)", "sidecar-2 (--relay 0)"]
    store = None
    try:
        for t in targets:
            await t.start()
        store = await connect(h.storage.dsn, min_size=1, max_size=2)
        probe_tenant = data.tenants[-1]
        probe_subject = SubjectRef("user", "propagation-probe")
        await store.add_member(Actor(id="bench-probe"), probe_tenant.id, probe_subject)
        write_tenants = [t.id for t in data.tenants[:-1]]
        member_ids = [m.subject_id for m in data.tenants[0].hot[1:]]  # not u00000, the owner
        h.log(
            f"  2 sidecars on prefix {prefix} (relay in {targets[0].address} only), writes {rate:g}/s over "
            f"{len(write_tenants)} tenants from "
            f"{'pgbench' if o.writer == 'pgbench' else f'{o.py_workers} writer processes'}, probes {o.probe_rate:g}/s"
        )
        start_at = time.time() + 2.0
        probe_start = time.monotonic() + (start_at - time.time()) + o.warmup
        cpu0 = [t.cpu_seconds() for t in targets]
        t_wall = time.monotonic()
        if o.writer == "pgbench":
            writes_job = prop.run_pgbench_writers(
                h.storage.dsn, write_tenants, member_ids, rate=rate, warmup=o.warmup, duration=o.duration,
                work_dir=h.work_dir, start_at=start_at,
            )
        else:
            writes_job = prop.run_writers(
                h.storage.dsn, write_tenants, member_ids, rate=rate, warmup=o.warmup, duration=o.duration,
                workers=o.py_workers, work_dir=h.work_dir, start_at=start_at,
            )
        probes_job = prop.run_probes(
            store, probe_tenant.id, probe_subject, [t.address for t in targets],
            rate=o.probe_rate, start=probe_start, duration=o.duration,
            redis_url=h.storage.redis_url, stream=stream_key(prefix),
        )
        writes, probes = await asyncio.gather(writes_job, probes_job)
        wall = time.monotonic() - t_wall
        cpu = [round(100.0 * (t.cpu_seconds() - c) / wall, 1) for t, c in zip(targets, cpu0)]
        # Relay / stream sanity: every outbox row published, the stream holds them.
        unpublished = total_outbox = -1
        drained_after = None
        conn = await asyncpg.connect(h.storage.dsn)
        try:
            t_drain = time.monotonic()
            while True:
                async with conn.transaction():
                    await conn.execute("SELECT set_config('gatehouse.tenant_id', '*', true)")
                    unpublished = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    total_outbox = await conn.fetchval("SELECT count(*) FROM outbox")
                if unpublished == 0 or time.monotonic() - t_drain > 10:
                    drained_after = round(time.monotonic() - t_drain, 2)
                    break
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        client = aioredis.from_url(h.storage.redis_url)
        try:
            info = await client.xinfo_stream(stream_key(prefix))
            stream = {
                "key": stream_key(prefix),
                "length": int(info["length"]),
                "entries_added": int(info.get("entries-added", -1)),
            }
        finally:
            await client.aclose()
        stream.update(outbox_rows=total_outbox, outbox_unpublished=unpublished, drain_check_seconds=drained_after)
        gaps = [t.log_path.read_text(errors="replace").count("tenant-event gap") for t in targets]
        stream["subscriber_gap_warnings"] = gaps
    finally:
        if store is not None:
            await store.close()
        for t in targets:
            await t.stop()

    common = {
        "scenario": "propagation",
        "offered_rps": o.probe_rate,
        "generator": o.writer,
        "pacing_ok": True,
        "send_lag_ms": {"p99": 0.0, "max": 0.0},
        "generator_cpu_pct": round(100.0 * writes["cpu_seconds"] / wall, 1),
        "write_load": writes,
        "stream": stream,
        "probe_commit_ms": probes["probe_commit_ms"],
        "probe_published_ms": probes["published_ms"],
        "probes_sent": probes["probes_sent"],
        "probe_write_errors": probes["write_errors"],
        "poll_interval_ms": prop.POLL_INTERVAL_S * 1000.0,
        "probe_bound_s": prop.PROBE_BOUND_S,
        "repeat": 0,
    }

    def point(target: str, samples: list[float], timeouts: int, server_cpu: float, extra: dict[str, Any]) -> dict[str, Any]:
        errors = {"PROBE_TIMEOUT": timeouts} if timeouts else {}
        errors.update({f"PROBE_WRITE_{k}": v for k, v in probes["write_errors"].items()})
        wrong = extra.get("tally", {}).get("wrong_at_revision", 0)
        if wrong:
            errors["WRONG_AT_REVISION"] = wrong
        return {
            **common, **extra, "target": target, "requests": len(samples),
            "achieved_rps": round(len(samples) / o.duration, 2),
            "latency_ms": latency_summary(samples), "timeouts": timeouts,
            "errors": errors, "error_count": sum(errors.values()), "server_cpu_pct": server_cpu,
        }

    points = [point("every sidecar", probes["every_ms"], probes["every_timeouts"], sum(cpu), {})]
    for i, name in enumerate(names):
        points.append(point(name, probes["per_ms"][i], probes["per_timeouts"][i], cpu[i],
                            {"address": targets[i].address, "tally": probes["tallies"][i]}))
    every = points[0]["latency_ms"]
    h.log(
        f"  writes offered {rate:g}/s achieved {writes['achieved_rps']:g}/s (errors {writes['errors']}); "
        f"probes {probes['probes_sent']}: every-sidecar p50 {every['p50']:.1f} p95 {every['p95']:.1f} "
        f"p99 {every['p99']:.1f} max {every['max']:.1f} ms, timeouts {probes['every_timeouts']}; stream {stream}"
    )
    return points


def past_limits(point: dict[str, Any], rate: float, p99_limit_ms: float) -> bool:
    """A sweep point past the ceiling: p99 above the limit, any error, or under 95 % of
    the offered rate achieved."""
    return (
        point["latency_ms"]["p99"] > p99_limit_ms
        or point["error_count"] > 0
        or point["achieved_rps"] < 0.95 * rate
    )


_ENV_WORD = re.compile(r"[A-Z][A-Z0-9_]*=.*")


async def run(h: Harness, scenario: str) -> list[dict[str, Any]]:
    h.log(f"bench: scenario {scenario}")
    if scenario in ("check-hit", "check-miss", "batch", "config"):
        points = await fixed_rate(h, scenario, BATCH if scenario == "batch" else CONFIG if scenario == "config" else CHECK)
    elif scenario == "check-l2":
        points = await fixed_rate(h, scenario, CHECK, extra_args=["--l1-max-entries", "16"])
    elif scenario == "mixed":
        points = await mixed(h)
    elif scenario == "sweep":
        points = await sweep(h)
    elif scenario == "propagation":
        points = await propagation(h)
    elif scenario == "traces":
        from bench import traces  # it builds on this module

        points = await traces.traces(h)
    elif scenario == "metrics-cost":
        from bench import metrics_cost  # it builds on this module

        points = await metrics_cost.metrics_cost(h)
    elif scenario == "envoy":
        from bench import envoy_bench  # it builds on this module

        points = await envoy_bench.envoy(h)
    elif scenario in ("overload", "burst", "auth-flood"):
        from bench import overload  # it builds on this module

        run = {"overload": overload.overload, "burst": overload.burst, "auth-flood": overload.auth_flood}[scenario]
        points = await run(h)
    else:
        raise SystemExit(f"bench: unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    _ratio(points)
    return points
