"""A gRPC client for every Gatehouse service, with helpers the tests share."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.server.health import SERVICES
from gatehouse_client.v1 import access_pb2_grpc, admin_pb2, admin_pb2_grpc, common_pb2, config_pb2_grpc, lookup_pb2_grpc


@dataclass
class Client:
    """Stubs for every service of one sidecar, plus the admin credentials."""

    channel: grpc.aio.Channel
    access: access_pb2_grpc.AccessServiceStub
    config: config_pb2_grpc.ConfigServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    auth: tuple[tuple[str, str], ...]
    lookup: lookup_pb2_grpc.LookupServiceStub

    async def tenant(self, slug: str, *, activate: bool = True, **fields: object) -> admin_pb2.Tenant:
        tenant = await self.admin.CreateTenant(
            admin_pb2.CreateTenantRequest(slug=slug, name=slug.title(), **fields), metadata=self.auth
        )
        if activate:
            tenant = await self.admin.ActivateTenant(
                admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="test"), metadata=self.auth
            )
        return tenant

    async def grant(
        self, tenant_id: str, subject: common_pb2.Subject, role: str, scope: str, permissions: list[str] | None = None
    ) -> int:
        """Make `subject` a member holding `role` at `scope` (creating the role if permissions are given)."""
        if permissions is not None:
            await self.admin.CreateRole(
                admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=permissions),
                metadata=self.auth,
            )
        try:
            await self.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=subject), metadata=self.auth)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        response = await self.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=tenant_id, subject=subject, role=role, scope=scope),
            metadata=self.auth,
        )
        return response.revision

    async def tenant_key(self, tenant_id: str, permission: str) -> admin_pb2.CreateApiKeyResponse:
        """A key of `tenant_id` limited to `permission`, holding it through a role `checker`."""
        await self.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name="checker", permissions=[permission]),
            metadata=self.auth,
        )
        return await self.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(
                tenant_id=tenant_id, name="svc", permissions=[permission], roles=[admin_pb2.RoleGrant(role="checker")]
            ),
            metadata=self.auth,
        )


def make_client(target: str, operator_key: str, credentials: grpc.ChannelCredentials | None = None) -> Client:
    """A client for the sidecar at `target`: plaintext, or TLS with `credentials`."""
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    return Client(
        channel=channel,
        access=access_pb2_grpc.AccessServiceStub(channel),
        config=config_pb2_grpc.ConfigServiceStub(channel),
        admin=admin_pb2_grpc.AdminServiceStub(channel),
        auth=(("authorization", f"Bearer {operator_key}"),),
        lookup=lookup_pb2_grpc.LookupServiceStub(channel),
    )


def struct(values: dict[str, Any] | None) -> struct_pb2.Struct | None:
    """`values` as a Struct (attributes, context); None stays None (not given)."""
    if values is None:
        return None
    message = struct_pb2.Struct()
    message.update(values)
    return message


def user(name: str) -> common_pb2.Subject:
    return common_pb2.Subject(type="user", id=name)


async def health(channel: grpc.aio.Channel) -> dict[str, str]:
    """What `grpc.health.v1.Health/Check` answers for the whole server ('') and each service."""
    stub = health_pb2_grpc.HealthStub(channel)
    answers = {}
    for name in ("", *SERVICES):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        answers[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return answers


async def wait_for_health(channel: grpc.aio.Channel, status: str, *, bound: float) -> float:
    """Seconds until Health answers `status` ("SERVING", "NOT_SERVING") for the server and
    every service; AssertionError naming the last answers if that takes more than `bound`."""
    start = time.monotonic()
    while True:
        answers = await health(channel)
        took = time.monotonic() - start
        if set(answers.values()) == {status}:
            return took
        assert took <= bound, f"not all {status} after {took:.1f} s: {answers}"
        await asyncio.sleep(0.1)
