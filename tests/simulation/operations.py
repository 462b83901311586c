"""The admin operations the simulation draws from, one small class each.

Every operation knows four things: how likely it is (`weight`), how to draw a random
request biased towards interesting cases, including ones that must fail (`draw`), what
the reference model says the call does (`expect`, which applies it to the model), and
how to read the server's response in the model's vocabulary (`observe`). Adding an
operation (API keys, say, with `api_key/<id>` subjects) is one more class in
`OPERATIONS`; the loop in the test does not change.

Now and then a request is malformed on purpose: a tenant id in another spelling of the
same uuid (`Misspelled` wraps any tenant-scoped operation), an assignment at a scope with
a `.` or `..` segment. The model refuses those (INVALID_ARGUMENT naming the fields) and
changes nothing, so a server that wrote anyway shows up at the next check as a revision
the model does not have.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf import text_format

from gatehouse_client.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from tests.simulation.model import LIFECYCLE, OWNER_CONDITION, SYSTEM_ROLES, Feature, Outcome, Status, World
from tests.spellings import uuid_spellings as misspellings

# --- the shared vocabulary: the same ids, role names and scopes in both tenants ----------

SUBJECTS = ("user/alice", "user/bob", "user/carol", "user/dave", "service/billing", "service/reports")
# Never made a member of anything: every check for them must say NOT_A_MEMBER (or earlier).
STRANGERS = ("user/mallory", "service/unknown")
CUSTOM_ROLES = ("editor", "billing-admin", "auditor", "reader", "ops")
ROLE_NAMES = (*CUSTOM_ROLES, *SYSTEM_ROLES, "ghost")
PATTERNS = (
    "invoice.*",
    "invoice.read",
    "invoice.line.edit",
    "*.read",
    "*.export",
    "report.*",
    "report.view",
    "doc.*",
    "doc.edit",
    "billing.invoice.*",
    "analytics.*",
    "audit.log.read",
    "*.line.*",
    "*.list",
    "user.*",
)
GRANT_SCOPES = ("", "emea", "emea/de", "emea/de/berlin", "emea/dex", "amer", "amer/us", "amer/us/nyc")
CHECK_SCOPES = (*GRANT_SCOPES, "emea/de/berlin/mitte", "emea/dex/x", "emea/d", "amer/usa", "apac")
# Scopes with `.` or `..` segments: each names (or would, resolved) a scope of the trees above.
DOT_SCOPES = (".", "..", "emea/..", "../emea", "emea/./de", "emea/de/..", "emea/de/berlin/.", "amer/../emea/de")
DOT_SCOPE_RATE = 0.04  # of the assignments drawn (checks: the test's probes)
# Of the assignments drawn: until a short random time ahead (s), now and then one already
# past (refused: INVALID_ARGUMENT naming expires_at).
EXPIRY_RATE = 0.3
EXPIRY_AHEAD = (0.3, 3.0)
PAST_EXPIRY_RATE = 0.02
# AssignRole `on_existing`: of the assignments drawn, REPLACE (mostly nothing held: a plain
# assign) and REFUSE (the default spelled out); of the replacements drawn (`ReplaceGrant`,
# mostly of a grant held), REFUSE or the default instead, and the share aimed at a root
# owner grant (giving the last lasting owner a condition or expiry is LAST_OWNER).
ASSIGN_REPLACE_RATE = 0.1
ASSIGN_REFUSE_RATE = 0.1
REPLACE_REFUSE_RATE = 0.15
REPLACE_OWNER_RATE = 0.25
REPLACE_CONDITION_RATE = 0.35
PERMISSIONS = (
    "invoice.read",
    "invoice.write",
    "invoice.list",
    "invoice.line.edit",
    "invoice",
    "report.read",
    "report.export",
    "report.view",
    "doc.edit",
    "doc.get",
    "billing.invoice.pay",
    "billing.invoice.read",
    "analytics.dashboard.view",
    "audit.log.read",
    "audit.log.export",
    "user.delete",
    "read",
    "team.line.item.read",
)
FEATURES = ("reports", "exports", "analytics", "audit")
FLAG_KEYS = (*FEATURES, "ghost-flag")
GATE_POOL = ("report.*", "*.export", "analytics.*", "billing.invoice.*", "audit.*", "audit.log.read", "*.line.*")
VERBS = tuple(LIFECYCLE)
WAY_BACK = {Status.DRAFT: "Activate", Status.SUSPENDED: "Resume", Status.ARCHIVED: "Restore"}


def initial_plans(unique: str) -> dict[str, dict[str, Feature]]:
    """The plans the simulation starts from (platform-wide, so named per run)."""
    return {
        f"sim-{unique}-basic": {
            "reports": Feature(False, ("report.*",)),
            "exports": Feature(True, ("*.export",)),
            "analytics": Feature(False, ("analytics.*",)),
        },
        f"sim-{unique}-pro": {
            "reports": Feature(True, ("report.*",)),
            "exports": Feature(True, ("*.export",)),
            "analytics": Feature(True, ("analytics.*", "billing.invoice.*")),
            "audit": Feature(False, ("audit.*",)),
        },
        f"sim-{unique}-spare": {},
    }


def subject_message(key: str) -> common_pb2.Subject:
    kind, _, name = key.partition("/")
    return common_pb2.Subject(type=kind, id=name)


def subject_key(message: common_pb2.Subject) -> str:
    return f"{message.type}/{message.id}"


def status_name(value: int) -> str:
    return common_pb2.TenantStatus.Name(value).removeprefix("TENANT_STATUS_")  # type: ignore[arg-type]


# --- the simulation's own state (which tenants it plays with), next to the model ---------


@dataclass
class Slot:
    """One of the two tenants. When its tenant is deleted, a new one takes the slot."""

    label: str
    tenant_id: str = ""
    generation: int = 0

    def slug(self, unique: str) -> str:
        return f"sim-{unique}-{self.label}-{self.generation}"


@dataclass
class Sim:
    rng: random.Random
    world: World
    unique: str
    slots: list[Slot]
    graveyard: list[str] = field(default_factory=list)  # ids of deleted tenants, still asked about
    expiry_rate: float = EXPIRY_RATE  # 0 while the test waits for every grant to expire (to sweep)

    @property
    def plans(self) -> list[str]:
        return sorted(name for name in self.world.plans if name.startswith(f"sim-{self.unique}-"))

    def live_ids(self) -> list[str]:
        return [slot.tenant_id for slot in self.slots if slot.tenant_id]

    def unknown_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def target(self) -> str:
        """A tenant to act on: mostly one of the two, now and then a deleted or unknown one."""
        roll = self.rng.random()
        if roll < 0.03 and self.graveyard:
            return self.rng.choice(self.graveyard)
        if roll < 0.05:
            return self.unknown_id()
        return self.rng.choice(self.live_ids())

    def misspell(self, tenant_id: str) -> str:
        return self.rng.choice(sorted(misspellings(tenant_id).values()))

    def grant_scope(self) -> str:
        if self.rng.random() < DOT_SCOPE_RATE:
            return self.rng.choice(DOT_SCOPES)
        return self.rng.choice(GRANT_SCOPES)

    def revision(self, tenant_id: str) -> int:
        tenant = self.world.tenants.get(tenant_id)
        return tenant.revision if tenant else 0

    def members(self, tenant_id: str) -> list[str]:
        tenant = self.world.tenants.get(tenant_id)
        return sorted(tenant.members) if tenant else []

    def subject(self, tenant_id: str, member_bias: float) -> str:
        members = self.members(tenant_id)
        if members and self.rng.random() < member_bias:
            return self.rng.choice(members)
        return self.rng.choice(SUBJECTS)

    def role(self, tenant_id: str, existing_bias: float) -> str:
        tenant = self.world.tenants.get(tenant_id)
        if tenant and self.rng.random() < existing_bias:
            return self.rng.choice(sorted(tenant.roles))
        return self.rng.choice(ROLE_NAMES)

    def custom_role(self, tenant_id: str) -> str:
        """Mostly one of the tenant's own roles (system roles and unknown names now and then)."""
        tenant = self.world.tenants.get(tenant_id)
        custom = sorted(name for name in tenant.roles if name not in SYSTEM_ROLES) if tenant else []
        if custom and self.rng.random() < 0.75:
            return self.rng.choice(custom)
        return self.rng.choice(ROLE_NAMES)

    def permissions(self) -> list[str]:
        if self.rng.random() < 0.05:
            return []
        if self.rng.random() < 0.03:
            return ["*"]
        return self.rng.sample(PATTERNS, self.rng.randint(1, 3))

    def expires_at(self) -> float | None:
        """An expiry (unix seconds) for a grant being drawn, or None (for good)."""
        roll = self.rng.random()
        # Whole milliseconds: the store keeps microseconds, so a listing's expiry is the
        # request's exactly once both are rounded to the millisecond.
        if roll < PAST_EXPIRY_RATE:
            return round(time.time() - self.rng.uniform(1.0, 3600.0), 3)
        if roll < PAST_EXPIRY_RATE + self.expiry_rate:
            return round(time.time() + self.rng.uniform(*EXPIRY_AHEAD), 3)
        return None

    def expected_revision(self, tenant_id: str) -> int:
        """0 (don't check) mostly; sometimes the current revision, sometimes a stale one."""
        roll = self.rng.random()
        current = self.revision(tenant_id)
        if roll < 0.2:
            return current
        if roll < 0.3:
            return max(1, current + self.rng.choice((-1, 1)))
        return 0


