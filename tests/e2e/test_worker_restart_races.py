"""`serve --workers 2` when a restart meets something else: a stop (SIGTERM) that comes
while a replacement worker is still starting, a replacement that hangs before serving,
and a worker that is stopped (SIGSTOP), not dead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import grpc
import pytest

from bench.targets import process_tree
from gatehouse_client.v1 import config_pb2
from tests.client import make_client
from tests.e2e.test_workers import KEY, _logged, _worker_index, _workers_again
from tests.processes import sidecar_env, start_server


async def test_a_stop_while_a_replacement_is_starting_is_a_clean_stop(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Input: worker 1 killed (SIGKILL), and SIGTERM to serve as soon as the parent says it
    starts it again (the replacement is still importing). Every worker that served drains
    and exits 0; the replacement never served anything. Before: the replacement, signalled
    before it had its handler, died of SIGTERM (-15) and serve exited 1, as if a worker
    had failed."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await start_server(
            {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_LOG_LEVEL": "INFO"},
            "--workers", "2", stderr=log,
        )  # fmt: skip
        try:
            dead = next(pid for pid in process_tree(server.process.pid)[1:] if _worker_index(pid) == "1")
            os.kill(dead, signal.SIGKILL)
            await _logged(log_path, f"worker 1 (pid {dead}) exited with signal 9 while serving: starting it again", 20)
        finally:
            code = await server.stop()
    text = log_path.read_text()
    assert "worker 1 restarted" not in text, "the replacement was up before the stop: the race was not hit"
    assert code == 0, text[-2000:]


async def test_a_replacement_that_hangs_before_serving_holds_nothing_up(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Input: worker 1 killed and its replacement stopped (SIGSTOP) as soon as it exists,
    before it serves; then worker 0 killed. The parent still restarts worker 0 (it does
    not wait on the hung replacement's first line), and a stop then ends serve."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await start_server(
            {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_LOG_LEVEL": "INFO"},
            "--workers", "2", stderr=log,
        )  # fmt: skip
        hung = 0
        try:
            first = {_worker_index(pid): pid for pid in process_tree(server.process.pid)[1:]}
            os.kill(first["1"], signal.SIGKILL)
            for _ in range(500):
                # Exec'd (its own environment read): a child stopped between fork and exec
                # would hold the parent's Popen itself, which no real worker can do.
                fresh = [
                    pid for pid in process_tree(server.process.pid)[1:]
                    if pid not in first.values() and _worker_index(pid) == "1"
                ]
                if fresh:
                    hung = fresh[0]
                    os.kill(hung, signal.SIGSTOP)
                    break
                await asyncio.sleep(0.01)
            assert hung, "no replacement for worker 1"
            os.kill(first["0"], signal.SIGKILL)
            await _logged(log_path, f"worker 0 (pid {first['0']}) exited with signal 9 while serving", 20)
            await _logged(log_path, "worker 0 restarted (pid ", 30)
        finally:
            if hung:
                os.kill(hung, signal.SIGCONT)
            code = await server.stop()
    assert code in (0, 1), log_path.read_text()[-2000:]


async def test_a_stopped_worker_is_killed_and_replaced_after_the_timeout(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Input: SIGSTOP to worker 1 (not dead to waitpid: before, the kernel went on handing
    it half of new connections, which hung), with GATEHOUSE_WORKER_TIMEOUT_SECONDS 2. Its
    heartbeat stops, the parent kills it after the timeout and starts it again; then 10 new
    connections, each making one call (2 s deadline), are all answered."""
    log_path = tmp_path / "serve.log"
    env = {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_WORKER_TIMEOUT_SECONDS": "2"}
    with open(log_path, "w") as log:
        server = await start_server(env, "--workers", "2", stderr=log)
        stopped = next(pid for pid in process_tree(server.process.pid)[1:] if _worker_index(pid) == "1")
        try:
            os.kill(stopped, signal.SIGSTOP)
            await _logged(log_path, f"worker 1 (pid {stopped}) has not shown a turn of its event loop for", 20)
            await _workers_again(server.process.pid, stopped)
            timed_out = 0
            for _ in range(10):
                client = make_client(server.address, KEY)
                try:
                    await client.config.GetTenantConfig(
                        config_pb2.GetTenantConfigRequest(tenant_id="00000000-0000-4000-8000-000000000000"), timeout=2
                    )
                except grpc.aio.AioRpcError as exc:
                    timed_out += exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                finally:
                    await client.channel.close()
            assert timed_out == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
            code = await server.stop()
    assert code == 0, log_path.read_text()[-2000:]
