"""`gatehouse serve --workers N` shares one port between processes, and nothing else may."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

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


def _worker_index(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"GATEHOUSE_WORKER_INDEX="):
                return item.split(b"=", 1)[1].decode()
    return ""


async def test_a_worker_that_dies_while_serving_is_reported(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A worker killed outright (OOM killer, a crash) is not restarted and the others go on
    serving; the parent says so at once, at ERROR, and that worker 0's relay went with it
    (it said nothing: capacity halved and events unpublished, silently)."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await start_server(sidecar_env(database_url, redis_url, redis_prefix, KEY), "--workers", "2", stderr=log)
        try:
            workers = process_tree(server.process.pid)[1:]
            assert len(workers) == 2
            os.kill(next(pid for pid in workers if _worker_index(pid) == "0"), signal.SIGKILL)
            for _ in range(100):
                if "exited with signal 9 while serving" in log_path.read_text():
                    break
                await asyncio.sleep(0.1)
            assert server.process.poll() is None, "the other worker goes on serving"
        finally:
            code = await server.stop()
    text = log_path.read_text()
    assert "worker 0 (pid" in text and "exited with signal 9 while serving" in text, text[-2000:]
    assert "outbox relay" in text, text[-2000:]
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
