"""Logs of a real `gatehouse serve` (README "Logs"): JSON lines with the fields they
promise, an access line per AdminService call, the decision log, and no secret in any
line of any output, whichever method it was sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest

from gatehouse.logs import REQUIRED_FIELDS
from gatehouse.server.admin_auth import KEY_RE
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2

from tests.client import Client, make_client, user
from tests.processes import ServerProcess, sidecar_env, start_server

ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
BOOTSTRAP = "gh_op_" + secrets.token_urlsafe(32)
# Well-formed but unknown, and malformed: both must stay out of every line.
MADE_UP = f"gh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
MALFORMED = "not-a-gatehouse-key-" + secrets.token_urlsafe(24)
DECISION_FIELDS = (
    "time", "tenant", "subject", "permission", "scope", "allowed", "reason", "revision", "granted_by",
    "request_id", "trace_id", "method", "remembered",
)


class Run:
    """One server with every log on, its outputs in files read after it stopped."""

    def __init__(self, server: ServerProcess, stderr: Path, decisions: Path) -> None:
        self.server = server
        self.stderr_path = stderr
        self.decisions_path = decisions
        self.stdout = ""

    async def stop(self) -> None:
        # SIGTERM: the decision log's writer flushes what is queued before the exit.
        assert await self.server.stop() == 0
        assert self.server.process.stdout is not None
        self.stdout = self.server.process.stdout.read()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def decisions(self) -> str:
        return self.decisions_path.read_text()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
async def run(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    folder = tmp_path_factory.mktemp("logs")
    stderr = folder / "stderr.log"
    decisions = folder / "decisions.jsonl"
    env = {
        **sidecar_env(database_url, redis_url, redis_prefix, BOOTSTRAP),
        "GATEHOUSE_LOG_FORMAT": "json",
        "GATEHOUSE_LOG_LEVEL": "DEBUG",
        "GATEHOUSE_ACCESS_LOG_HOT": "1",
        "GATEHOUSE_DECISION_LOG": "all",
        "GATEHOUSE_DECISION_LOG_PATH": str(decisions),
        # Made-up keys fail on purpose: let every one be verified rather than refused unhashed.
        "GATEHOUSE_AUTH_FAILURES_BURST": "10000",
    }
    with stderr.open("w") as sink:
        server = await start_server(env, stderr=sink)
        result = Run(server, stderr, decisions)
        try:
            yield result
        finally:
            server.kill()


@pytest.fixture(scope="module")
async def remote(run: Run, operator_token: str) -> AsyncIterator[Client]:
    client = make_client(run.server.address, operator_token)
    yield client
    await client.channel.close()


async def _call_every_admin_method(channel: grpc.aio.Channel, token: str, body: bytes = b"") -> set[str]:
    """Every AdminService method (from the descriptor) with `token` as the bearer; the codes seen."""
    codes = set()
    for method in ADMIN.methods:
        call = channel.unary_unary(f"/{ADMIN.full_name}/{method.name}")
        try:
            await call(body, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            codes.add("OK")
        except grpc.aio.AioRpcError as error:
            codes.add(error.code().name)
    return codes


async def test_logs(run: Run, remote: Client, operator_token: str, unique: str) -> None:
    """One server run, then every check on what it wrote (the module's fixture stops it)."""
    # --- traffic: every admin method with every kind of credential, a key minted and used.
    await _call_every_admin_method(remote.channel, operator_token)
    await _call_every_admin_method(remote.channel, BOOTSTRAP)
    await _call_every_admin_method(remote.channel, MADE_UP)
    await _call_every_admin_method(remote.channel, MALFORMED)
    minted = await remote.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name=f"logs-{unique}", permissions=["*"]), metadata=remote.auth
    )
    new_secret = minted.secret
    assert new_secret.startswith("gh_")
    await _call_every_admin_method(remote.channel, new_secret)
    # Bodies that name a tenant, so the calls get past validation into the store.
    tenant = await remote.tenant(f"logs-{unique}")
    tenant_body = admin_pb2.GetTenantRequest(tenant_id=tenant.id).SerializeToString()
    await _call_every_admin_method(remote.channel, new_secret, tenant_body)
    # A tenant-admin key: its calls are authorized through DecisionService (decision-logged).
    tenant_key = await remote.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant.id, name="admin", permissions=["*"], roles=[admin_pb2.RoleGrant(role="admin")]
        ),
        metadata=remote.auth,
    )
    await _call_every_admin_method(remote.channel, tenant_key.secret, tenant_body)
    await remote.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=minted.key.id), metadata=remote.auth)

    # --- request ids, trace ids, decisions (allowed, denied, remembered).
    await remote.grant(tenant.id, user("alice"), "reader", "emea", ["invoice.read"])
    trace = secrets.token_hex(16)
    traced = (
        ("x-request-id", f"req-{unique}"),
        ("traceparent", f"00-{trace}-{secrets.token_hex(8)}-01"),
        ("authorization", f"Bearer {MADE_UP}"),  # the hot path ignores it; it must not be logged either
    )
    ask = access_pb2.CheckAccessRequest(
        tenant_id=tenant.id, subject=user("alice"), permission="invoice.read",
        resource=common_pb2.Resource(scope="emea/de"),
    )
    denied = access_pb2.CheckAccessRequest(
        tenant_id=tenant.id, subject=user("alice"), permission="invoice.delete",
        resource=common_pb2.Resource(scope="emea/de"),
    )
    for _ in range(3):  # the second and third answers are remembered ones
        assert (await remote.access.CheckAccess(ask, metadata=traced)).allowed
        assert not (await remote.access.CheckAccess(denied, metadata=traced)).allowed
    batch = await remote.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[ask, denied]))
    assert [a.allowed for a in batch.results] == [True, False]
    await remote.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=tenant.id))
    watch = remote.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    assert (await watch.read()).id == tenant.id
    watch.cancel()
    # The server sees the cancellation and ends the stream, logging it: waited for (a fixed
    # 0.5 s was not always enough on a loaded machine), at most 10 s.
    def stream_logged() -> bool:
        for text in run.stderr.splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                line = json.loads(text)
                if line.get("logger") == "gatehouse.access" and line.get("method", "").endswith("/WatchTenantConfig"):
                    return True
        return False

    for _ in range(100):
        if stream_logged():
            break
        await asyncio.sleep(0.1)
    await run.stop()

    # --- no secret anywhere: stderr, stdout, the decision log. A key's id is no secret
    # (it names the key in the audit trail); its secret part and the whole token are.
    everything = run.stderr + run.stdout + run.decisions
    for secret in (BOOTSTRAP, MADE_UP, MALFORMED, operator_token, new_secret, tenant_key.secret):
        assert secret not in everything
        key = KEY_RE.fullmatch(secret)
        if key is not None:
            assert key["secret"] not in everything
    assert "Bearer" not in everything or "Bearer [REDACTED]" in everything

    # --- every stderr line is JSON with the promised fields.
    lines = run.json_lines()
    assert lines
    for line in lines:
        missing = [name for name in REQUIRED_FIELDS if name not in line]
        assert not missing, (missing, line)
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

    # --- one access line per AdminService call: every method, with its code and duration.
    access = [line for line in lines if line["logger"] == "gatehouse.access"]
    admin_lines = [line for line in access if line["method"].startswith(f"/{ADMIN.full_name}/")]
    assert {line["method"].rpartition("/")[2] for line in admin_lines} == {m.name for m in ADMIN.methods}
    assert len(admin_lines) >= 6 * len(ADMIN.methods)
    for line in access:
        assert isinstance(line["duration_ms"], float) and line["code"] and line["peer"] and line["request_id"]
    authenticated = [line for line in admin_lines if line.get("actor", "").startswith("api_key/")]
    assert authenticated and all(line["code"] != "UNAUTHENTICATED" for line in authenticated)
    assert any(line.get("tenant") == tenant.id for line in admin_lines)
    # The hot path's access lines (GATEHOUSE_ACCESS_LOG_HOT=1) carry the caller's ids.
    checks = [line for line in access if line["method"].endswith("/CheckAccess")]
    assert len(checks) == 6
    assert all(line["request_id"] == f"req-{unique}" and line["trace_id"] == trace for line in checks)
    assert all(line["tenant"] == tenant.id for line in checks)
    (watched,) = [line for line in access if line["method"].endswith("/WatchTenantConfig")]
    assert (watched["code"], watched["messages"], watched["tenant"]) == ("CANCELLED", 1, tenant.id)

    # --- the decision log: every answer (all), remembered ones too, with its request id.
    decisions = [json.loads(line) for line in run.decisions.splitlines()]
    for decision in decisions:
        assert set(DECISION_FIELDS) <= set(decision), decision
    asked = [d for d in decisions if d["method"].endswith("/CheckAccess")]
    assert len(asked) == 6
    assert sorted((d["allowed"], d["remembered"]) for d in asked) == sorted(
        [(True, False), (True, True), (True, True), (False, False), (False, True), (False, True)]
    )
    allowed = next(d for d in asked if d["allowed"])
    assert allowed["granted_by"] == "reader@emea" and allowed["reason"] == "ALLOWED"
    assert allowed["tenant"] == tenant.id and allowed["subject"] == "user/alice" and allowed["scope"] == "emea/de"
    assert all(d["request_id"] == f"req-{unique}" and d["trace_id"] == trace for d in asked)
    refused = next(d for d in asked if not d["allowed"])
    assert refused["reason"] == "NO_GRANT" and refused["granted_by"] == ""
    assert len([d for d in decisions if d["method"].endswith("/CheckAccessBatch")]) == 2
    # AdminService's own authorization questions are decisions too.
    assert any(d["method"].startswith(f"/{ADMIN.full_name}/") for d in decisions)


async def test_bad_log_settings_stop_the_server_with_the_reason(database_url: str, redis_url: str) -> None:
    for name, value in (("GATEHOUSE_LOG_FORMAT", "xml"), ("GATEHOUSE_DECISION_LOG", "some")):
        process = await asyncio.create_subprocess_exec(
            "python", "-m", "gatehouse.server.cli", "serve", "--listen", "127.0.0.1:0",
            env={**_environ(), "GATEHOUSE_DATABASE_URL": database_url, "GATEHOUSE_REDIS_URL": redis_url, name: value},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode != 0
        assert name in err.decode(), err


def _environ() -> dict[str, str]:
    import os
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