# --- operations ----------------------------------------------------------------------------


class Operation:
    """One admin RPC: draw a request, predict it with the model, read the server's answer."""

    rpc: ClassVar[str]
    base_weight: ClassVar[float] = 1.0
    mutation: ClassVar[bool] = True

    def weight(self, sim: Sim) -> float:
        return self.base_weight

    def draw(self, sim: Sim) -> Any:
        raise NotImplementedError

    def expect(self, world: World, request: Any, response: Any) -> Outcome:
        """What the model says (and, when OK, does). `response` is the server's answer or
        None; only CreateTenant reads it, for the id the server chose."""
        raise NotImplementedError

    def observe(self, request: Any, response: Any) -> Outcome:
        return Outcome(revision=response.revision)

    def committed(self, sim: Sim, request: Any, response: Any) -> None:
        """After both agreed on OK: bookkeeping of the simulation itself."""

    async def call(self, admin: admin_pb2_grpc.AdminServiceStub, request: Any, metadata: Any) -> Any:
        return await getattr(admin, self.rpc)(request, metadata=metadata)

    def describe(self, request: Any) -> str:
        return f"{self.rpc}({text_format.MessageToString(request, as_one_line=True)})"

    def tenant_of(self, request: Any) -> str | None:
        return getattr(request, "tenant_id", None) or None

    def message(self, request: Any) -> Any:
        """The protobuf message that is sent."""
        return request

    def retarget(self, request: Any, tenant_id: str) -> Any:
        """The same request, sent to another tenant (to recognise a cross-tenant answer)."""
        if "tenant_id" not in request.DESCRIPTOR.fields_by_name:
            return None
        moved = type(request)()
        moved.CopyFrom(request)
        moved.tenant_id = tenant_id
        return moved


