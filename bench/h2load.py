"""h2load as a fixed-rate gRPC load generator, and what its log can and cannot tell.

One pre-encoded gRPC message (5-byte length prefix + serialized request) goes in a `-d`
file and is POSTed with `content-type: application/grpc` and `te: trailers` at a smooth
open-loop rate: BENCH-NOTES.md's recipe, many connections at 100 requests/s each, opened
1 ms apart (`--rps 100 -r 1 --rate-period 1ms`), since h2load's per-connection timer
fires at most every 10 ms and would otherwise send bursts.

Intended send time. h2load's `--log-file` gives each request's *actual* start and its
duration. A connection's timer fires every 10 ms and sends what is due at once, so the
actual start is the intended one unless (a) the connection already has `-m` streams in
flight (the request then waits inside h2load, invisible to the log) or (b) h2load itself
runs late. We size `-m` so (a) needs a response slower than m × 10 ms, and we measure both
through the send schedule: `send_lag_ms` compares actual starts with an even schedule at
the offered rate. A run whose p99 lag exceeds `MAX_SEND_LAG_MS` is marked `pacing_ok: false`
and its latencies understate the truth (coordinated omission).

gRPC status. h2load sees HTTP status, not trailers, so `grpc-status` ≠ 0 on an HTTP 200
is invisible in its log. Two checks cover it: every error a grpc.aio servicer raises is a
trailers-only response with no DATA, so `N × frame size − DATA bytes received` counts the
answers that did not arrive (`inferred_grpc_errors`); and a Python sampler sends the same
request during and after the run and checks both status and answer (`verification`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import resource
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import latency_summary, send_lag_ms

PER_CONNECTION_RPS = 100
MAX_CONCURRENT_STREAMS = 64  # a request waits inside h2load only behind 64 × 10 ms = 640 ms
MAX_SEND_LAG_MS = 5.0
GRPC_HEADERS = ("-H", "content-type: application/grpc", "-H", "te: trailers")


def ensure_h2load() -> str:
    """The path of h2load, installing Debian's nghttp2-client when running as root."""
    path = shutil.which("h2load")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: h2load not found; installing nghttp2-client with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nghttp2-client"],
            env=env, check=False, stdout=subprocess.DEVNULL,
        )
        path = shutil.which("h2load")
        if path:
            return path
    raise SystemExit(
        "bench: h2load (from nghttp2) is not installed. Install it with\n"
        "    apt-get install nghttp2-client\n"
        "(as root), or pass --generator python to use the slower Python generator."
    )


def h2load_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().split()[-1] if out.strip() else "unknown"


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class H2Run:
    """One h2load run: the kept window's samples and h2load's own counters."""

    starts_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP status over the kept window
    total_requests: int = 0
    total_2xx: int = 0
    data_bytes: int = 0
    cpu_seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    stdout: str = ""


