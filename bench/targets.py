"""The servers under test, each a subprocess on a free 127.0.0.1 port.

`gatehouse` is the real thing: `python -m gatehouse.server.cli serve --listen …` against
the bench database and a fresh Redis prefix per start (so every start begins with cold
L1 *and* L2). `baseline` is bench/baseline_server.py with the same process count.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.dataset import BenchStorage

_CLK_TCK = os.sysconf("SC_CLK_TCK")
ACCESS_SERVICE = "gatehouse.v1.AccessService"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant (by walking /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of these processes together."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


@dataclass
class Target:
    """One running server: what it is, where it listens, how to stop it."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    address: str = ""
    process: asyncio.subprocess.Process | None = None
    started_at: float = field(default=0.0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def rss_bytes(self) -> int:
        return rss_bytes(process_tree(self.pid))

    async def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
        )
        log.close()
        self.started_at = time.time()
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.address) as channel:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}")
                if await self._ready(channel):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; log:\n{self.log_tail()}")
                await asyncio.sleep(0.2)

    async def _ready(self, channel: grpc.aio.Channel) -> bool:
        if self.name == "baseline":
            try:
                await asyncio.wait_for(channel.channel_ready(), 1.0)
                return True
            except asyncio.TimeoutError:
                return False
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=ACCESS_SERVICE), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15.0)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)  # the harness's own setting, not the servers'
    # /metrics on a free port (on by default, as for users): two servers never collide on 9464.
    env["GATEHOUSE_METRICS_LISTEN"] = "127.0.0.1:0"
    return env


def baseline_target(
    workers: int, log_dir: Path, *, unix: bool = False, extra_args: list[str] | None = None
) -> Target:
    port = free_port()
    address = f"unix:{log_dir / f'baseline-{port}.sock'}" if unix else f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "bench.baseline_server", "--listen", address, "--workers", str(workers), *(extra_args or [])]
    env = _child_env()
    env["PYTHONPATH"] = _repo_root() + os.pathsep + env.get("PYTHONPATH", "")
    return Target("baseline", command, env, log_dir / f"baseline-{port}.log", address=address)


def gatehouse_target(
    storage: BenchStorage,
    operator_key: str,
    start_index: int,
    log_dir: Path,
    *,
    workers: int | None,
    extra_args: list[str],
    unix: bool = False,
    name: str = "gatehouse",
) -> Target:
    """With `unix`, calls go to `--unix-socket` (worker 0's only, so one worker makes sense)."""
    port = free_port()
    command = [sys.executable, "-m", "gatehouse.server.cli", "serve", "--listen", f"127.0.0.1:{port}"]
    address = f"127.0.0.1:{port}"
    if unix:
        socket_path = log_dir / f"gatehouse-{port}.sock"
        command += ["--unix-socket", str(socket_path)]
        address = f"unix:{socket_path}"
    # Always explicit: `serve` defaults to one worker per core, the baseline to one process.
    command += ["--workers", str(workers or 1)]
    command += extra_args
    env = _child_env()
    env.update(
        GATEHOUSE_DATABASE_URL=storage.dsn,
        GATEHOUSE_REDIS_URL=storage.redis_url,
        # A fresh prefix per start: every server begins with an empty L2 as well as L1.
        GATEHOUSE_REDIS_PREFIX=f"{storage.redis_prefix}s{start_index}",
        GATEHOUSE_OPERATOR_KEY=operator_key,
        GATEHOUSE_LOG_LEVEL=os.environ.get("GATEHOUSE_BENCH_LOG_LEVEL", "WARNING"),
        GATEHOUSE_GRACE_SECONDS="1",
    )
    return Target(name, command, env, log_dir / f"{name}-{port}.log", address=address)


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