def _tenant_outcome(tenant: admin_pb2.Tenant) -> Outcome:
    return Outcome(
        revision=tenant.revision,
        facts={
            "id": tenant.id,
            "slug": tenant.slug,
            "status": status_name(tenant.status),
            "plan": tenant.plan,
            "flag_overrides": dict(tenant.flag_overrides),
        },
    )


def _with(outcome: Outcome, **facts: object) -> Outcome:
    """An OK outcome with more facts; a refusal unchanged."""
    if outcome.code != "OK":
        return outcome
    return Outcome(outcome.code, outcome.reason, outcome.revision, {**outcome.facts, **facts})


class CreateTenant(Operation):
    rpc = "CreateTenant"

    def weight(self, sim: Sim) -> float:
        empty = any(
            not slot.tenant_id or sim.world.tenants[slot.tenant_id].status is Status.DELETED for slot in sim.slots
        )
        return 40.0 if empty else 0.3

    def draw(self, sim: Sim) -> admin_pb2.CreateTenantRequest:
        plan = sim.rng.choice(sim.plans)
        if sim.rng.random() < 0.05:
            plan = f"sim-{sim.unique}-nope"
        for slot in sim.slots:
            if not slot.tenant_id or sim.world.tenants[slot.tenant_id].status is Status.DELETED:
                slug = slot.slug(sim.unique)
                break
        else:
            # Both slots are taken: try to take the other tenant's slug (must fail).
            slug = sim.world.tenants[sim.rng.choice(sim.live_ids())].slug
        return admin_pb2.CreateTenantRequest(slug=slug, name=slug.title(), plan=plan)

    def expect(self, world: World, request: admin_pb2.CreateTenantRequest, response: Any) -> Outcome:
        return world.create_tenant(request.slug, request.plan, response.id if response is not None else "")

    def observe(self, request: Any, response: admin_pb2.Tenant) -> Outcome:
        return _tenant_outcome(response)

    def committed(self, sim: Sim, request: admin_pb2.CreateTenantRequest, response: admin_pb2.Tenant) -> None:
        for slot in sim.slots:
            if request.slug == slot.slug(sim.unique):
                if slot.tenant_id:
                    sim.graveyard.append(slot.tenant_id)
                slot.tenant_id = response.id
                slot.generation += 1


class GetTenant(Operation):
    rpc = "GetTenant"
    base_weight = 1.0
    mutation = False

    def draw(self, sim: Sim) -> admin_pb2.GetTenantRequest:
        return admin_pb2.GetTenantRequest(tenant_id=sim.target())

    def expect(self, world: World, request: admin_pb2.GetTenantRequest, response: Any) -> Outcome:
        return world.get_tenant(request.tenant_id)

    def observe(self, request: Any, response: admin_pb2.Tenant) -> Outcome:
        return _tenant_outcome(response)


