"""Private Postgres and Redis servers of a test's own, to stop, freeze and thaw.

The shared servers on 127.0.0.1:5432 and :6379 serve every test (and maybe a developer's
`./dev serve`); a fault test never touches them. It starts its own instead, on a free
loopback port:

* `PrivateRedis`: a redis-server with nothing on disk.
* `PrivatePostgres`: a cluster `initdb`'d into a temporary directory (trust auth, as the
  `postgres` user when the tests run as root, since Postgres refuses to run as root),
  with the roles `gatehouse` and `gatehouse_app` and a database `gatehouse` migrated by
  the project's own migrations.

`freeze()` stops every process of the server with SIGSTOP (for Postgres, the postmaster
and every backend and auxiliary process it forked): the kernel still accepts TCP
connections into the listen backlog and takes the bytes sent, but nothing answers, which
is how a hung host or a network black hole looks to a client (unlike a stopped server,
which refuses or resets at once). `thaw()` sends SIGCONT. `stop()` thaws first, so no
frozen process is ever left behind; call it in a `finally` (the fixtures do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from bench.targets import process_tree
from tests.conftest import create_migrated_database, ensure_roles

PG_BIN = Path(os.environ.get("GATEHOUSE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Postgres will not run as root; as root, the cluster belongs to this user instead.
PG_SYSTEM_USER = os.environ.get("GATEHOUSE_TEST_PG_SYSTEM_USER", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_until(ready: object, what: str, timeout: float = 30.0) -> None:
    """Call the coroutine function `ready` until it returns True; AssertionError after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if await ready():  # type: ignore[operator]
                return
        except Exception:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not start within {timeout:.0f} s")


class PrivateRedis:
    """A redis-server of the test's own on a random loopback port, to stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (./dev setup installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:

            async def pong() -> bool:
                return bool(await client.ping())

            await _wait_until(pong, "private redis", timeout=5.0)
        finally:
            await client.aclose()

    def freeze(self) -> None:
        """SIGSTOP the server: connections open, nothing answers."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the server (harmless when it is not frozen)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.kill()
            self.process.wait()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, migrated, on a random loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.admin_url = f"postgresql://postgres@{self.host}/postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="gh-test-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.postmaster_pid: int | None = None
        self.database_url = ""  # the runtime role's DSN to `gatehouse`, once started

    def _run(self, *command: str) -> None:
        """Run a Postgres program as the cluster's owner; AssertionError with its stderr if it fails."""
        prefix = ["runuser", "-u", PG_SYSTEM_USER, "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")

    async def start(self) -> None:
        """initdb, start the server (about a second), and make the migrated `gatehouse` database."""
        if os.geteuid() == 0:
            shutil.chown(self.directory, PG_SYSTEM_USER)
        await asyncio.to_thread(
            self._run, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"
        )
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        await asyncio.to_thread(
            self._run, str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options
        )
        self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])

        async def accepting() -> bool:
            conn = await asyncpg.connect(self.admin_url, timeout=2)
            await conn.close()
            return True

        await _wait_until(accepting, "private postgres")
        await ensure_roles(self.admin_url)
        self.database_url = await create_migrated_database("gatehouse", admin_url=self.admin_url, host=self.host)

    def halt(self) -> None:
        """Stop the server (`pg_ctl stop -m fast`): connections are refused until `resume()`."""
        self.thaw()
        self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "10")

    def resume(self) -> None:
        """Start the server stopped by `halt()` again, on the same port (about a second)."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options
        )
        self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def processes(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, walwriter, ...).

        Found by parent pid, not process group: each child of the postmaster calls setsid().
        """
        assert self.postmaster_pid is not None
        return process_tree(self.postmaster_pid)

    def freeze(self) -> None:
        """SIGSTOP the postmaster, then every process it forked: nothing of the cluster runs."""
        assert self.postmaster_pid is not None
        # The postmaster first: stopped, it forks no process the listing below would miss.
        os.kill(self.postmaster_pid, signal.SIGSTOP)
        for pid in self.processes()[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT every process of the cluster (harmless when it is not frozen)."""
        if self.postmaster_pid is None:
            return
        for pid in reversed(self.processes()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Thaw, stop the server at once (no checkpoint) and remove its directory."""
        self.thaw()
        if self.postmaster_pid is not None:
            try:
                # pg_ctl lets the postmaster release its shared memory; SIGKILL if it cannot.
                self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "10")
            except AssertionError:
                for pid in self.processes():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.postmaster_pid = None
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        await server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        await server.start()
        yield server
    finally:
        server.stop()


class PrivateRedisCluster:
    """A real Redis Cluster of three masters (no replicas) on free loopback ports.

    Each node is a `redis-server --cluster-enabled yes` with nothing on disk but its
    cluster config file, in a temporary directory; `redis-cli --cluster create` assigns
    the 16384 slots. `stop()` kills every node and removes the directory.
    """

    MASTERS = 3

    def __init__(self) -> None:
        self.ports = [free_port() for _ in range(self.MASTERS)]
        # The cluster bus defaults to port + 10000, which may be taken or past 65535.
        self.bus_ports = [free_port() for _ in range(self.MASTERS)]
        self.directory = Path(tempfile.mkdtemp(prefix="gh-test-cluster-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Any one node is enough for a cluster-aware client to find the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        assert server and cli, "redis-server and redis-cli are not installed (./dev setup installs them)"
        for port, bus_port in zip(self.ports, self.bus_ports):
            node = self.directory / str(port)
            node.mkdir()
            self.processes.append(
                subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-port", str(bus_port),
                     "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", "2000",
                     "--dir", str(node), "--save", "", "--appendonly", "no", "--logfile", str(node / "redis.log")],
                    stdout=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while self._cli(cli, port, "ping") != "PONG":
                self._check(deadline, f"redis cluster node on port {port}")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
        assert created.returncode == 0, f"redis-cli --cluster create failed: {created.stdout}"
        # Every node must agree the cluster is whole (all slots served) before a test uses it.
        for port in self.ports:
            while "cluster_state:ok" not in self._cli(cli, port, "cluster", "info"):
                self._check(deadline, f"cluster_state:ok on port {port}")

    @staticmethod
    def _cli(cli: str, port: int, *command: str) -> str:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *command], capture_output=True, text=True, timeout=5
        )
        return done.stdout.strip()

    def _check(self, deadline: float, what: str) -> None:
        for process in self.processes:
            assert process.poll() is None, f"a redis cluster node exited ({process.returncode}); logs in {self.directory}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready in time; logs in {self.directory}")
        time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    """One real 3-master Redis Cluster for the whole run (about a second to start)."""
    cluster = PrivateRedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
