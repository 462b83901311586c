"""AdminService: the thin write surface. servicer → store transaction (row + revision
bump + audit + outbox) → cache told of the new revision.

Authentication, auditing of denied and failed calls, and error mapping live in one
decorator, `admin_call`, used by every method; the methods only validate and delegate.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.validate import (
    require_id,
    require_page_size,
    require_patterns,
    require_revision,
    require_scope,
)
from gatehouse.errors import PermissionDenied, Unauthenticated
from gatehouse.server import convert
from gatehouse.server.admin_auth import AdminAuthenticator, request_id
from gatehouse.server.errors import abort, translate
from gatehouse.store.api import Actor, ConfigPatch, Store
from gatehouse.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
Method = Callable[[Any, Any, Actor], Awaitable[R]]


def _target(request: Any) -> str:
    """What a call acts on, for the audit row: the tenant plus the call's own key fields."""
    parts = []
    for name in ("tenant_id", "slug", "name"):
        value = getattr(request, name, "")
        if isinstance(value, str) and value:
            parts.append(f"{name}={value}")
    for name in ("subject",):
        if request.DESCRIPTOR.fields_by_name.get(name) and request.HasField(name):
            parts.append(f"subject={request.subject.type}/{request.subject.id}")
    for name in ("role", "scope"):
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            parts.append(f"{name}={value}")
    text = " ".join(parts)
    # Never let a hostile 10 KB or control-character id through to the audit table as-is.
    return "".join(c if c.isprintable() else "?" for c in text[:256])


def _audit_tenant(request: Any) -> str | None:
    value = getattr(request, "tenant_id", "")
    return value if isinstance(value, str) and UUID_RE.fullmatch(value) else None


def admin_call(action: str, *, mutation: bool = True) -> Callable[[Method[R]], Callable[..., Awaitable[R]]]:
    """Authenticate, run, audit what the store did not (reads, denials, failures), map errors."""

    def decorate(method: Method[R]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: "AdminServicer", request: Any, context: grpc.aio.ServicerContext) -> R:
            metadata = tuple(context.invocation_metadata() or ())
            actor = Actor("anonymous", request_id(metadata))
            try:
                actor = self._auth.authenticate(metadata, actor.request_id)
                response = await method(self, request, actor)
                if not mutation:
                    await self._audit(actor, request, action, "ok", "")
                return response
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = translate(exc)
                outcome = "denied" if isinstance(error, (Unauthenticated, PermissionDenied)) else "error"
                await self._audit(actor, request, action, outcome, error.reason)
                await abort(context, error)
                raise  # unreachable: abort raises

        return wrapper

    return decorate