async def run(
    h2load: str,
    address: str,
    method_path: str,
    message: bytes,
    *,
    rate: float,
    duration: float,
    warmup: float,
    work_dir: Path,
    tag: str,
    metadata: tuple[tuple[str, str], ...] = (),
    get_headers: dict[str, str] | None = None,
) -> H2Run:
    """Send `message` to `method_path` at `rate`/s for warmup + duration seconds, with
    `metadata` as extra headers. `get_headers`: send a plain HTTP GET with these headers
    instead (no message; the `envoy` scenario, through Envoy to an HTTP service)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    body = work_dir / f"{tag}.body"
    body.write_bytes(grpc_frame(message))
    log = work_dir / f"{tag}.log"
    connections = max(1, round(rate / PER_CONNECTION_RPS))
    per_connection = rate / connections
    total = max(connections, math.ceil(rate * (warmup + duration)))
    command = [
        h2load,
        "-n", str(total),
        "-c", str(connections),
        "-m", str(MAX_CONCURRENT_STREAMS),
        "-t", "1",
        "--rps", f"{per_connection:g}",
        "-r", "1",
        "--rate-period", "1ms",
        *(GRPC_HEADERS + ("-d", str(body)) if get_headers is None
          else [arg for name, value in get_headers.items() for arg in ("-H", f"{name}: {value}")]),
        *[arg for name, value in metadata for arg in ("-H", f"{name}: {value}")],
        "--log-file", str(log),
        *url_args(address, method_path),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with {proc.returncode}:\n{text}")
    result = H2Run(command=command, stdout=text)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.total_requests = total
    if m := re.search(r"status codes: (\d+) 2xx", text):
        result.total_2xx = int(m.group(1))
    if m := re.search(r"\((\d+)\) data", text):
        result.data_bytes = int(m.group(1))
    _read_log(log, warmup, result)
    log.unlink(missing_ok=True)
    return result


def url_args(address: str, method_path: str) -> list[str]:
    """h2load's URL for a gRPC method; a unix socket goes in `-B` (the URL's host is unused)."""
    if address.startswith("unix:"):
        return ["-B", address, f"http://localhost{method_path}"]
    return [f"http://{address}{method_path}"]


def _read_log(path: Path, warmup: float, into: H2Run) -> None:
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        return
    rows.sort()
    cutoff = rows[0][0] + int(warmup * 1e6)
    for start_us, status, duration_us in rows:
        if start_us < cutoff:
            continue
        into.starts_s.append(start_us / 1e6)
        into.latencies_ms.append(duration_us / 1000.0)
        into.statuses[status] += 1


def pacing_ok(lag: dict[str, float], rate: float) -> bool:
    """True when the sends kept to the schedule: the 99th-percentile lag (one late timer
    tick is not a trend; a backlog is, and it lifts the whole tail) within tolerance.
    Fewer than 10 connections (opened 1 ms apart, each firing every 10 ms) leave part of
    each 10 ms period empty: that stream is uneven by design, not late."""
    connections = max(1, round(rate / PER_CONNECTION_RPS))
    return lag["p99"] <= MAX_SEND_LAG_MS + max(0, 1000.0 / PER_CONNECTION_RPS - connections)


def summarize(run_: H2Run, rate: float, frame_bytes: int | None) -> dict[str, object]:
    """The point's numbers from one or more h2load runs (see module doc for each check)."""
    n = len(run_.latencies_ms)
    window_end = max((s + lat / 1000.0 for s, lat in zip(run_.starts_s, run_.latencies_ms)), default=0.0)
    span = window_end - run_.starts_s[0] if n else 0.0
    lag = send_lag_ms(run_.starts_s, rate)
    errors = {f"HTTP_{code}" if code >= 0 else "STREAM_FAILED": count for code, count in run_.statuses.items() if code != 200}
    inferred = 0
    if frame_bytes:
        short = run_.total_2xx * frame_bytes - run_.data_bytes
        inferred = max(0, math.ceil(short / frame_bytes))
    return {
        "requests": n,
        "achieved_rps": round(n / span, 1) if span > 0 else 0.0,
        "latency_ms": latency_summary(run_.latencies_ms),
        "errors": errors,
        "inferred_grpc_errors": inferred,
        "send_lag_ms": lag,
        "pacing_ok": pacing_ok(lag, rate),
    }


async def saturate(
    h2load: str, address: str, method_path: str, message: bytes, *, seconds: float, work_dir: Path, tag: str,
    connections: int = 32, streams: int = 1,
) -> float:
    """Closed loop (`-c 32 -m 1`: no client-side batching of streams) for `seconds` after a 1 s
    warm-up: the achieved rate, requests/s, i.e. the throughput ceiling of this call."""
    body = work_dir / f"{tag}.body"
    work_dir.mkdir(parents=True, exist_ok=True)
    body.write_bytes(grpc_frame(message))
    command = [
        h2load, "-c", str(connections), "-m", str(streams), "-t", "1", "-D", f"{seconds:g}", "--warm-up-time", "1",
        *GRPC_HEADERS, "-d", str(body), *url_args(address, method_path),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"h2load (saturate) exited with {proc.returncode}:\n{text}")
    return float(m.group(1))
