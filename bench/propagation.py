"""`propagation`: write committed → every sidecar answers the new data.

Two `gatehouse serve` sidecars share the bench database and ONE Redis prefix (so one
event stream); only the first runs the outbox relay (the second gets `--relay 0`).
Beside them:

* background writes, open loop at `--rate` (default 1,000/s), from `--py-workers`
  writer processes (`python -m bench.propagation SPEC RESULT`), each straight through
  `gatehouse.store.postgres.connect(dsn)`: assign_role then revoke_role of the
  permission-less `member` role at a unique scope, for a random non-owner member of a
  uniformly chosen tenant (every tenant but the probe tenant). Each write commits an
  outbox row → one stream event → a subject eviction in both sidecars;
* probes, `--probe-rate` (default 10/s), from the harness process: on a dedicated
  tenant, flip one grant of a dedicated subject (assign_role / revoke_role of
  `accountant` at `emea`), take the returned revision R and t0 = when the commit
  returned, then poll CheckAccess (`invoice.create` at `emea/de/berlin`, no
  min_revision) on both sidecars every ~1 ms until each answers revision ≥ R with the
  expected `allowed`. Latency per sidecar = answer received − t0; "every sidecar" =
  the max of the two. A probe is bounded at 5 s (a timeout).

Between probes each sidecar holds the previous answer in L1, so it must be told (evict
on the event), not merely miss.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import latency_summary, nearest_rank

PROBE_BOUND_S = 5.0
POLL_INTERVAL_S = 0.001
PROBE_ROLE, PROBE_ROLE_SCOPE = "accountant", "emea"
PROBE_PERMISSION, PROBE_RESOURCE_SCOPE = "invoice.create", "emea/de/berlin"
CHURN_ROLE = "member"  # a system role with no permissions: the writes change no answer
MAX_IN_FLIGHT = 3000  # per writer: beyond this a due write is dropped and counted


@dataclass
class WriterSpec:
    dsn: str
    tenant_ids: list[str]
    member_ids: list[str]  # non-owner hot members (the same ids in every tenant)
    rate: float  # total across writers
    pairs: int  # (assign, revoke) pairs in the whole schedule
    worker: int
    workers: int
    start_at: float  # wall clock, the same for all writers
    warmup: float
    pool_max: int = 24
    seed: int = 11


async def _writer(spec: WriterSpec) -> dict[str, Any]:
    from gatehouse.engine.model import SubjectRef
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    store = await connect(spec.dsn, min_size=min(8, spec.pool_max), max_size=spec.pool_max)
    actor = Actor(id="bench-writer")
    rng = random.Random(spec.seed * 1000 + spec.worker)
    mono_start = time.monotonic() + (spec.start_at - time.time())
    # Pair p owns slots 2p (assign) and 2p+1 (revoke); writer w owns pairs p ≡ w (mod W).
    ops: list[tuple[float, int, str, SubjectRef, str]] = []  # (due, pair, tenant, subject, scope)
    for p in range(spec.worker, spec.pairs, spec.workers):
        ops.append((mono_start + 2 * p / spec.rate, p, rng.choice(spec.tenant_ids),
                    SubjectRef("user", rng.choice(spec.member_ids)), f"churn/w{spec.worker}/p{p}"))
    codes: Counter[str] = Counter()
    lat_ms: list[float] = []  # commit latency from due time, measured window only
    lag_ms: list[float] = []  # actual start − due
    done_at: list[float] = []  # completion times (s from start) of OK writes
    in_flight = 0

    async def pair(due: float, tenant: str, subject: SubjectRef, scope: str) -> None:
        nonlocal in_flight
        for k, kind in enumerate(("assign", "revoke")):
            slot_due = due + k / spec.rate
            await asyncio.sleep(max(0.0, slot_due - time.monotonic()))
            if in_flight >= MAX_IN_FLIGHT:
                codes["DROPPED_BACKLOG"] += 1
                if kind == "assign":
                    codes["DROPPED_BACKLOG"] += 1
                    return
                continue
            in_flight += 1
            started = time.monotonic()
            try:
                if kind == "assign":
                    await store.assign_role(actor, tenant, subject, role=CHURN_ROLE, scope=scope)
                else:
                    await store.revoke_role(actor, tenant, subject, role=CHURN_ROLE, scope=scope)
                code = "OK"
            except Exception as exc:  # noqa: BLE001 - count by type and go on
                code = type(exc).__name__
            finally:
                in_flight -= 1
            end = time.monotonic()
            rel_due = slot_due - mono_start
            if rel_due >= spec.warmup:
                codes[code] += 1
                lat_ms.append((end - slot_due) * 1000.0)
                lag_ms.append((started - slot_due) * 1000.0)
                if code == "OK":
                    done_at.append(end - mono_start)
            if code != "OK" and kind == "assign":
                return  # nothing to revoke

    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, mono_start - time.monotonic()))
    tasks: list[asyncio.Task[None]] = []
    for due, _p, tenant, subject, scope in ops:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.ensure_future(pair(due, tenant, subject, scope)))
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    await store.close()
    return {"codes": dict(codes), "latency_ms": lat_ms, "lag_ms": lag_ms, "done_at": done_at, "cpu_seconds": cpu}


def writer_main(spec_path: str, result_path: str) -> int:
    import uvloop

    with open(spec_path, "rb") as f:
        spec: WriterSpec = pickle.load(f)
    Path(result_path).write_text(json.dumps(uvloop.run(_writer(spec))))
    return 0


async def run_writers(
    dsn: str, tenant_ids: list[str], member_ids: list[str], *, rate: float, warmup: float, duration: float,
    workers: int, work_dir: Path, start_at: float,
) -> dict[str, Any]:
    pairs = math.ceil(rate * (warmup + duration) / 2)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs, files = [], []
    for w in range(workers):
        spec = WriterSpec(dsn, tenant_ids, member_ids, rate, pairs, w, workers, start_at, warmup)
        spec_path, result_path = work_dir / f"prop-writer{w}.spec", work_dir / f"prop-writer{w}.json"
        with open(spec_path, "wb") as f:
            pickle.dump(spec, f)
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.propagation", str(spec_path), str(result_path),
            env=env, stdin=asyncio.subprocess.DEVNULL,
        ))
        files.append((spec_path, result_path))
    for proc in procs:
        if await proc.wait() != 0:
            raise RuntimeError(f"bench.propagation writer exited with {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    codes: Counter[str] = Counter()
    lat: list[float] = []
    lag: list[float] = []
    done: list[float] = []
    for spec_path, result_path in files:
        data = json.loads(result_path.read_text())
        spec_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
        codes.update(data["codes"])
        lat += data["latency_ms"]
        lag += data["lag_ms"]
        done += data["done_at"]
    in_window = sum(1 for t in done if warmup <= t < warmup + duration)
    lag.sort()
    return {
        "offered_rps": rate,
        "writers": workers,
        "committed": codes.get("OK", 0),
        # Commits that completed inside the measured window, per second of it.
        "achieved_rps": round(in_window / duration, 1),
        "errors": {c: n for c, n in codes.items() if c != "OK"},
        "commit_latency_ms": latency_summary(lat),  # from each write's due time (open loop)
        "send_lag_ms": {"p99": round(nearest_rank(lag, 99.0), 3), "max": round(lag[-1], 3) if lag else 0.0},
        "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
    }


# --- background writes from pgbench --------------------------------------------------------

# pgbench's script: one event-producing write per transaction. It runs the store's own
# write tail, `COMPLETE_WRITE` (revision bump, audit row, outbox event, NOTIFY: the part
# of every admin mutation that makes the event), under the same row-level-security scope
# the store sets, for a uniformly chosen tenant and member, as an `assignment` event for
# that member, so each is one stream event and one subject eviction in every sidecar.
# What it leaves out is the domain row (a real assign_role also inserts the assignment):
# that row changes nothing the relay or the subscribers do. Its parameters, by the names
# `COMPLETE_WRITE_PARAMETERS` gives them (tenant_id and subject come from `\gset`):
_PGBENCH_PARAMS = {
    "actor": "bench-writer",
    "action": "role.assign",  # audit action
    "target": "member/pgbench",  # audit target
    "request_id": "",  # pgbench refuses an empty -D: inlined as ''
    "reason": "",
    "details": json.dumps({"role": CHURN_ROLE}),  # audit details
    "kind": "assignment",  # outbox kind
    "payload": json.dumps({"action": "role.assign", "role": CHURN_ROLE}),  # outbox payload
}


def pgbench_script(tenant_ids: list[str], member_ids: list[str]) -> str:
    from gatehouse.store.write_tail import complete_write_statement

    def variable(number: int, name: str) -> str:
        return "''" if _PGBENCH_PARAMS.get(name) == "" else f":{name}"

    complete = complete_write_statement(placeholder=variable)
    complete = " ".join(complete.split())  # pgbench: one SQL command per line
    tenants = ",".join(tenant_ids)
    members = ",".join(f"user/{m}" for m in member_ids)
    return "\n".join([
        f"\\set n random(1, {len(tenant_ids)})",
        f"\\set m random(1, {len(member_ids)})",
        f"SELECT ('{{{tenants}}}'::uuid[])[:n] AS tenant_id, ('{{{members}}}'::text[])[:m] AS subject \\gset",
        "BEGIN;",
        "SELECT set_config('gatehouse.tenant_id', :tenant_id, true);",
        complete + ";",
        "COMMIT;",
        "",
    ])


async def run_pgbench_writers(
    dsn: str, tenant_ids: list[str], member_ids: list[str], *, rate: float, warmup: float, duration: float,
    work_dir: Path, start_at: float, clients: int = 16,
) -> dict[str, Any]:
    """Open-loop writes at `rate` from pgbench (`-R`: Poisson arrivals, latency counted
    from each transaction's scheduled start); the same summary as `run_writers`."""
    import shutil

    from gatehouse.store.write_tail import NOTIFY_CHANNEL

    pgbench = shutil.which("pgbench") or "/usr/bin/pgbench"
    script = work_dir / "pgbench-writes.sql"
    script.write_text(pgbench_script(tenant_ids, member_ids))
    log_prefix = work_dir / "prop-pgbench"
    defines = [f"{k}={v}" for k, v in {**_PGBENCH_PARAMS, "channel": NOTIFY_CHANNEL}.items() if v]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-R", str(rate),
        "-T", str(math.ceil(warmup + duration)), "-f", str(script), "-l", "--log-prefix", str(log_prefix),
        *(arg for d in defines for arg in ("-D", d)), dsn,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=str(work_dir),
    )
    out, _ = await proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 2):  # 2: some transactions failed; counted below
        raise RuntimeError(f"pgbench exited with {proc.returncode}: {out.decode(errors='replace')[-2000:]}")
    lat: list[float] = []
    lag: list[float] = []
    codes: Counter[str] = Counter()
    in_window = 0
    for log in sorted(work_dir.glob("prop-pgbench.*")):
        for line in log.read_text().splitlines():
            # client_id transaction_no time script_no time_epoch time_us schedule_lag
            parts = line.split()
            if len(parts) < 7:
                continue
            done = int(parts[4]) + int(parts[5]) / 1e6 - began
            if parts[2] in ("failed", "skipped"):
                codes[parts[2].upper()] += 1
                continue
            latency, sched = int(parts[2]) / 1000.0, int(parts[6]) / 1000.0
            if done - (latency + sched) / 1000.0 < warmup:
                continue  # scheduled in the warm-up
            codes["OK"] += 1
            lat.append(latency + sched)
            lag.append(sched)
            if warmup <= done < warmup + duration:
                in_window += 1
        log.unlink()
    script.unlink(missing_ok=True)
    lag.sort()
    return {
        "offered_rps": rate,
        "writers": f"pgbench -c {clients} -j 2",
        "committed": codes.get("OK", 0),
        "achieved_rps": round(in_window / duration, 1),
        "errors": {c: n for c, n in codes.items() if c != "OK"},
        "commit_latency_ms": latency_summary(lat),
        "send_lag_ms": {"p99": round(nearest_rank(lag, 99.0), 3), "max": round(lag[-1], 3) if lag else 0.0},
        "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
    }