class UpdateTenantPlan(Operation):
    rpc = "UpdateTenant"
    base_weight = 2.0

    def draw(self, sim: Sim) -> admin_pb2.UpdateTenantRequest:
        tenant_id = sim.target()
        plan = sim.rng.choice(sim.plans) if sim.rng.random() < 0.9 else f"sim-{sim.unique}-nope"
        return admin_pb2.UpdateTenantRequest(
            tenant_id=tenant_id, plan=plan, expected_revision=sim.expected_revision(tenant_id)
        )

    def expect(self, world: World, request: admin_pb2.UpdateTenantRequest, response: Any) -> Outcome:
        return world.update_tenant_plan(request.tenant_id, request.plan, request.expected_revision)

    def observe(self, request: Any, response: admin_pb2.Tenant) -> Outcome:
        return _tenant_outcome(response)


class Transition(Operation):
    """Any lifecycle RPC, legal or not, now and then the terminal DeleteTenant."""

    rpc = "<verb>Tenant"
    base_weight = 6.0

    def weight(self, sim: Sim) -> float:
        # A tenant that is not ACTIVE draws transitions sooner, so most checks meet an
        # ACTIVE tenant while suspension, archival and drafts still come round often.
        idle = sum(
            sim.world.tenants[t].status in (Status.DRAFT, Status.SUSPENDED, Status.ARCHIVED) for t in sim.live_ids()
        )
        return self.base_weight + 6.0 * idle

    def draw(self, sim: Sim) -> tuple[str, admin_pb2.TenantTransitionRequest]:
        tenant_id = sim.target()
        tenant = sim.world.tenants.get(tenant_id)
        roll = sim.rng.random()
        confirm = sim.rng.random() < 0.5
        if tenant is not None and tenant.status is Status.ARCHIVED and roll < 0.15:
            verb, confirm = "Delete", True
        elif tenant is not None and tenant.status in WAY_BACK and roll < 0.7:
            verb = WAY_BACK[tenant.status]
        else:
            verb = sim.rng.choice(VERBS)
        request = admin_pb2.TenantTransitionRequest(
            tenant_id=tenant_id,
            reason=f"sim {verb.lower()}",
            confirm=confirm,
            expected_revision=sim.expected_revision(tenant_id),
        )
        return verb, request

    def expect(self, world: World, request: tuple[str, admin_pb2.TenantTransitionRequest], response: Any) -> Outcome:
        verb, message = request
        return world.transition(
            message.tenant_id, verb, confirm=message.confirm, expected_revision=message.expected_revision
        )

    async def call(self, admin: admin_pb2_grpc.AdminServiceStub, request: Any, metadata: Any) -> Any:
        verb, message = request
        return await getattr(admin, f"{verb}Tenant")(message, metadata=metadata)

    def describe(self, request: tuple[str, admin_pb2.TenantTransitionRequest]) -> str:
        verb, message = request
        return f"{verb}Tenant({text_format.MessageToString(message, as_one_line=True)})"

    def tenant_of(self, request: tuple[str, admin_pb2.TenantTransitionRequest]) -> str | None:
        return request[1].tenant_id

    def message(self, request: tuple[str, admin_pb2.TenantTransitionRequest]) -> admin_pb2.TenantTransitionRequest:
        return request[1]

    def retarget(self, request: tuple[str, admin_pb2.TenantTransitionRequest], tenant_id: str) -> Any:
        verb, message = request
        return verb, super().retarget(message, tenant_id)

    def observe(self, request: Any, response: admin_pb2.Tenant) -> Outcome:
        return _tenant_outcome(response)


class PatchFlags(Operation):
    rpc = "PatchTenantConfig"
    base_weight = 4.0

    def draw(self, sim: Sim) -> admin_pb2.PatchTenantConfigRequest:
        tenant_id = sim.target()
        keys = sim.rng.sample(FLAG_KEYS, sim.rng.randint(1, 3))
        set_flags = {key: sim.rng.random() < 0.5 for key in keys if sim.rng.random() < 0.7}
        clear = [key for key in keys if key not in set_flags or sim.rng.random() < 0.1]
        return admin_pb2.PatchTenantConfigRequest(
            tenant_id=tenant_id,
            set_flag_overrides=set_flags,
            clear_flag_overrides=clear,
            expected_revision=sim.expected_revision(tenant_id),
        )

    def expect(self, world: World, request: admin_pb2.PatchTenantConfigRequest, response: Any) -> Outcome:
        return world.patch_flags(
            request.tenant_id,
            dict(request.set_flag_overrides),
            list(request.clear_flag_overrides),
            request.expected_revision,
        )

    def observe(self, request: Any, response: admin_pb2.Tenant) -> Outcome:
        return _tenant_outcome(response)