def _transition_rpc(action: Action) -> Callable[..., Awaitable[admin_pb2.Tenant]]:
    @admin_call(f"tenant.{action.value}")
    async def rpc(self: "AdminServicer", request: admin_pb2.TenantTransitionRequest, actor: Actor) -> admin_pb2.Tenant:
        return await self._transition(request, actor, action)

    rpc.__name__ = f"{action.value.title()}Tenant"
    return rpc


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: Store, cache: PolicyCache, auth: AdminAuthenticator) -> None:
        self._store = store
        self._cache = cache
        self._auth = auth

    async def _audit(self, actor: Actor, request: Any, action: str, outcome: str, reason: str) -> None:
        try:
            await self._store.record_audit(
                actor, tenant_id=_audit_tenant(request), action=action, target=_target(request), outcome=outcome,
                reason=reason,
            )
        except Exception:  # the call's own outcome matters more than its audit row
            log.exception("could not write audit row for %s (%s)", action, outcome)

    async def _changed(self, tenant_id: str, revision: int, *, config: bool = True) -> None:
        """This process committed `revision`; `config=False` when the write cannot change
        the tenant's config (roles, members, assignments), so config watchers sleep on."""
        await self._cache.tenant_changed(tenant_id, revision, config=config)

    # --- tenants ---

    @admin_call("tenant.create")
    async def CreateTenant(self, request: admin_pb2.CreateTenantRequest, actor: Actor) -> admin_pb2.Tenant:
        record = await self._store.create_tenant(
            actor,
            slug=convert.slug("slug", request.slug),
            name=convert.name("name", request.name),
            plan=convert.optional_id("plan", request.plan),
            region=convert.optional_id("region", request.region),
            settings=convert.struct_to_dict("settings", request.settings),
        )
        await self._changed(record.id, record.revision)
        return convert.tenant_message(record)

    @admin_call("tenant.get", mutation=False)
    async def GetTenant(self, request: admin_pb2.GetTenantRequest, actor: Actor) -> admin_pb2.Tenant:
        return convert.tenant_message(await self._store.get_tenant(require_id("tenant_id", request.tenant_id)))

    @admin_call("tenant.list", mutation=False)
    async def ListTenants(self, request: admin_pb2.ListTenantsRequest, actor: Actor) -> admin_pb2.ListTenantsResponse:
        page = await self._store.list_tenants(
            page_size=require_page_size("page_size", request.page_size),
            page_token=request.page_token,
            status=convert.tenant_status("status", request.status),
            plan=convert.optional_id("plan", request.plan),
            region=convert.optional_id("region", request.region),
        )
        return admin_pb2.ListTenantsResponse(
            tenants=[convert.tenant_message(t) for t in page.items], next_page_token=page.next_page_token
        )

    @admin_call("tenant.update")
    async def UpdateTenant(self, request: admin_pb2.UpdateTenantRequest, actor: Actor) -> admin_pb2.Tenant:
        record = await self._store.update_tenant(
            actor,
            require_id("tenant_id", request.tenant_id),
            expected_revision=require_revision("expected_revision", request.expected_revision),
            name=convert.name("name", request.name) if request.HasField("name") else None,
            plan=require_id("plan", request.plan) if request.HasField("plan") else None,
            region=convert.optional_id("region", request.region) if request.HasField("region") else None,
        )
        await self._changed(record.id, record.revision)
        return convert.tenant_message(record)

    @admin_call("tenant.config.patch")
    async def PatchTenantConfig(self, request: admin_pb2.PatchTenantConfigRequest, actor: Actor) -> admin_pb2.Tenant:
        patch = ConfigPatch(
            settings_patch=convert.struct_to_dict("settings_patch", request.settings_patch)
            if request.HasField("settings_patch")
            else None,
            set_flags=convert.key_map("set_flag_overrides", request.set_flag_overrides),
            clear_flags=convert.key_list("clear_flag_overrides", request.clear_flag_overrides),
            set_quotas=convert.key_map("set_quota_overrides", request.set_quota_overrides),
            clear_quotas=convert.key_list("clear_quota_overrides", request.clear_quota_overrides),
        )
        record = await self._store.patch_tenant_config(
            actor,
            require_id("tenant_id", request.tenant_id),
            patch,
            expected_revision=require_revision("expected_revision", request.expected_revision),
        )
        await self._changed(record.id, record.revision)
        return convert.tenant_message(record)

    async def _transition(self, request: admin_pb2.TenantTransitionRequest, actor: Actor, action: Action) -> admin_pb2.Tenant:
        record = await self._store.transition_tenant(
            actor,
            require_id("tenant_id", request.tenant_id),
            action,
            reason=convert.description("reason", request.reason),
            expected_revision=require_revision("expected_revision", request.expected_revision),
            confirm=request.confirm,
        )
        await self._changed(record.id, record.revision)
        return convert.tenant_message(record)

    # One RPC per lifecycle action, all through the transition table.
    ActivateTenant = _transition_rpc(Action.ACTIVATE)
    SuspendTenant = _transition_rpc(Action.SUSPEND)
    ResumeTenant = _transition_rpc(Action.RESUME)
    ArchiveTenant = _transition_rpc(Action.ARCHIVE)
    RestoreTenant = _transition_rpc(Action.RESTORE)
    DeleteTenant = _transition_rpc(Action.DELETE)

    # --- plans ---

    @admin_call("plan.upsert")
    async def UpsertPlan(self, request: admin_pb2.UpsertPlanRequest, actor: Actor) -> admin_pb2.UpsertPlanResponse:
        plan, affected = await self._store.upsert_plan(actor, convert.plan("plan", request.plan))
        for tenant_id, revision in affected:
            await self._changed(tenant_id, revision)
        return admin_pb2.UpsertPlanResponse(plan=convert.plan_message(plan), tenants_affected=len(affected))

    @admin_call("plan.list", mutation=False)
    async def ListPlans(self, request: admin_pb2.ListPlansRequest, actor: Actor) -> admin_pb2.ListPlansResponse:
        return admin_pb2.ListPlansResponse(plans=[convert.plan_message(p) for p in await self._store.list_plans()])

    # --- roles ---

    @admin_call("role.create")
    async def CreateRole(self, request: admin_pb2.CreateRoleRequest, actor: Actor) -> admin_pb2.RoleResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        role, revision = await self._store.create_role(
            actor,
            tenant_id,
            name=require_id("name", request.name),
            permissions=require_patterns("permissions", request.permissions),
            description=convert.description("description", request.description),
        )
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.RoleResponse(role=convert.role_message(role), revision=revision)

    @admin_call("role.update")
    async def UpdateRole(self, request: admin_pb2.UpdateRoleRequest, actor: Actor) -> admin_pb2.RoleResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        role, revision = await self._store.update_role(
            actor,
            tenant_id,
            name=require_id("name", request.name),
            permissions=require_patterns("permissions", request.permissions),
            description=convert.description("description", request.description),
            expected_revision=require_revision("expected_revision", request.expected_revision),
        )
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.RoleResponse(role=convert.role_message(role), revision=revision)

    @admin_call("role.delete")
    async def DeleteRole(self, request: admin_pb2.DeleteRoleRequest, actor: Actor) -> admin_pb2.MutationResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        revision = await self._store.delete_role(actor, tenant_id, name=require_id("name", request.name))
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("role.list", mutation=False)
    async def ListRoles(self, request: admin_pb2.ListRolesRequest, actor: Actor) -> admin_pb2.ListRolesResponse:
        roles, revision = await self._store.list_roles(require_id("tenant_id", request.tenant_id))
        return admin_pb2.ListRolesResponse(roles=[convert.role_message(r) for r in roles], revision=revision)

    # --- members ---

    @admin_call("member.add")
    async def AddMember(self, request: admin_pb2.AddMemberRequest, actor: Actor) -> admin_pb2.MemberResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        member, revision = await self._store.add_member(actor, tenant_id, convert.subject("subject", request.subject))
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.MemberResponse(member=convert.member_message(member), revision=revision)

    @admin_call("member.remove")
    async def RemoveMember(self, request: admin_pb2.RemoveMemberRequest, actor: Actor) -> admin_pb2.MutationResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        revision = await self._store.remove_member(actor, tenant_id, convert.subject("subject", request.subject))
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("member.list", mutation=False)
    async def ListMembers(self, request: admin_pb2.ListMembersRequest, actor: Actor) -> admin_pb2.ListMembersResponse:
        page = await self._store.list_members(
            require_id("tenant_id", request.tenant_id),
            page_size=require_page_size("page_size", request.page_size),
            page_token=request.page_token,
        )
        return admin_pb2.ListMembersResponse(
            members=[convert.member_message(m) for m in page.items], next_page_token=page.next_page_token
        )

    # --- role assignments ---

    @admin_call("role.assign")
    async def AssignRole(self, request: admin_pb2.AssignRoleRequest, actor: Actor) -> admin_pb2.RoleAssignmentResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        assignment, revision = await self._store.assign_role(
            actor,
            tenant_id,
            convert.subject("subject", request.subject),
            role=require_id("role", request.role),
            scope=require_scope("scope", request.scope),
        )
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.RoleAssignmentResponse(assignment=convert.assignment_message(assignment), revision=revision)

    @admin_call("role.revoke")
    async def RevokeRole(self, request: admin_pb2.RevokeRoleRequest, actor: Actor) -> admin_pb2.MutationResponse:
        tenant_id = require_id("tenant_id", request.tenant_id)
        revision = await self._store.revoke_role(
            actor,
            tenant_id,
            convert.subject("subject", request.subject),
            role=require_id("role", request.role),
            scope=require_scope("scope", request.scope),
        )
        await self._changed(tenant_id, revision, config=False)
        return admin_pb2.MutationResponse(revision=revision)

    @admin_call("role.assignments.list", mutation=False)
    async def ListRoleAssignments(
        self, request: admin_pb2.ListRoleAssignmentsRequest, actor: Actor
    ) -> admin_pb2.ListRoleAssignmentsResponse:
        page = await self._store.list_role_assignments(
            require_id("tenant_id", request.tenant_id),
            subject=convert.optional_subject("subject", request.subject),
            page_size=require_page_size("page_size", request.page_size),
            page_token=request.page_token,
        )
        return admin_pb2.ListRoleAssignmentsResponse(
            assignments=[convert.assignment_message(a) for a in page.items], next_page_token=page.next_page_token
        )

    # --- audit ---

    @admin_call("audit.list", mutation=False)
    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, actor: Actor
    ) -> admin_pb2.ListAuditEventsResponse:
        page = await self._store.list_audit_events(
            tenant_id=convert.optional_id("tenant_id", request.tenant_id),
            actor=request.actor[:200],
            action=request.action[:200],
            since=convert.seconds(request.since, request.HasField("since")),
            until=convert.seconds(request.until, request.HasField("until")),
            page_size=require_page_size("page_size", request.page_size),
            page_token=request.page_token,
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[convert.audit_message(e) for e in page.items], next_page_token=page.next_page_token
        )