# --- probes --------------------------------------------------------------------------------


async def _visible(stub: Any, request: Any, revision: int, allowed: bool, t0: float, deadline: float,
                   tally: Counter[str]) -> float | None:
    """Seconds from t0 until this sidecar answers at ≥ revision with `allowed`; None past deadline."""
    import grpc

    while True:
        try:
            answer = await stub.CheckAccess(request, timeout=1.0)
            now = time.monotonic()
            tally["polls"] += 1
            if answer.revision >= revision:
                if answer.allowed == allowed:
                    return now - t0
                tally["wrong_at_revision"] += 1  # only probes write this tenant: a bug
        except grpc.aio.AioRpcError as exc:
            now = time.monotonic()
            tally[f"rpc_{exc.code().name}"] += 1
        if now > deadline:
            return None
        await asyncio.sleep(POLL_INTERVAL_S)


async def _stream_tail(redis: Any, stream: str) -> str:
    newest = await redis.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


async def _published(redis: Any, stream: str, after: str, tenant_id: str, revision: int, t0: float,
                     deadline: float) -> float | None:
    """Seconds from t0 until the probe's event is in the stream (the relay's share),
    reading only entries newer than `after` (the tail before the probe's write)."""
    from gatehouse.events import TenantEvent

    while True:
        for entry_id, fields in await redis.xrange(stream, min=f"({after}", count=1000):
            after = entry_id.decode()
            event = TenantEvent.parse(fields)
            if event is not None and event.tenant_id == tenant_id and event.revision >= revision:
                return time.monotonic() - t0
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(POLL_INTERVAL_S)