class UpsertPlan(Operation):
    """Change what a plan's features gate and whether they are on: moves every tenant on it."""

    rpc = "UpsertPlan"
    base_weight = 1.0

    def draw(self, sim: Sim) -> admin_pb2.UpsertPlanRequest:
        features = {
            name: admin_pb2.PlanFeature(
                default_enabled=sim.rng.random() < 0.5, gates=sim.rng.sample(GATE_POOL, sim.rng.randint(0, 2))
            )
            for name in sim.rng.sample(FEATURES, sim.rng.randint(0, len(FEATURES)))
        }
        return admin_pb2.UpsertPlanRequest(plan=admin_pb2.Plan(name=sim.rng.choice(sim.plans), features=features))

    def expect(self, world: World, request: admin_pb2.UpsertPlanRequest, response: Any) -> Outcome:
        features = {
            name: Feature(spec.default_enabled, tuple(spec.gates)) for name, spec in request.plan.features.items()
        }
        return world.upsert_plan(request.plan.name, features)

    def observe(self, request: Any, response: admin_pb2.UpsertPlanResponse) -> Outcome:
        return Outcome(facts={"tenants_affected": response.tenants_affected})


class CreateRole(Operation):
    rpc = "CreateRole"
    base_weight = 4.0

    def draw(self, sim: Sim) -> admin_pb2.CreateRoleRequest:
        name = sim.rng.choice(CUSTOM_ROLES) if sim.rng.random() < 0.85 else sim.rng.choice(ROLE_NAMES)
        return admin_pb2.CreateRoleRequest(tenant_id=sim.target(), name=name, permissions=sim.permissions())

    def expect(self, world: World, request: admin_pb2.CreateRoleRequest, response: Any) -> Outcome:
        outcome = world.create_role(request.tenant_id, request.name, tuple(request.permissions))
        return _with(outcome, tenant_id=request.tenant_id)

    def observe(self, request: Any, response: admin_pb2.RoleResponse) -> Outcome:
        role = response.role
        return Outcome(
            revision=response.revision,
            facts={
                "role": role.name,
                "permissions": tuple(sorted(role.permissions)),
                "system": role.system,
                "tenant_id": role.tenant_id,
            },
        )


class UpdateRole(CreateRole):
    rpc = "UpdateRole"
    base_weight = 5.0

    def draw(self, sim: Sim) -> admin_pb2.UpdateRoleRequest:
        tenant_id = sim.target()
        return admin_pb2.UpdateRoleRequest(
            tenant_id=tenant_id,
            name=sim.custom_role(tenant_id),
            permissions=sim.permissions(),
            expected_revision=sim.expected_revision(tenant_id),
        )

    def expect(self, world: World, request: admin_pb2.UpdateRoleRequest, response: Any) -> Outcome:
        outcome = world.update_role(request.tenant_id, request.name, tuple(request.permissions), request.expected_revision)
        return _with(outcome, tenant_id=request.tenant_id)


class DeleteRole(Operation):
    rpc = "DeleteRole"
    base_weight = 3.0

    def draw(self, sim: Sim) -> admin_pb2.DeleteRoleRequest:
        tenant_id = sim.target()
        return admin_pb2.DeleteRoleRequest(tenant_id=tenant_id, name=sim.custom_role(tenant_id))

    def expect(self, world: World, request: admin_pb2.DeleteRoleRequest, response: Any) -> Outcome:
        return world.delete_role(request.tenant_id, request.name)


class ListRoles(Operation):
    rpc = "ListRoles"
    base_weight = 1.5
    mutation = False

    def draw(self, sim: Sim) -> admin_pb2.ListRolesRequest:
        return admin_pb2.ListRolesRequest(tenant_id=sim.target())

    def expect(self, world: World, request: admin_pb2.ListRolesRequest, response: Any) -> Outcome:
        outcome = world.list_roles(request.tenant_id)
        return _with(outcome, tenant_ids=[request.tenant_id])

    def observe(self, request: Any, response: admin_pb2.ListRolesResponse) -> Outcome:
        return Outcome(
            revision=response.revision,
            facts={
                "roles": {role.name: tuple(sorted(role.permissions)) for role in response.roles},
                "tenant_ids": sorted({role.tenant_id for role in response.roles}),
            },
        )


