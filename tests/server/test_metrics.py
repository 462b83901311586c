"""Prometheus metrics (server/metrics.py), in this process: every counter of a real
sidecar is exported or deliberately not, every exported name follows Prometheus'
conventions, no label can hold a tenant or subject, and the RPC, decision, tier and
event metrics count what happened. (Workers and a real Prometheus: tests/e2e/test_metrics.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.server.app import Sidecar
from gatehouse.server.metrics import SERIES, Metrics, split_key, split_method
from gatehouse.server.metrics_setup import MULTIPROC_ENV, is_loopback, make_dir_env, parse_listen
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, common_pb2
from tests.client import Client, make_client, user

# Label names that could hold a value per tenant, subject or request: never on any series.
UNBOUNDED = {"tenant", "tenant_id", "subject", "subject_id", "key", "key_id", "resource", "scope", "request_id", "peer"}


@pytest.fixture(scope="module")
async def measured(sidecar_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sidecar]:
    # The decision log on, so that its counters are held to SERIES too (they were not exported).
    decisions = str(tmp_path_factory.mktemp("decision-log") / "decisions.jsonl")
    running = Sidecar(
        dataclasses.replace(sidecar_settings, decision_log="denials", decision_log_path=decisions), metrics=Metrics()
    )
    await running.start()
    yield running
    await running.stop(grace=0.5)


@pytest.fixture(scope="module")
async def measured_client(measured: Sidecar, operator_token: str) -> AsyncIterator[Client]:
    c = make_client(measured.addresses[0], operator_token)
    yield c
    await c.channel.close()


def scrape(sidecar: Sidecar) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} after copying the stats in."""
    assert sidecar.metrics is not None
    sidecar.metrics.publish(sidecar.stats.snapshot())
    text = generate_latest(sidecar.metrics.registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[tuple[tuple[str, str], ...], float], **match: str) -> float:
    return sum(v for labels, v in samples.items() if match.items() <= dict(labels).items())


async def test_every_counter_of_a_sidecar_is_exported_or_said_why_not(measured: Sidecar) -> None:
    missing = sorted({split_key(key)[0] for key in measured.stats.snapshot()} - SERIES.keys())
    assert missing == [], f"stats keys with no entry in server.metrics.SERIES: {missing}"


async def test_names_units_and_labels_follow_prometheus_conventions(
    measured: Sidecar, measured_client: Client, unique: str
) -> None:
    tenant = await measured_client.tenant(f"metrics-names-{unique}")
    await measured_client.access.CheckAccess(
        access_pb2.CheckAccessRequest(
            tenant_id=tenant.id, subject=user("nobody"), permission="invoice.read", resource=common_pb2.Resource()
        )
    )
    assert measured.metrics is not None
    measured.metrics.publish(measured.stats.snapshot())
    text = generate_latest(measured.metrics.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) > 30
    for family in families:
        name = family.name
        assert name.startswith(("gatehouse_", "grpc_server_")), name
        assert name == name.lower() and " " not in name, name
        assert family.documentation, f"{name} has no help text"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here are durations, in seconds"
        if family.type == "gauge" and name != "gatehouse_build_info":
            assert not name.endswith("_total"), name
        for unit in ("_milliseconds", "_ms", "_microseconds", "_minutes", "_bytes_kb"):
            assert unit not in name, f"{name}: base units only"
        for sample in family.samples:
            assert not UNBOUNDED & set(sample.labels), f"{sample.name} has a per-tenant/subject label {sample.labels}"
    names = {f.name for f in families}
    for required in (
        "grpc_server_handled",  # the parser strips _total from a counter family's name
        "grpc_server_handling_seconds",
        "gatehouse_decisions",
        "gatehouse_cache_requests",
        "gatehouse_single_flight_merges",
        "gatehouse_postgres_pool_connections",
        "gatehouse_redis_errors",
        "gatehouse_l2_circuit_open",
        "gatehouse_tenant_events_applied",
        "gatehouse_tenant_event_lag_seconds",
        "gatehouse_tenant_event_gaps",
        "gatehouse_relay_backlog_rows",
        "gatehouse_relay_backlog_oldest_seconds",
        "gatehouse_relay_publish_seconds",
        "gatehouse_argon2_verifications",
        "gatehouse_idempotency_replays",
        "gatehouse_health_serving",
        "gatehouse_decision_log_lines",
        "gatehouse_decision_log_queued",
        "gatehouse_build_info",
    ):
        assert required in names, required


