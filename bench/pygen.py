"""A multi-process Python open-loop generator, for loads h2load cannot make: requests that
differ from one call to the next (check-miss: every call a never-seen subject; check-l2:
thousands of Zipf-chosen keys).

Each worker process (uvloop, a few grpc.aio channels, pre-serialized bodies passed
through without protobuf work) owns every P-th slot of one shared schedule: slot i is
due at start + i/rate. At each wake-up it launches every call that is due and never waits
for answers before sending the next, so a slow server cannot slow the schedule down;
latency is measured from the slot's due time, not from when the call left (no coordinated
omission). Its own limit (a few thousand calls/s per process on this machine's cores,
shared with the server) is why h2load does the fixed-body scenarios; `send_lag_ms` in the
result shows when a worker fell behind.

    python -m bench.pygen SPEC.pickle RESULT.json     (one worker; the harness starts them)
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import latency_summary, nearest_rank

MAX_SEND_LAG_MS = 5.0


@dataclass
class WorkerSpec:
    address: str
    method_path: str
    bodies: list[bytes]  # slot i sends bodies[i % len(bodies)]
    expected: list[Any] | None  # per body: what a correct answer holds (checked every verify_every)
    kind: str  # "check" | "config" | "batch": how to read an answer
    rate: float  # total across workers
    slots: int  # total across workers
    worker: int
    workers: int
    start_at: float  # wall clock, same for all workers
    channels: int = 4
    verify_every: int = 10
    timeout: float = 10.0


def _answer_ok(kind: str, answer: bytes, expected: Any) -> bool:
    from gatehouse_client.v1 import access_pb2, config_pb2

    if kind == "check":
        return access_pb2.CheckAccessResponse.FromString(answer).allowed == expected
    if kind == "batch":
        return [r.allowed for r in access_pb2.CheckAccessBatchResponse.FromString(answer).results] == expected
    return config_pb2.TenantConfig.FromString(answer).id == expected


async def _worker(spec: WorkerSpec) -> dict[str, Any]:
    import grpc

    channels = [
        grpc.aio.insecure_channel(spec.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(spec.channels)
    ]
    calls = [ch.unary_unary(spec.method_path) for ch in channels]  # bytes in, bytes out
    for ch in channels:
        await ch.channel_ready()
    my_slots = range(spec.worker, spec.slots, spec.workers)
    # Monotonic clock for measuring, wall clock only to agree on the start across processes.
    mono_start = time.monotonic() + (spec.start_at - time.time())
    due = [mono_start + i / spec.rate for i in my_slots]
    latencies: list[float] = [math.nan] * len(due)
    sent_at: list[float] = [0.0] * len(due)
    codes: list[str] = [""] * len(due)
    wrong = 0
    pending: set[asyncio.Task[None]] = set()
    nbodies = len(spec.bodies)

    async def call(k: int, slot: int) -> None:
        nonlocal wrong
        body_index = slot % nbodies
        try:
            answer = await calls[k % len(calls)](spec.bodies[body_index], timeout=spec.timeout)
            codes[k] = "OK"
            if spec.expected is not None and k % spec.verify_every == 0:
                if not _answer_ok(spec.kind, answer, spec.expected[body_index]):
                    wrong += 1
                    codes[k] = "WRONG_ANSWER"
        except grpc.aio.AioRpcError as exc:
            codes[k] = exc.code().name
        latencies[k] = (time.monotonic() - due[k]) * 1000.0

    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, mono_start - time.monotonic()))
    k = 0
    n = len(due)
    while k < n:
        now = time.monotonic()
        while k < n and due[k] <= now:
            sent_at[k] = now
            task = asyncio.create_task(call(k, my_slots[k]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        if k < n:
            await asyncio.sleep(max(0.0, due[k] - time.monotonic()))
    if pending:
        await asyncio.wait(list(pending))
    cpu = time.process_time() - cpu0
    for ch in channels:
        await ch.close()
    return {
        "due": [d - mono_start for d in due],
        "sent": [s - mono_start for s in sent_at],
        "latency_ms": latencies,
        "codes": codes,
        "wrong": wrong,
        "cpu_seconds": cpu,
    }


def worker_main(spec_path: str, result_path: str) -> int:
    import uvloop

    with open(spec_path, "rb") as f:
        spec: WorkerSpec = pickle.load(f)
    result = uvloop.run(_worker(spec))
    Path(result_path).write_text(json.dumps(result))
    return 0


async def run(
    address: str,
    method_path: str,
    bodies: list[bytes],
    expected: list[Any] | None,
    *,
    kind: str,
    rate: float,
    duration: float,
    warmup: float,
    workers: int,
    work_dir: Path,
    tag: str,
) -> dict[str, Any]:
    """Run the schedule across `workers` processes and summarise the kept window."""
    work_dir.mkdir(parents=True, exist_ok=True)
    slots = math.ceil(rate * (warmup + duration))
    start_at = time.time() + 1.5 + 0.1 * workers  # time to import, connect, and wait
    procs = []
    results = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    for w in range(workers):
        spec = WorkerSpec(address, method_path, bodies, expected, kind, rate, slots, w, workers, start_at)
        spec_path = work_dir / f"{tag}.w{w}.spec"
        result_path = work_dir / f"{tag}.w{w}.json"
        with open(spec_path, "wb") as f:
            pickle.dump(spec, f)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.pygen", str(spec_path), str(result_path), env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        )
        results.append((spec_path, result_path))
    for proc in procs:
        if await proc.wait() != 0:
            raise RuntimeError(f"bench.pygen worker exited with {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    due: list[float] = []
    sent: list[float] = []
    lat: list[float] = []
    codes: Counter[str] = Counter()
    wrong = 0
    worker_cpu = 0.0
    for spec_path, result_path in results:
        data = json.loads(result_path.read_text())
        spec_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
        worker_cpu += data["cpu_seconds"]
        wrong += data["wrong"]
        for d, s, latency, code in zip(data["due"], data["sent"], data["latency_ms"], data["codes"]):
            if d < warmup:
                continue
            due.append(d)
            sent.append(s)
            lat.append(latency)
            codes[code] += 1
    window_end = max((d + latency / 1000.0 for d, latency in zip(due, lat)), default=warmup)
    span = window_end - warmup
    # Here each slot's due time is known, so the lag is exact: sent - due.
    lags = sorted((s - d) * 1000.0 for s, d in zip(sent, due))
    lag = {"p99": round(nearest_rank(lags, 99.0), 3), "max": round(lags[-1], 3) if lags else 0.0}
    errors = {code: count for code, count in codes.items() if code != "OK"}
    return {
        "requests": len(lat),
        "achieved_rps": round(len(lat) / span, 1) if span > 0 else 0.0,
        "latency_ms": latency_summary(lat),
        "errors": errors,
        "wrong_answers_sampled": wrong,
        "send_lag_ms": lag,
        "pacing_ok": lag["p99"] <= MAX_SEND_LAG_MS,
        "generator_cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
        "workers": workers,
    }


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
