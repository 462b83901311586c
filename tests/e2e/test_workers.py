"""`gatehouse serve --workers N` shares one port between processes, and nothing else may."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from bench.targets import process_tree
from gatehouse_client.v1 import config_pb2
from tests.client import make_client
from tests.processes import sidecar_env, start_server

KEY = "workers-operator-key"


async def test_workers_share_a_port_and_a_stranger_cannot(
    database_url: str, redis_url: str, redis_prefix: str, unique: str, operator_token: str
) -> None:
    env = sidecar_env(database_url, redis_url, redis_prefix, KEY)
    server = await start_server(env, "--workers", "2")
    try:
        assert server.process.poll() is None
        # Many connections: the kernel spreads them over both workers; all answer.
        clients = [make_client(server.address, operator_token) for _ in range(8)]
        tenant = await clients[0].tenant(f"workers-{unique}")
        for client in clients:
            config = await client.config.GetTenantConfig(
                config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=tenant.revision)
            )
            assert config.revision == tenant.revision
            await client.channel.close()

        for extra in ([], ["--workers", "2"]):
            stranger = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gatehouse.server.cli", "serve", "--listen", server.address, *extra],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert stranger.returncode != 0, stranger.stdout
            assert "cannot listen" in (stranger.stderr + stranger.stdout).lower()
    finally:
        code = await server.stop()
    assert code == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_workers_do_not_outlive_a_killed_parent(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """SIGKILL cannot be forwarded; the workers still go (PR_SET_PDEATHSIG)."""
    server = await start_server(sidecar_env(database_url, redis_url, redis_prefix, KEY), "--workers", "2")
    workers = process_tree(server.process.pid)[1:]
    assert len(workers) == 2
    server.kill()
    for _ in range(100):
        if not any(_alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _worker_env(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(name.encode() + b"="):
                return item.split(b"=", 1)[1].decode()
    return ""


def _worker_index(pid: int) -> str:
    return _worker_env(pid, "GATEHOUSE_WORKER_INDEX")


async def _logged(log_path: Path, text: str, timeout: float = 20.0) -> str:
    """The log once it holds `text` (AssertionError after `timeout` seconds)."""
    for _ in range(int(timeout / 0.1)):
        log = log_path.read_text()
        if text in log:
            return log
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log_path.read_text()[-2000:]}")


async def _workers_again(parent: int, dead: int, timeout: float = 20.0) -> list[int]:
    """The parent's two workers once `dead` is gone and its replacement is serving (its
    index in the environment, its port bound: ready to answer)."""
    for _ in range(int(timeout / 0.1)):
        workers = [pid for pid in process_tree(parent)[1:] if pid != dead]
        if len(workers) == 2 and all(_worker_index(pid) for pid in workers) and all(_listening(pid) for pid in workers):
            return workers
        await asyncio.sleep(0.1)
    raise AssertionError(f"no replacement for worker pid {dead} within {timeout} s: {process_tree(parent)}")


def _listening(pid: int) -> bool:
    """Whether the process holds a listening TCP socket (its gRPC port)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    return True
    return False


async def test_a_worker_that_dies_while_serving_is_started_again(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A worker killed outright (OOM killer, a crash) is started again in its place, with
    its index: worker 0 brings the relay back. The parent says so at ERROR, the port keeps
    answering, and a stop afterwards is as clean as ever (exit 0)."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await start_server(sidecar_env(database_url, redis_url, redis_prefix, KEY), "--workers", "2", stderr=log)
        try:
            before = process_tree(server.process.pid)[1:]
            assert len(before) == 2
            dead = next(pid for pid in before if _worker_index(pid) == "0")
            os.kill(dead, signal.SIGKILL)
            await _logged(
                log_path, f"worker 0 (pid {dead}) exited with signal 9 while serving; it ran the outbox relay: starting it again"
            )
            after = await _workers_again(server.process.pid, dead)
            assert sorted(_worker_index(pid) for pid in after) == ["0", "1"]
            assert _worker_env(next(pid for pid in after if _worker_index(pid) == "0"), "GATEHOUSE_RELAY") == "1"
            client = make_client(server.address, KEY)
            try:
                for _ in range(20):  # new connections, spread over both workers by the kernel
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await client.config.GetTenantConfig(
                            config_pb2.GetTenantConfigRequest(tenant_id="00000000-0000-4000-8000-000000000000"), timeout=5
                        )
            finally:
                await client.channel.close()
            assert server.process.poll() is None
        finally:
            code = await server.stop()
    assert code == 0, log_path.read_text()[-2000:]


async def test_workers_crashing_in_a_loop_stop_serve_with_exit_1(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Past GATEHOUSE_WORKER_RESTARTS restarts in a minute, serve stops every worker and
    exits 1 by itself, for its supervisor to restart the whole process."""
    log_path = tmp_path / "serve.log"
    env = {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_WORKER_RESTARTS": "1"}
    with open(log_path, "w") as log:
        server = await start_server(env, "--workers", "2", stderr=log)
        try:
            first = next(pid for pid in process_tree(server.process.pid)[1:] if _worker_index(pid) == "1")
            os.kill(first, signal.SIGKILL)
            after = await _workers_again(server.process.pid, first)
            os.kill(next(pid for pid in after if _worker_index(pid) == "1"), signal.SIGKILL)
            code = await asyncio.wait_for(asyncio.to_thread(server.process.wait), 30)
        finally:
            server.kill()
    text = log_path.read_text()
    assert "1 restarts in the last 60 s (GATEHOUSE_WORKER_RESTARTS): stopping every worker, exit 1" in text, text[-2000:]
    assert code == 1


async def test_a_signal_to_the_whole_process_group_stops_serve_quietly(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal, or `kill -- -PGID`, reaches the parent and every worker at
    once. A worker that drains and exits 0 stopped as asked: no "exited while serving"
    ERROR, and serve exits 0 with the others stopped too (it logged two ERRORs before)."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await start_server(
            {**sidecar_env(database_url, redis_url, redis_prefix, KEY), "GATEHOUSE_LOG_LEVEL": "INFO"}, "--workers", "2", stderr=log
        )
        try:
            workers = process_tree(server.process.pid)[1:]
            assert len(workers) == 2
            # A worker first, as a group signal may arrive: before the parent has forwarded.
            os.kill(workers[0], signal.SIGTERM)
            for _ in range(100):  # until the parent has reaped it
                if workers[0] not in process_tree(server.process.pid):
                    break
                await asyncio.sleep(0.1)
        finally:
            code = await server.stop()
    text = log_path.read_text()
    assert "while serving" not in text, text[-2000:]
    assert code == 0, text[-2000:]