async def run_probes(store: Any, tenant_id: str, subject: Any, addresses: list[str], *, rate: float,
                     start: float, duration: float, redis_url: str = "", stream: str = "") -> dict[str, Any]:
    import grpc

    from gatehouse.store.api import Actor
    from gatehouse_client.v1 import access_pb2, access_pb2_grpc, common_pb2

    actor = Actor(id="bench-probe")
    request = access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=common_pb2.Subject(type=subject.type, id=subject.id),
        permission=PROBE_PERMISSION, resource=common_pb2.Resource(type="invoice", id="1", scope=PROBE_RESOURCE_SCOPE),
    )
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    published_ms: list[float] = []
    redis = None
    if redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(redis_url)
    stubs = [access_pb2_grpc.AccessServiceStub(c) for c in channels]
    tallies = [Counter() for _ in addresses]
    per: list[list[float]] = [[] for _ in addresses]
    every: list[float] = []
    commit_ms: list[float] = []
    timeouts = [0] * len(addresses)
    every_timeouts = 0
    write_errors: Counter[str] = Counter()
    granted = False
    try:
        # Both sidecars cache "denied" first, so the first flip must be told, not missed.
        for stub in stubs:
            answer = await stub.CheckAccess(request, timeout=5.0)
            assert not answer.allowed, "probe subject unexpectedly allowed before the first probe"
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        n, end = 0, start + duration
        while True:
            due = start + n / rate
            if due >= end:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            tail = await _stream_tail(redis, stream) if redis else ""
            t_send = time.monotonic()
            try:
                if granted:
                    revision = await store.revoke_role(actor, tenant_id, subject, role=PROBE_ROLE, scope=PROBE_ROLE_SCOPE)
                else:
                    _, revision = await store.assign_role(actor, tenant_id, subject, role=PROBE_ROLE, scope=PROBE_ROLE_SCOPE)
            except Exception as exc:  # noqa: BLE001
                write_errors[type(exc).__name__] += 1
                continue
            t0 = time.monotonic()
            commit_ms.append((t0 - t_send) * 1000.0)
            granted = not granted
            stages = await asyncio.gather(
                *(_visible(stub, request, revision, granted, t0, t0 + PROBE_BOUND_S, tally)
                  for stub, tally in zip(stubs, tallies)),
                *([_published(redis, stream, tail, tenant_id, revision, t0, t0 + PROBE_BOUND_S)] if redis else []),
            )
            results = stages[:len(stubs)]
            if redis and stages[-1] is not None:
                published_ms.append(stages[-1] * 1000.0)
            for i, r in enumerate(results):
                if r is None:
                    timeouts[i] += 1
                else:
                    per[i].append(r * 1000.0)
            if any(r is None for r in results):
                every_timeouts += 1
            else:
                every.append(max(results) * 1000.0)  # type: ignore[type-var]
    finally:
        for c in channels:
            await c.close()
        if redis is not None:
            await redis.aclose()
    return {
        # commit → the probe's event in the stream: the relay's share of the latency
        "published_ms": latency_summary(published_ms),
        "probes_sent": n,
        "every_ms": every,
        "every_timeouts": every_timeouts,
        "per_ms": per,
        "per_timeouts": timeouts,
        "tallies": [dict(t) for t in tallies],
        "probe_commit_ms": latency_summary(commit_ms),
        "write_errors": dict(write_errors),
    }


if __name__ == "__main__":
    sys.exit(writer_main(sys.argv[1], sys.argv[2]))
