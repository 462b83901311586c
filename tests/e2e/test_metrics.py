"""/metrics of a real `gatehouse serve --workers 2`, scraped directly and by a real
Prometheus (Debian's package; `./dev setup` installs it): one scrape holds every
worker's series, summed; the off switch; the listener's port is refused when taken."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.targets import process_tree
from gatehouse_client.v1 import access_pb2, common_pb2
from tests.client import make_client, user
from tests.dependencies import free_port
from tests.processes import ServerProcess, sidecar_env, start_server

KEY = "metrics-operator-key"
CALLS = 60


def metrics_url(server: ServerProcess) -> str:
    match = re.search(r"\(metrics: (http://\S+/metrics)\)", server.line)
    assert match, server.line
    return match.group(1)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def summed(text: str, sample: str, **match: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and match.items() <= s.labels.items()
    )




async def drive(address: str, token: str, tenant_id: str) -> None:
    """CALLS CheckAccess calls over 8 connections (the kernel spreads them over the workers)."""
    clients = [make_client(address, token) for _ in range(8)]
    try:
        request = access_pb2.CheckAccessRequest(
            tenant_id=tenant_id, subject=user("nobody"), permission="invoice.read", resource=common_pb2.Resource()
        )
        for i in range(CALLS):
            await clients[i % len(clients)].access.CheckAccess(request)
    finally:
        for client in clients:
            await client.channel.close()


async def test_one_scrape_sums_every_worker_and_prometheus_sees_it(
    database_url: str, redis_url: str, redis_prefix: str, unique: str, operator_token: str, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed: run ./dev setup (it installs Debian's prometheus package)"
    env = sidecar_env(database_url, redis_url, redis_prefix, KEY)
    server = await start_server(env, "--workers", "2", "--metrics-listen", "127.0.0.1:0", "--db-pool-max", "3")
    prom: subprocess.Popen[bytes] | None = None
    try:
        url = metrics_url(server)
        admin = make_client(server.address, operator_token)
        tenant = await admin.tenant(f"metrics-e2e-{unique}")
        await admin.channel.close()
        await drive(server.address, operator_token, tenant.id)

        # Each worker copies its stats once a second; the RPC counters are written per call.
        method = {"grpc_method": "CheckAccess", "grpc_service": "gatehouse.v1.AccessService"}
        for _ in range(60):
            text = await asyncio.to_thread(fetch, url)
            # Every series the asserts read: a worker's once-a-second copy writes them one
            # after another, so a scrape can fall between two of them.
            if (
                summed(text, "gatehouse_postgres_pool_max_connections") == 6
                and summed(text, "gatehouse_decisions_total") == CALLS
                and summed(text, "grpc_server_handled_total", grpc_code="OK", **method) == CALLS
                and summed(text, "grpc_server_handling_seconds_count", **method) == CALLS
            ):
                break
            await asyncio.sleep(0.25)
        assert summed(text, "grpc_server_handled_total", grpc_code="OK", **method) == CALLS
        assert summed(text, "grpc_server_handling_seconds_count", **method) == CALLS
        assert summed(text, "gatehouse_decisions_total", reason="NOT_A_MEMBER") == CALLS
        # A gauge summed over live workers: 2 workers x --db-pool-max 3.
        assert summed(text, "gatehouse_postgres_pool_max_connections") == 6
        assert summed(text, "gatehouse_build_info") == 1
        assert "# TYPE grpc_server_handled_total counter" in text or "# TYPE grpc_server_handled counter" in text

        # A worker that dies: its counts stay in every sum (no total goes down, so no
        # counter reset for Prometheus), its live gauges go; its replacement's come (two
        # pools again, never three: the dead one's gauge is not summed with the new one's).
        workers = process_tree(server.process.pid)[1:]
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        pools = set()
        for _ in range(200):
            text = await asyncio.to_thread(fetch, url)
            pools.add(summed(text, "gatehouse_postgres_pool_max_connections"))
            replaced = [pid for pid in process_tree(server.process.pid)[1:] if pid not in workers]
            if replaced and summed(text, "gatehouse_postgres_pool_max_connections") == 6:
                break
            await asyncio.sleep(0.1)
        assert replaced and summed(text, "gatehouse_postgres_pool_max_connections") == 6, pools
        assert pools <= {3, 6}, pools
        assert summed(text, "grpc_server_handled_total", grpc_code="OK", **method) == CALLS
        assert summed(text, "gatehouse_decisions_total") == CALLS

        # A real Prometheus scraping it every second, queried over its HTTP API.
        port = free_port()
        config = tmp_path / "prometheus.yml"
        target = urllib.parse.urlsplit(url).netloc
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: gatehouse\n    static_configs:\n      - targets: ['{target}']\n"
        )
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),
        )
        query = 'sum(grpc_server_handled_total{grpc_method="CheckAccess",grpc_code="OK"})'
        api = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        value = None
        for _ in range(100):  # Prometheus starts, then scrapes within a second
            await asyncio.sleep(0.2)
            try:
                answer = json.loads(await asyncio.to_thread(fetch, api))
            except OSError:
                continue
            result = answer["data"]["result"]
            if result:
                value = float(result[0]["value"][1])
                if value == CALLS:
                    break
        assert value == CALLS, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = json.loads(await asyncio.to_thread(
            fetch, f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": "up"})
        ))
        assert [r["value"][1] for r in up["data"]["result"]] == ["1"]
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        code = await server.stop()
    assert code == 0  # the killed worker was started again; the stop is a clean one


async def test_metrics_off_and_a_taken_port(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    env = sidecar_env(database_url, redis_url, redis_prefix, KEY)
    server = await start_server(env, "--metrics-listen", "off")
    try:
        assert "metrics" not in server.line
    finally:
        assert await server.stop() == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gatehouse.server.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "2",
             "--metrics-listen", f"127.0.0.1:{port}"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert refused.returncode != 0
    assert "cannot listen" in refused.stderr and "metrics" in refused.stderr