class AddMember(Operation):
    rpc = "AddMember"
    base_weight = 8.0

    def draw(self, sim: Sim) -> admin_pb2.AddMemberRequest:
        tenant_id = sim.target()
        return admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=subject_message(sim.subject(tenant_id, 0.2)))

    def expect(self, world: World, request: admin_pb2.AddMemberRequest, response: Any) -> Outcome:
        outcome = world.add_member(request.tenant_id, subject_key(request.subject))
        return _with(outcome, tenant_id=request.tenant_id)

    def observe(self, request: Any, response: admin_pb2.MemberResponse) -> Outcome:
        return Outcome(
            revision=response.revision,
            facts={"subject": subject_key(response.member.subject), "tenant_id": response.member.tenant_id},
        )


class RemoveMember(Operation):
    rpc = "RemoveMember"
    base_weight = 4.0

    def draw(self, sim: Sim) -> admin_pb2.RemoveMemberRequest:
        tenant_id = sim.target()
        tenant = sim.world.tenants.get(tenant_id)
        owners = sorted(tenant.root_owners()) if tenant else []
        # Aim at an owner now and then: the last one must stay.
        key = sim.rng.choice(owners) if owners and sim.rng.random() < 0.25 else sim.subject(tenant_id, 0.8)
        return admin_pb2.RemoveMemberRequest(tenant_id=tenant_id, subject=subject_message(key))

    def expect(self, world: World, request: admin_pb2.RemoveMemberRequest, response: Any) -> Outcome:
        return world.remove_member(request.tenant_id, subject_key(request.subject))


class ListMembers(Operation):
    rpc = "ListMembers"
    base_weight = 1.5
    mutation = False

    def draw(self, sim: Sim) -> admin_pb2.ListMembersRequest:
        return admin_pb2.ListMembersRequest(tenant_id=sim.target(), page_size=1000)

    def expect(self, world: World, request: admin_pb2.ListMembersRequest, response: Any) -> Outcome:
        outcome = world.list_members(request.tenant_id)
        members = outcome.facts.get("members")
        return _with(outcome, tenant_ids=[request.tenant_id] if members else [])

    def observe(self, request: Any, response: admin_pb2.ListMembersResponse) -> Outcome:
        return Outcome(
            facts={
                "members": sorted(subject_key(m.subject) for m in response.members),
                "tenant_ids": sorted({m.tenant_id for m in response.members}),
            }
        )


class AssignRole(Operation):
    rpc = "AssignRole"
    base_weight = 13.0  # with ReplaceGrant's 5, as many assignments as before it

    def draw(self, sim: Sim) -> admin_pb2.AssignRoleRequest:
        return self.draw_for(sim, sim.target())

    def draw_for(self, sim: Sim, tenant_id: str) -> admin_pb2.AssignRoleRequest:
        request = admin_pb2.AssignRoleRequest(
            tenant_id=tenant_id,
            subject=subject_message(sim.subject(tenant_id, 0.85)),
            role=sim.role(tenant_id, existing_bias=0.9),
            scope=sim.grant_scope(),
            # A quarter of the grants hold only for the subject's own resources (issue 18).
            condition=OWNER_CONDITION if sim.rng.random() < 0.25 else "",
        )
        expires_at = sim.expires_at()  # issue 18: some grants last a few seconds
        if expires_at is not None:
            request.expires_at.FromNanoseconds(round(expires_at * 1e9))
        roll = sim.rng.random()
        if roll < ASSIGN_REPLACE_RATE:
            request.on_existing = admin_pb2.EXISTING_GRANT_POLICY_REPLACE
        elif roll < ASSIGN_REPLACE_RATE + ASSIGN_REFUSE_RATE:
            request.on_existing = admin_pb2.EXISTING_GRANT_POLICY_REFUSE
        return request

    def expect(self, world: World, request: admin_pb2.AssignRoleRequest, response: Any) -> Outcome:
        expires_at = request.expires_at.ToNanoseconds() / 1e9 if request.HasField("expires_at") else None
        outcome = world.assign_role(
            request.tenant_id, subject_key(request.subject), request.role, request.scope, request.condition, expires_at,
            replace=request.on_existing == admin_pb2.EXISTING_GRANT_POLICY_REPLACE,
        )
        return _with(outcome, tenant_id=request.tenant_id)

    def observe(self, request: Any, response: admin_pb2.RoleAssignmentResponse) -> Outcome:
        a = response.assignment
        return Outcome(
            revision=response.revision,
            facts={"subject": subject_key(a.subject), "role": a.role, "scope": a.scope, "tenant_id": a.tenant_id},
        )


