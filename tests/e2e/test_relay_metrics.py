"""/metrics of a real `gatehouse relay` (the relay alone, as deploy/kubernetes/relay.yaml
runs it): served when GATEHOUSE_METRICS_LISTEN (`--metrics-listen`) is given, with the
relay's series (published events, heartbeats, errors, the outbox backlog and its age)
and the process collectors; off when it is not given; a taken port stops it at start.

Each test has a database of its own: the suite's sidecars run relays of their own on the
shared one, and would publish the row this relay is meant to."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import AsyncIterator, Callable

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.store.api import Actor
from gatehouse.store.postgres import connect
from tests.conftest import PG_ADMIN_URL, create_migrated_database, drop_database


@pytest.fixture
async def own_database(database_roles: None) -> AsyncIterator[tuple[str, str]]:
    """(runtime DSN, superuser DSN) of a migrated database no other relay reads."""
    name = f"gh_test_relaymet_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name)
    try:
        yield dsn, PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await drop_database(name)


def relay_env(dsn: str, redis_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    return {
        **env,
        "GATEHOUSE_DATABASE_URL": dsn,
        "GATEHOUSE_REDIS_URL": redis_url,
        "GATEHOUSE_REDIS_PREFIX": prefix,
        "GATEHOUSE_RELAY_HEARTBEAT_SECONDS": "0.2",
        "GATEHOUSE_LOG_LEVEL": "WARNING",
    }


async def start_relay(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """`gatehouse relay ARGS` and its first line ("relaying outbox to ...")."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.server.cli", "relay", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=30)
    if "relaying" not in line:
        process.kill()
        process.wait()
        raise AssertionError(f"unexpected first line from the relay: {line!r}")
    return process, line


async def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=20)


def scrape(url: str) -> dict[str, float]:
    """{sample name with its labels sorted, `name{a="x"}`: value} of one scrape."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def scrape_until(url: str, done: Callable[[dict[str, float]], bool], what: str) -> dict[str, float]:
    """Scrape every 0.1 s until `done(samples)`, for up to 15 s (the relay copies its
    counters into the metrics once a second, its backlog at each 0.2 s heartbeat)."""
    samples: dict[str, float] = {}
    for _ in range(150):
        samples = await asyncio.to_thread(scrape, url)
        if done(samples):
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {what}: {dict(sorted((k, v) for k, v in samples.items() if 'relay' in k))}")


async def test_relay_serves_its_metrics_published_events_and_outbox_lag(
    own_database: tuple[str, str], redis_url: str, unique: str
) -> None:
    dsn, superuser_dsn = own_database
    store = await connect(dsn, min_size=1, max_size=1)
    try:
        await store.create_tenant(
            Actor(id="tests", request_id=f"req-{unique}"), slug=f"relaymet-{unique}", name="R", plan="", region="",
            settings={},
        )
    finally:
        await store.close()
    # The write's outbox row, held FOR UPDATE: the relay skips it (SKIP LOCKED) and its
    # heartbeat counts it as unpublished, so the lag gauge grows until it is let go.
    holder = await asyncpg.connect(superuser_dsn)
    holding = holder.transaction()
    await holding.start()
    released = False
    held = await holder.fetch("SELECT id FROM outbox WHERE published_at IS NULL FOR UPDATE")
    assert len(held) >= 1

    relay, line = await start_relay(
        relay_env(dsn, redis_url, f"ghrm{unique}"), "--metrics-listen", "127.0.0.1:0"
    )
    try:
        match = re.search(r"\(metrics: (http://127\.0\.0\.1:\d+/metrics)\)", line)
        assert match, line
        url = match.group(1)

        lagging = await scrape_until(
            url,
            lambda s: s.get("gatehouse_relay_backlog_oldest_seconds", 0) >= 1.0
            and s.get("gatehouse_relay_heartbeats_total", 0) >= 2,
            "saw the held row's age",
        )
        assert lagging["gatehouse_relay_backlog_rows"] == len(held)
        assert lagging["gatehouse_relay_published_total"] == 0
        # The standard collectors, the build, and the error counters at 0.
        assert lagging["process_resident_memory_bytes"] > 0
        assert lagging["process_cpu_seconds_total"] > 0
        assert "python_gc_collections_total" in "".join(lagging)
        assert any(name.startswith("python_info{") for name in lagging)
        assert any(name.startswith("gatehouse_build_info{") for name in lagging)
        assert lagging['gatehouse_relay_errors_total{cause="postgres"}'] == 0
        assert lagging['gatehouse_relay_errors_total{cause="redis"}'] == 0
        # Nothing of a sidecar's own.
        assert not any(name.startswith(("grpc_server_", "gatehouse_tenant_event_lag")) for name in lagging)

        await holding.rollback()
        released = True
        published = await scrape_until(
            url,
            lambda s: s.get("gatehouse_relay_published_total", 0) >= len(held)
            and s.get("gatehouse_relay_backlog_oldest_seconds", 1) == 0,
            "saw the row published",
        )
        assert published["gatehouse_relay_backlog_rows"] == 0
        assert published["gatehouse_relay_publish_seconds_count"] >= len(held)
        # Its commit was seconds before the relay could publish it.
        assert published["gatehouse_relay_publish_seconds_sum"] >= 1.0
    finally:
        if not released:
            await holding.rollback()
        await holder.close()
        code = await stop(relay)
    assert code == 0


async def test_relay_metrics_off_unless_given_and_a_taken_port_stops_it(
    own_database: tuple[str, str], redis_url: str, unique: str
) -> None:
    env = relay_env(own_database[0], redis_url, f"ghrm{unique}")
    relay, line = await start_relay(env)
    try:
        assert "metrics" not in line
    finally:
        assert await stop(relay) == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gatehouse.server.cli", "relay"],
            env={**env, "GATEHOUSE_METRICS_LISTEN": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert refused.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in refused.stderr