async def test_calls_decisions_tiers_and_events_are_counted(
    measured: Sidecar, measured_client: Client, unique: str
) -> None:
    before = scrape(measured)
    tenant = await measured_client.tenant(f"metrics-counts-{unique}")
    request = access_pb2.CheckAccessRequest(
        tenant_id=tenant.id, subject=user("nobody"), permission="invoice.read", resource=common_pb2.Resource()
    )
    for _ in range(5):  # decided once, then remembered
        answer = await measured_client.access.CheckAccess(request)
    assert answer.reason == access_pb2.DECISION_REASON_NOT_A_MEMBER
    missing = access_pb2.CheckAccessRequest(
        tenant_id=str(uuid.uuid4()), subject=user("nobody"), permission="invoice.read", resource=common_pb2.Resource()
    )
    await measured_client.access.CheckAccess(missing)
    after = scrape(measured)

    def grew(name: str, **match: str) -> float:
        return total(after.get(name, {}), **match) - total(before.get(name, {}), **match)

    method = {"grpc_service": "gatehouse.v1.AccessService", "grpc_method": "CheckAccess"}
    assert grew("grpc_server_handled_total", grpc_code="OK", **method) == 6
    assert grew("grpc_server_handling_seconds_count", **method) == 6
    assert grew("grpc_server_handling_seconds_bucket", le="+Inf", **method) == 6
    assert grew("grpc_server_handled_total", grpc_method="CreateTenant", grpc_code="OK") == 1
    assert grew("gatehouse_decisions_total", reason="NOT_A_MEMBER") == 5
    assert grew("gatehouse_decisions_total", reason="TENANT_NOT_FOUND") == 1
    assert grew("gatehouse_cache_requests_total", tier="answers", result="hit") >= 4
    assert grew("gatehouse_cache_requests_total", tier="postgres", result="miss") >= 1  # the unknown tenant
    assert grew("gatehouse_cache_requests_total", tier="l1", result="miss") >= 1
    # The admin writes' events come back through the stream to this sidecar's subscriber.
    for _ in range(100):
        if grew("gatehouse_tenant_events_applied_total") >= 1 and grew("gatehouse_tenant_event_lag_seconds_count") >= 1:
            break
        await asyncio.sleep(0.05)
        after = scrape(measured)
    assert grew("gatehouse_tenant_events_applied_total") >= 1
    assert grew("gatehouse_tenant_event_lag_seconds_count") >= 1
    # Other sidecars on this database run relays too: whichever publishes observes it.
    assert grew("gatehouse_relay_publish_seconds_count") >= grew("gatehouse_relay_published_total")
    assert total(after["gatehouse_health_serving"], service="gatehouse.v1.AccessService") == 1
    assert total(after["gatehouse_postgres_pool_max_connections"]) == measured.settings.db_pool_max


def test_listen_setting() -> None:
    assert parse_listen("off") is None and parse_listen("") is None and parse_listen("OFF") is None
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9464", "localhost", "host:port", ":9464"):
        with pytest.raises(SystemExit):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_split_helpers() -> None:
    assert split_method("/gatehouse.v1.AccessService/CheckAccess") == ("gatehouse.v1.AccessService", "CheckAccess")
    assert split_key("admission.shed{class=hot}") == ("admission.shed", {"class": "hot"})
    assert split_key("events.gaps") == ("events.gaps", {})


def test_a_killed_serve_leaves_no_directory_behind_for_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `serve` killed outright cannot remove its multiprocess directory: the next
    start removes those whose process is gone, and never a live one's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv(MULTIPROC_ENV, "")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"gatehouse-metrics-{dead.pid}-abc").mkdir()
    (tmp_path / f"gatehouse-metrics-{os.getpid()}-live").mkdir()
    (tmp_path / "gatehouse-metrics-unrelated").mkdir()
    made = make_dir_env()
    assert os.environ[MULTIPROC_ENV] == made
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f"gatehouse-metrics-{dead.pid}-abc" not in left
    assert f"gatehouse-metrics-{os.getpid()}-live" in left and "gatehouse-metrics-unrelated" in left
    assert Path(made).name.startswith(f"gatehouse-metrics-{os.getpid()}-")


def test_a_scrape_that_never_finishes_its_request_is_dropped(tmp_path: Path) -> None:
    """prometheus_client's server holds a thread per connection: one that sends half a
    request and waits must not hold it for ever (the endpoint drops it after read_seconds)."""
    import socket

    from gatehouse.server.metrics import MetricsEndpoint

    endpoint = MetricsEndpoint("127.0.0.1", 0, directory=str(tmp_path), read_seconds=0.3)
    try:
        port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as half:
            half.sendall(b"GET /metr")
            half.settimeout(5)
            assert half.recv(1024) == b""  # closed by the server, well before our 5 s
        with socket.create_connection(("127.0.0.1", port), timeout=5) as whole:
            whole.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert whole.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        endpoint.close()