class ReplaceGrant(AssignRole):
    """AssignRole `on_existing` REPLACE aimed at a grant held (in force, expired or not
    yet swept): new terms (a condition or none, an expiry or none), now and then for the
    root owner grant (the last lasting owner's is LAST_OWNER), now and then with REFUSE or
    the default instead (ALREADY_EXISTS while in force)."""

    base_weight = 5.0

    def draw(self, sim: Sim) -> admin_pb2.AssignRoleRequest:
        tenant_id = sim.target()
        tenant = sim.world.tenants.get(tenant_id)
        held = sorted(tenant.assignments) if tenant else []
        owners = [a for a in held if a[1] == "owner" and a[2] == ""]
        request = self.draw_for(sim, tenant_id)
        if held and sim.rng.random() < 0.9:
            pick = owners if owners and sim.rng.random() < REPLACE_OWNER_RATE else held
            key, request.role, request.scope = sim.rng.choice(pick)
            request.subject.CopyFrom(subject_message(key))
        request.condition = OWNER_CONDITION if sim.rng.random() < REPLACE_CONDITION_RATE else ""
        request.on_existing = admin_pb2.EXISTING_GRANT_POLICY_REPLACE
        if sim.rng.random() < REPLACE_REFUSE_RATE:
            request.on_existing = sim.rng.choice(
                (admin_pb2.EXISTING_GRANT_POLICY_REFUSE, admin_pb2.EXISTING_GRANT_POLICY_UNSPECIFIED)
            )
        return request


class RevokeRole(Operation):
    rpc = "RevokeRole"
    base_weight = 10.0

    def draw(self, sim: Sim) -> admin_pb2.RevokeRoleRequest:
        tenant_id = sim.target()
        tenant = sim.world.tenants.get(tenant_id)
        held = sorted(tenant.assignments) if tenant else []
        if held and sim.rng.random() < 0.75:
            key, role, scope = sim.rng.choice(held)
            if sim.rng.random() < DOT_SCOPE_RATE:  # a held grant, at a scope spelled with dots
                scope = sim.rng.choice(DOT_SCOPES)
        else:
            key = sim.subject(tenant_id, 0.8)
            role = sim.role(tenant_id, existing_bias=0.8)
            scope = sim.grant_scope()
        return admin_pb2.RevokeRoleRequest(tenant_id=tenant_id, subject=subject_message(key), role=role, scope=scope)

    def expect(self, world: World, request: admin_pb2.RevokeRoleRequest, response: Any) -> Outcome:
        return world.revoke_role(request.tenant_id, subject_key(request.subject), request.role, request.scope)


class MoveScope(Operation):
    """An org-unit move: mostly of a subtree that holds grants, to a place in the same
    trees (so the checks' scopes see the grants arrive), with or without keeping what is
    there; now and then into itself, from a scope holding nothing, or spelled with dots."""

    rpc = "MoveScope"
    base_weight = 3.0

    def draw(self, sim: Sim) -> admin_pb2.MoveScopeRequest:
        tenant_id = sim.target()
        tenant = sim.world.tenants.get(tenant_id)
        held = sorted({scope for _, _, scope in tenant.assignments if scope}) if tenant else []
        if held and sim.rng.random() < 0.8:
            segments = sim.rng.choice(held).split("/")
            from_scope = "/".join(segments[: sim.rng.randint(1, len(segments))])
        else:
            from_scope = sim.grant_scope()
        to_scope = sim.rng.choice((*GRANT_SCOPES, "apac", "emea/d", "emea/de/berlin/mitte"))
        if sim.rng.random() < DOT_SCOPE_RATE:
            to_scope = sim.rng.choice(DOT_SCOPES)
        policy = sim.rng.choice(
            (admin_pb2.MOVE_CONFLICT_POLICY_UNSPECIFIED, admin_pb2.MOVE_CONFLICT_POLICY_FAIL,
             admin_pb2.MOVE_CONFLICT_POLICY_KEEP_EXISTING)
        )
        return admin_pb2.MoveScopeRequest(
            tenant_id=tenant_id, from_scope=from_scope, to_scope=to_scope, on_conflict=policy,
            expected_revision=sim.expected_revision(tenant_id),
        )

    def expect(self, world: World, request: admin_pb2.MoveScopeRequest, response: Any) -> Outcome:
        return world.move_scope(
            request.tenant_id, request.from_scope, request.to_scope,
            keep_existing=request.on_conflict == admin_pb2.MOVE_CONFLICT_POLICY_KEEP_EXISTING,
            expected_revision=request.expected_revision,
        )

    def observe(self, request: Any, response: admin_pb2.MoveScopeResponse) -> Outcome:
        return Outcome(revision=response.revision, facts={"moved": response.moved, "merged": response.merged})


class ListRoleAssignments(Operation):
    rpc = "ListRoleAssignments"
    base_weight = 1.5
    mutation = False

    def draw(self, sim: Sim) -> admin_pb2.ListRoleAssignmentsRequest:
        tenant_id = sim.target()
        subject = subject_message(sim.subject(tenant_id, 0.8)) if sim.rng.random() < 0.5 else None
        return admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant_id, subject=subject, page_size=1000)

    def expect(self, world: World, request: admin_pb2.ListRoleAssignmentsRequest, response: Any) -> Outcome:
        subject = subject_key(request.subject) if request.HasField("subject") else None
        outcome = world.list_assignments(request.tenant_id, subject)
        rows = outcome.facts.get("assignments")
        if outcome.code != "OK":
            return outcome
        # Each row's terms too (what a replace changes): its condition, its expiry in ms.
        tenant = world.tenants[request.tenant_id]
        terms = [
            (*a, OWNER_CONDITION if a in tenant.conditional else "",
             round(tenant.expires[a] * 1000) if a in tenant.expires else None)
            for a in sorted(tenant.assignments)
            if subject is None or a[0] == subject
        ]
        return _with(outcome, tenant_ids=[request.tenant_id] if rows else [], terms=terms)

    def observe(self, request: Any, response: admin_pb2.ListRoleAssignmentsResponse) -> Outcome:
        rows = sorted((subject_key(a.subject), a.role, a.scope) for a in response.assignments)
        terms = sorted(
            (subject_key(a.subject), a.role, a.scope, a.condition,
             round(a.expires_at.ToNanoseconds() / 1e6) if a.HasField("expires_at") else None)
            for a in response.assignments
        )
        return Outcome(
            facts={
                "assignments": rows,
                "terms": terms,
                "tenant_ids": sorted({a.tenant_id for a in response.assignments}),
            }
        )


class ListAuditEvents(Operation):
    """A tenant's audit trail holds its own events only (whatever ids the two share)."""

    rpc = "ListAuditEvents"
    base_weight = 1.0
    mutation = False

    def draw(self, sim: Sim) -> admin_pb2.ListAuditEventsRequest:
        return admin_pb2.ListAuditEventsRequest(tenant_id=sim.target(), page_size=50)

    def expect(self, world: World, request: admin_pb2.ListAuditEventsRequest, response: Any) -> Outcome:
        return world.list_audit_events(request.tenant_id)

    def observe(self, request: admin_pb2.ListAuditEventsRequest, response: admin_pb2.ListAuditEventsResponse) -> Outcome:
        foreign = sorted({event.tenant_id for event in response.events} - {request.tenant_id})
        return Outcome(facts={"foreign_tenant_ids": foreign})


class Misspelled(Operation):
    """Any tenant-scoped operation, its tenant id spelled another way (upper case, no
    hyphens, braces, `urn:uuid:` …): the model refuses it (INVALID_ARGUMENT naming
    `tenant_id`, and any other bad field of the request) and changes nothing."""

    rpc = "<misspelled>"
    base_weight = 4.0

    def __init__(self, inner: tuple[Operation, ...]) -> None:
        self.inner = inner

    def draw(self, sim: Sim) -> tuple[Operation, Any]:
        op = sim.rng.choices(self.inner, weights=[op.weight(sim) for op in self.inner])[0]
        request = op.draw(sim)
        return op, op.retarget(request, sim.misspell(op.tenant_of(request) or sim.unknown_id()))

    def expect(self, world: World, request: tuple[Operation, Any], response: Any) -> Outcome:
        op, message = request
        return op.expect(world, message, response)

    def observe(self, request: tuple[Operation, Any], response: Any) -> Outcome:
        op, message = request
        return op.observe(message, response)

    async def call(self, admin: admin_pb2_grpc.AdminServiceStub, request: Any, metadata: Any) -> Any:
        op, message = request
        return await op.call(admin, message, metadata)

    def describe(self, request: tuple[Operation, Any]) -> str:
        op, message = request
        return op.describe(message)

    def tenant_of(self, request: tuple[Operation, Any]) -> str | None:
        op, message = request
        return op.tenant_of(message)

    def message(self, request: tuple[Operation, Any]) -> Any:
        op, message = request
        return op.message(message)

    def retarget(self, request: tuple[Operation, Any], tenant_id: str) -> Any:
        op, message = request
        return op, op.retarget(message, tenant_id)


TENANT_SCOPED: tuple[Operation, ...] = (
    GetTenant(),
    UpdateTenantPlan(),
    Transition(),
    PatchFlags(),
    CreateRole(),
    UpdateRole(),
    DeleteRole(),
    ListRoles(),
    AddMember(),
    RemoveMember(),
    ListMembers(),
    AssignRole(),
    ReplaceGrant(),
    RevokeRole(),
    MoveScope(),
    ListRoleAssignments(),
    ListAuditEvents(),
)
OPERATIONS: tuple[Operation, ...] = (CreateTenant(), UpsertPlan(), *TENANT_SCOPED, Misspelled(TENANT_SCOPED))
