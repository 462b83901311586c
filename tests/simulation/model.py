"""A small, pure reference model of DESIGN.md, for the randomized two-tenant simulation.

Written from DESIGN.md ("Decision semantics", "Lifecycle", `min_revision` under
"Consistency and caching") and nothing of `gatehouse.engine`: its own pattern matcher (a
plain recursion over segments, where the engine uses a greedy glob and a compiled prefix
index), its own scope test (segment lists, where the engine compares strings), its own
lifecycle table, its own step-1 rules for the fields the simulation spoils. Two
independent readings of the same page agreeing over thousands of random steps is the
point; sharing code would make them agree by construction.

No I/O, no gRPC: outcomes are plain strings (gRPC status code names, `GATEHOUSE_*` error
reasons, DecisionReason names without their prefix), so the test maps the server's
answers onto the model's vocabulary, never the other way round.

Where DESIGN.md is silent the model follows what a caller can observe of the server and
says so in a comment (`# SERVER:`), so a reader can tell the contract from the choices.

Conditions (issue 18) are modelled for one condition, OWNER_CONDITION: the grant holds
when the check's `resource.attributes.owner` is the subject's id, and a check that does
not carry it is CONDITIONAL (denied, naming the attribute) unless another grant allows.

Expiring grants (issue 18) are decided with the model's clock, `World.now` (unix
seconds, set by the caller: the model reads no clock of its own): from its `expires_at`
on a grant grants nothing, though its row stays (listed, moved, in the way of a move,
holding its role in use, making its subject an owner for the last-owner rule but never
"another owner") until revoked, taken with its member, granted anew, or swept
(`World.sweep`, the relay's housekeeping: each subject's expired rows one revision).

Not modelled yet, because the server has no surface for them at the time of writing:
API keys (`api_key/<id>` subjects, KEY_REVOKED, a key's own pattern limit), tenant-admin
keys with the escalation guard, idempotency keys. Each is a few lines here plus one
operation class in `operations.py`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

# --- permission patterns and scopes ------------------------------------------------------

READ_ACTIONS = frozenset({"read", "list", "get"})


def pattern_matches(pattern: str, permission: str) -> bool:
    """`*` stands for one or more whole dot-separated segments; anything else is literal.

    `invoice.*` matches `invoice.read` and `invoice.line.edit` but not `invoice`;
    `*.read` matches `a.b.read`; `*` matches everything.
    """
    return _segments_match(tuple(pattern.split(".")), tuple(permission.split(".")))


@functools.lru_cache(maxsize=1 << 16)
def _segments_match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(_segments_match(rest, segments[taken:]) for taken in range(1, len(segments) + 1))
    return bool(segments) and segments[0] == head and _segments_match(rest, segments[1:])


def any_matches(patterns: Iterable[str], permission: str) -> bool:
    return any(pattern_matches(pattern, permission) for pattern in patterns)


def scope_segments(scope: str) -> tuple[str, ...]:
    """The empty scope is the tenant root: no segments."""
    return tuple(scope.split("/")) if scope else ()


def scope_covers(granted: str, requested: str) -> bool:
    """A grant at `a/b` applies to `a/b` and below (`a/b/c`), never to `a/bc`."""
    granted_segments = scope_segments(granted)
    return scope_segments(requested)[: len(granted_segments)] == granted_segments


def is_read_action(permission: str) -> bool:
    return permission.split(".")[-1] in READ_ACTIONS


# --- step 1: malformed requests ---------------------------------------------------------

# DESIGN: "Identifiers have one canonical form (a tenant uuid in any spelling the store
# accepts is canonicalised before it keys a cache, or refused)". SERVER: refused, in every
# field of every method; the canonical form is the one it returns (lowercase, 8-4-4-4-12).
CANONICAL_TENANT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_canonical_tenant_id(value: str) -> bool:
    return CANONICAL_TENANT_ID.fullmatch(value) is not None


def is_valid_scope(scope: str) -> bool:
    """DESIGN: `/`-separated segments, none empty, `.` or `..` (the empty scope is the root)."""
    return all(segment not in ("", ".", "..") for segment in scope_segments(scope))


# A field's rule, by the last part of its path (`checks[2].resource.scope` → `scope`).
FIELD_RULES = {
    "tenant_id": is_canonical_tenant_id,
    "scope": is_valid_scope,
    "from_scope": is_valid_scope,
    "to_scope": is_valid_scope,
}


def malformed(fields: Mapping[str, str], prefix: str = "") -> list[str]:
    """The paths (as the server names them, `prefix` first) of the fields that break their rule."""
    return [f"{prefix}{path}" for path, value in fields.items() if not FIELD_RULES[path.rsplit(".", 1)[-1]](value)]


def invalid_argument(fields: Iterable[str]) -> Outcome:
    """INVALID_ARGUMENT naming every bad field. SERVER: BadRequest lists them all (at most
    10, more than the simulation ever sends at once), in an order of its own: compared sorted."""
    return Outcome("INVALID_ARGUMENT", "GATEHOUSE_INVALID_ARGUMENT", facts={"fields": tuple(sorted(fields))})


# --- the lifecycle ------------------------------------------------------------------------


class Status(enum.Enum):
    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"
    DELETED = "DELETED"


# DRAFT → ACTIVE → SUSPENDED ⇄ ACTIVE; ACTIVE/SUSPENDED → ARCHIVED; ARCHIVED → ACTIVE;
# DRAFT/ARCHIVED → DELETED (confirm; terminal). Keyed by the AdminService RPC's verb.
LIFECYCLE: dict[str, dict[Status, Status]] = {
    "Activate": {Status.DRAFT: Status.ACTIVE},
    "Suspend": {Status.ACTIVE: Status.SUSPENDED},
    "Resume": {Status.SUSPENDED: Status.ACTIVE},
    "Archive": {Status.ACTIVE: Status.ARCHIVED, Status.SUSPENDED: Status.ARCHIVED},
    "Restore": {Status.ARCHIVED: Status.ACTIVE},
    "Delete": {Status.DRAFT: Status.DELETED, Status.ARCHIVED: Status.DELETED},
}
NEEDS_CONFIRM = frozenset({"Delete"})

# --- tenants, plans, roles ----------------------------------------------------------------

# Mirrors SYSTEM_ROLES in store/api.py: seeded in every tenant, neither changeable nor
# deletable. (Read from there by hand, not imported: a change to it should show up here
# as a disagreement to look at, not silently.)
SYSTEM_ROLES: dict[str, tuple[str, ...]] = {
    "owner": ("*",),
    "admin": ("*",),
    "member": (),
    "viewer": ("*.read", "*.list", "*.get"),
}
OWNER = "owner"
DEFAULT_PLAN = "default"


@dataclass(frozen=True)
class Feature:
    default_enabled: bool
    gates: tuple[str, ...] = ()


Plan = Mapping[str, Feature]
Assignment = tuple[str, str, str]  # (subject key, role, scope)


@dataclass
class Tenant:
    id: str
    slug: str
    plan: str
    status: Status = Status.DRAFT
    revision: int = 1
    flag_overrides: dict[str, bool] = field(default_factory=dict)
    roles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SYSTEM_ROLES))
    members: set[str] = field(default_factory=set)
    assignments: set[Assignment] = field(default_factory=set)
    conditional: set[Assignment] = field(default_factory=set)  # those that carry OWNER_CONDITION
    expires: dict[Assignment, float] = field(default_factory=dict)  # expires_at (unix seconds); others last

    def root_owners(self) -> set[str]:
        return {subject for subject, role, scope in self.assignments if role == OWNER and scope == ""}

    def lasting_root_owners(self) -> set[str]:
        """Root owners whose grant has no condition and no expiry: only those count as
        "another owner" (SERVER: expired or not yet, an expiring grant could leave none)."""
        lasting = self.assignments - self.conditional - self.expires.keys()
        return {s for s, role, scope in lasting if role == OWNER and scope == ""}

    def in_force(self, now: float) -> set[Assignment]:
        """The assignments that grant at `now`: those not yet at their expiry."""
        return {a for a in self.assignments if now < self.expires.get(a, math.inf)}

    def forget_gone(self) -> None:
        """Drop the condition and expiry of assignments no longer held (so a grant that
        later lands on the same key, by a move, carries only its own)."""
        self.conditional &= self.assignments
        self.expires = {a: at for a, at in self.expires.items() if a in self.assignments}

    def last_owner(self, subject: str) -> bool:
        """Taking `subject`'s root ownership would leave no lasting owner besides it."""
        return subject in self.root_owners() and not (self.lasting_root_owners() - {subject})


# --- outcomes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an admin call answers: OK with the tenant's new revision (and facts a response
    carries), or a gRPC status code name with the ErrorInfo reason."""

    code: str = "OK"
    reason: str = ""
    revision: int | None = None
    facts: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.code != "OK":
            facts = "".join(f", {key}={value!r}" for key, value in sorted(self.facts.items()))
            return f"{self.code}({self.reason}{facts})"
        parts = [f"revision={self.revision}"] if self.revision is not None else []
        parts += [f"{key}={value!r}" for key, value in sorted(self.facts.items())]
        return f"OK({', '.join(parts)})"


class Refused(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


def _refuse(code: str, reason: str) -> Refused:
    return Refused(Outcome(code, f"GATEHOUSE_{reason}"))


def _well_formed(fields: Mapping[str, str]) -> None:
    """Step 1 of every admin call: before anything is read, so a refusal writes nothing."""
    bad = malformed(fields)
    if bad:
        raise Refused(invalid_argument(bad))


@dataclass(frozen=True)
class Answer:
    """A CheckAccess answer, with every (role, scope) that would justify an allow and
    every feature that would justify FEATURE_DISABLED: which one the server names is its
    choice, DESIGN.md only asks that it name one that did."""

    allowed: bool
    reason: str
    revision: int
    grants: frozenset[tuple[str, str]] = frozenset()
    features: frozenset[str] = frozenset()

    def __str__(self) -> str:
        extra = ""
        if self.grants:
            extra = " by any of " + ", ".join(f"{role}@{scope!r}" for role, scope in sorted(self.grants))
        if self.features:
            extra = " feature any of " + ", ".join(sorted(self.features))
        return f"{'allow' if self.allowed else 'deny'} {self.reason} rev={self.revision}{extra}"


@dataclass(frozen=True)
class Check:
    """One CheckAccess request in the model's vocabulary (subject as `type/id`)."""

    tenant_id: str
    subject: str
    permission: str
    scope: str
    min_revision: int = 0
    owner: str | None = None  # resource.attributes.owner, None = not carried


@dataclass(frozen=True)
class TenantView:
    """What one decision reads of a tenant. Built from one tenant normally; the test
    builds mixed views (parts from the other tenant) to recognise a cross-tenant answer."""

    status: Status
    revision: int
    members: frozenset[str]
    assignments: frozenset[Assignment]
    roles: Mapping[str, tuple[str, ...]]
    disabled: tuple[tuple[str, tuple[str, ...]], ...]  # (feature, gates) of features that are off
    conditional: frozenset[Assignment] = frozenset()


# The parts of a view a leak could come from, for `World.mixed_view`.
VIEW_PARTS = ("status", "subjects", "roles", "features")


OWNER_CONDITION = "resource.attributes.owner == subject.id"
OWNER_ATTRIBUTE = "resource.attributes.owner"


def decide(view: TenantView | None, subject: str, permission: str, scope: str, owner: str | None = None) -> Answer:
    """DESIGN.md "Decision semantics", steps 2–6, first that applies decides; a grant
    with OWNER_CONDITION applies when `owner` (the check's resource.attributes.owner) is
    the subject's id, and none allowing while one lacked `owner` is CONDITIONAL."""
    if view is None:
        return Answer(False, "TENANT_NOT_FOUND", 0)
    revision = view.revision
    if view.status is Status.SUSPENDED and not is_read_action(permission):
        return Answer(False, "TENANT_SUSPENDED", revision)
    if view.status in (Status.DRAFT, Status.ARCHIVED, Status.DELETED):
        return Answer(False, "TENANT_INACTIVE", revision)
    if subject not in view.members:
        return Answer(False, "NOT_A_MEMBER", revision)
    blocking = frozenset(name for name, gates in view.disabled if any_matches(gates, permission))
    if blocking:
        return Answer(False, "FEATURE_DISABLED", revision, features=blocking)
    applicable = [
        assignment
        for assignment in view.assignments
        if assignment[0] == subject
        and scope_covers(assignment[2], scope)
        and any_matches(view.roles.get(assignment[1], ()), permission)
    ]
    subject_id = subject.partition("/")[2]
    grants = frozenset(
        (role, granted)
        for assignment in applicable
        for _, role, granted in (assignment,)
        if assignment not in view.conditional or owner == subject_id
    )
    if grants:
        return Answer(True, "ALLOWED", revision, grants=grants)
    if owner is None and any(assignment in view.conditional for assignment in applicable):
        return Answer(False, "CONDITIONAL", revision)
    return Answer(False, "NO_GRANT", revision)


# --- the world ----------------------------------------------------------------------------


class World:
    """Every plan and tenant the simulation made, and what each admin call does to them.

    Each admin method returns an Outcome and changes the world only when it is OK.
    """

    def __init__(self) -> None:
        self.plans: dict[str, dict[str, Feature]] = {DEFAULT_PLAN: {}}
        self.tenants: dict[str, Tenant] = {}
        # The clock (unix seconds) decisions and writes are made at: a grant grants nothing
        # from its expiry on. The caller sets it; 0 (never set) expires nothing.
        self.now = 0.0

    def clone(self) -> "World":
        """An independent copy (every value inside is immutable, so one level deep is enough)."""
        other = World()
        other.now = self.now
        other.plans = {name: dict(features) for name, features in self.plans.items()}
        other.tenants = {
            tenant_id: dataclasses.replace(
                tenant,
                flag_overrides=dict(tenant.flag_overrides),
                roles=dict(tenant.roles),
                members=set(tenant.members),
                assignments=set(tenant.assignments),
                conditional=set(tenant.conditional),
                expires=dict(tenant.expires),
            )
            for tenant_id, tenant in self.tenants.items()
        }
        return other

    # --- reads ---

    def effective_flags(self, tenant: Tenant) -> dict[str, bool]:
        """Plan defaults with the tenant's overrides on top (overrides of features the plan
        does not have are kept: they are what the tenant asked for)."""
        flags = {name: feature.default_enabled for name, feature in self.plans[tenant.plan].items()}
        flags.update(tenant.flag_overrides)
        return flags

    def view(self, tenant_id: str) -> TenantView | None:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return None
        flags = self.effective_flags(tenant)
        disabled = tuple(
            (name, feature.gates)
            for name, feature in sorted(self.plans[tenant.plan].items())
            if feature.gates and not flags[name]
        )
        in_force = tenant.in_force(self.now)  # an expired grant grants nothing
        return TenantView(
            status=tenant.status,
            revision=tenant.revision,
            members=frozenset(tenant.members),
            assignments=frozenset(in_force),
            roles=dict(tenant.roles),
            disabled=disabled,
            conditional=frozenset(tenant.conditional & in_force),
        )

    def mixed_view(self, own: str, other: str, parts: Iterable[str]) -> TenantView | None:
        """`own`'s view with `parts` read from `other` instead: what a server that confused
        the two tenants somewhere would decide from."""
        mine, theirs = self.view(own), self.view(other)
        if mine is None or theirs is None:
            return None
        taken = set(parts)
        return TenantView(
            status=(theirs if "status" in taken else mine).status,
            revision=mine.revision,
            members=(theirs if "subjects" in taken else mine).members,
            assignments=(theirs if "subjects" in taken else mine).assignments,
            roles=(theirs if "roles" in taken else mine).roles,
            disabled=(theirs if "features" in taken else mine).disabled,
            conditional=(theirs if "subjects" in taken else mine).conditional,
        )

    def check(self, tenant_id: str, subject: str, permission: str, scope: str, owner: str | None = None) -> Answer:
        return decide(self.view(tenant_id), subject, permission, scope, owner)

    # --- whole read calls: step 1, then min_revision, then the answer ---

    def not_reached(self, tenant_id: str, min_revision: int) -> Outcome | None:
        """DESIGN: "A revision the tenant has not reached is an error with a stable reason
        and the current revision, never an older answer". SERVER: FAILED_PRECONDITION,
        metadata as below; an unknown tenant is at revision 0 (so min_revision 0 asks
        nothing of it, and anything above is not reached)."""
        tenant = self.tenants.get(tenant_id)
        current = tenant.revision if tenant is not None else 0
        if min_revision <= current:
            return None
        return Outcome(
            "FAILED_PRECONDITION",
            "GATEHOUSE_REVISION_NOT_REACHED",
            facts={"tenant_id": tenant_id, "min_revision": str(min_revision), "current_revision": str(current)},
        )

    def check_call(self, request: Check) -> Outcome | Answer:
        """CheckAccess: INVALID_ARGUMENT, or not reached, or the decision."""
        bad = malformed({"tenant_id": request.tenant_id, "resource.scope": request.scope})
        if bad:
            return invalid_argument(bad)
        return self.not_reached(request.tenant_id, request.min_revision) or self.check(
            request.tenant_id, request.subject, request.permission, request.scope, request.owner
        )

    def batch_call(self, requests: Sequence[Check]) -> Outcome | list[Answer]:
        """CheckAccessBatch. SERVER (DESIGN is silent): one bad check fails the whole call,
        naming every bad field of every check (`checks[i].…`), before anything is read; then
        the first check (in request order) whose revision is not reached fails it, named
        in the metadata (`check: checks[i]`); else every answer, in request order."""
        bad = [
            path
            for index, request in enumerate(requests)
            for path in malformed(
                {"tenant_id": request.tenant_id, "resource.scope": request.scope}, prefix=f"checks[{index}]."
            )
        ]
        if bad:
            return invalid_argument(bad)
        for index, request in enumerate(requests):
            refusal = self.not_reached(request.tenant_id, request.min_revision)
            if refusal is not None:
                return dataclasses.replace(refusal, facts={**refusal.facts, "check": f"checks[{index}]"})
        return [self.check(r.tenant_id, r.subject, r.permission, r.scope, r.owner) for r in requests]

    def config_call(self, tenant_id: str, min_revision: int, *, if_revision_newer_than: int = 0) -> Outcome:
        """GetTenantConfig: INVALID_ARGUMENT, or not reached, or `config()`."""
        bad = malformed({"tenant_id": tenant_id})
        if bad:
            return invalid_argument(bad)
        return self.not_reached(tenant_id, min_revision) or self.config(
            tenant_id, if_revision_newer_than=if_revision_newer_than
        )

    def config(self, tenant_id: str, *, if_revision_newer_than: int = 0) -> Outcome:
        """GetTenantConfig: the effective config, or `not_modified` for a caller that
        already holds the current revision."""
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return Outcome("NOT_FOUND", "GATEHOUSE_TENANT_NOT_FOUND")
        if if_revision_newer_than and tenant.revision <= if_revision_newer_than:
            return Outcome(revision=tenant.revision, facts={"id": tenant.id, "not_modified": True})
        return Outcome(
            revision=tenant.revision,
            facts={
                "id": tenant.id,
                "slug": tenant.slug,
                "status": tenant.status.value,
                "plan": tenant.plan,
                "feature_flags": self.effective_flags(tenant),
            },
        )

    def tenant_facts(self, tenant: Tenant) -> dict[str, object]:
        return {
            "id": tenant.id,
            "slug": tenant.slug,
            "status": tenant.status.value,
            "plan": tenant.plan,
            "flag_overrides": dict(tenant.flag_overrides),
        }

    def _tenant(self, tenant_id: str) -> Tenant:
        _well_formed({"tenant_id": tenant_id})
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            raise _refuse("NOT_FOUND", "TENANT_NOT_FOUND")
        return tenant

    def _writable(self, tenant_id: str, expected_revision: int = 0) -> Tenant:
        """The tenant a mutation may change. DESIGN: DELETED is terminal."""
        tenant = self._tenant(tenant_id)
        if tenant.status is Status.DELETED:
            raise _refuse("FAILED_PRECONDITION", "TENANT_DELETED")
        # Optimistic concurrency: 0 means "don't check".
        if expected_revision and expected_revision != tenant.revision:
            raise _refuse("ABORTED", "REVISION_CONFLICT")
        return tenant

    @staticmethod
    def _bump(tenant: Tenant, **facts: object) -> Outcome:
        tenant.revision += 1
        return Outcome(revision=tenant.revision, facts=facts)

    def get_tenant(self, tenant_id: str) -> Outcome:
        try:
            tenant = self._tenant(tenant_id)
        except Refused as refused:
            return refused.outcome
        return Outcome(revision=tenant.revision, facts=self.tenant_facts(tenant))

    def list_roles(self, tenant_id: str) -> Outcome:
        try:
            tenant = self._tenant(tenant_id)
        except Refused as refused:
            return refused.outcome
        roles = {name: tuple(sorted(perms)) for name, perms in tenant.roles.items()}
        return Outcome(revision=tenant.revision, facts={"roles": roles})

    def list_members(self, tenant_id: str) -> Outcome:
        try:
            tenant = self._tenant(tenant_id)
        except Refused as refused:
            return refused.outcome
        return Outcome(facts={"members": sorted(tenant.members)})

    def list_assignments(self, tenant_id: str, subject: str | None = None) -> Outcome:
        try:
            tenant = self._tenant(tenant_id)
        except Refused as refused:
            return refused.outcome
        rows = sorted(a for a in tenant.assignments if subject is None or a[0] == subject)
        return Outcome(facts={"assignments": rows})

    def list_audit_events(self, tenant_id: str) -> Outcome:
        """A tenant's audit trail holds its own events only. SERVER: an unknown or deleted
        tenant has an (empty or closed) trail, not NOT_FOUND."""
        try:
            _well_formed({"tenant_id": tenant_id})
        except Refused as refused:
            return refused.outcome
        return Outcome(facts={"foreign_tenant_ids": []})

    # --- plans (platform-wide) ---

    def upsert_plan(self, name: str, features: Mapping[str, Feature]) -> Outcome:
        """Replace the plan; every tenant on it moves to a new revision, deleted ones too
        (its effective flags may have changed, and one revision means one config)."""
        self.plans[name] = dict(features)
        affected = 0
        for tenant in self.tenants.values():
            if tenant.plan == name:
                tenant.revision += 1
                affected += 1
        return Outcome(facts={"tenants_affected": affected})

    # --- tenants ---

    def create_tenant(self, slug: str, plan: str, new_id: str) -> Outcome:
        """A new DRAFT tenant at revision 1 with the system roles. `new_id` is the id the
        server chose (ids are the server's to pick; nothing else is taken from it)."""
        plan = plan or DEFAULT_PLAN
        # SERVER: an unknown plan is checked before the slug.
        if plan not in self.plans:
            return invalid_argument(["plan"])
        if any(t.slug == slug for t in self.tenants.values()):
            return Outcome("ALREADY_EXISTS", "GATEHOUSE_ALREADY_EXISTS")
        tenant = Tenant(id=new_id, slug=slug, plan=plan)
        self.tenants[new_id] = tenant
        return Outcome(revision=tenant.revision, facts=self.tenant_facts(tenant))

    def update_tenant_plan(self, tenant_id: str, plan: str, expected_revision: int = 0) -> Outcome:
        try:
            tenant = self._writable(tenant_id, expected_revision)
            if plan not in self.plans:
                raise Refused(invalid_argument(["plan"]))
        except Refused as refused:
            return refused.outcome
        tenant.plan = plan
        outcome = self._bump(tenant)
        return Outcome(revision=outcome.revision, facts=self.tenant_facts(tenant))

    def transition(self, tenant_id: str, verb: str, *, confirm: bool, expected_revision: int = 0) -> Outcome:
        try:
            tenant = self._writable(tenant_id, expected_revision)
            target = LIFECYCLE[verb].get(tenant.status)
            if target is None:
                raise _refuse("FAILED_PRECONDITION", "ILLEGAL_TRANSITION")
            if verb in NEEDS_CONFIRM and not confirm:
                raise _refuse("FAILED_PRECONDITION", "CONFIRMATION_REQUIRED")
        except Refused as refused:
            return refused.outcome
        tenant.status = target
        outcome = self._bump(tenant)
        return Outcome(revision=outcome.revision, facts=self.tenant_facts(tenant))

    def patch_flags(
        self, tenant_id: str, set_flags: Mapping[str, bool], clear_flags: Iterable[str], expected_revision: int = 0
    ) -> Outcome:
        try:
            tenant = self._writable(tenant_id, expected_revision)
        except Refused as refused:
            return refused.outcome
        # A key both set and cleared in one patch ends up set.
        for name in clear_flags:
            tenant.flag_overrides.pop(name, None)
        tenant.flag_overrides.update(set_flags)
        outcome = self._bump(tenant)
        return Outcome(revision=outcome.revision, facts=self.tenant_facts(tenant))

    # --- roles ---

    def create_role(self, tenant_id: str, name: str, permissions: tuple[str, ...]) -> Outcome:
        try:
            tenant = self._writable(tenant_id)
            if name in tenant.roles:
                raise _refuse("ALREADY_EXISTS", "ALREADY_EXISTS")
        except Refused as refused:
            return refused.outcome
        tenant.roles[name] = tuple(permissions)
        return self._bump(tenant, role=name, permissions=tuple(sorted(permissions)), system=False)

    def _custom_role(self, tenant: Tenant, name: str) -> None:
        if name not in tenant.roles:
            raise _refuse("NOT_FOUND", "NOT_FOUND")
        if name in SYSTEM_ROLES:
            raise _refuse("FAILED_PRECONDITION", "SYSTEM_ROLE")

    def update_role(
        self, tenant_id: str, name: str, permissions: tuple[str, ...], expected_revision: int = 0
    ) -> Outcome:
        try:
            tenant = self._writable(tenant_id, expected_revision)
            self._custom_role(tenant, name)
        except Refused as refused:
            return refused.outcome
        tenant.roles[name] = tuple(permissions)
        return self._bump(tenant, role=name, permissions=tuple(sorted(permissions)), system=False)

    def delete_role(self, tenant_id: str, name: str) -> Outcome:
        try:
            tenant = self._writable(tenant_id)
            self._custom_role(tenant, name)
            if any(role == name for _, role, _ in tenant.assignments):
                raise _refuse("FAILED_PRECONDITION", "ROLE_IN_USE")
        except Refused as refused:
            return refused.outcome
        del tenant.roles[name]
        return self._bump(tenant)

    # --- members ---

    def add_member(self, tenant_id: str, subject: str) -> Outcome:
        try:
            tenant = self._writable(tenant_id)
            if subject in tenant.members:
                raise _refuse("ALREADY_EXISTS", "ALREADY_EXISTS")
        except Refused as refused:
            return refused.outcome
        tenant.members.add(subject)
        return self._bump(tenant, subject=subject)

    def remove_member(self, tenant_id: str, subject: str) -> Outcome:
        """Removing a member takes its role assignments with it; never the last owner."""
        try:
            tenant = self._writable(tenant_id)
            # SERVER: the last-owner rule is checked before membership (a non-member holds
            # nothing, so the order cannot change an answer).
            if tenant.last_owner(subject):
                raise _refuse("FAILED_PRECONDITION", "LAST_OWNER")
            if subject not in tenant.members:
                raise _refuse("NOT_FOUND", "NOT_FOUND")
        except Refused as refused:
            return refused.outcome
        tenant.members.discard(subject)
        tenant.assignments = {a for a in tenant.assignments if a[0] != subject}
        tenant.forget_gone()
        return self._bump(tenant)

    # --- role assignments ---

    def assign_role(
        self,
        tenant_id: str,
        subject: str,
        role: str,
        scope: str,
        condition: str = "",
        expires_at: float | None = None,
        *,
        replace: bool = False,
    ) -> Outcome:
        """Grant `role` at `scope`, under `condition` if any, until `expires_at` (unix
        seconds) if any: an expiry not after `now` is refused (INVALID_ARGUMENT naming
        `expires_at`). The same grant still in force is ALREADY_EXISTS; expired (not yet
        swept), it is granted anew, with this call's condition and expiry.

        With `replace` (AssignRole `on_existing` REPLACE) the same grant still in force is
        not refused: it takes this call's condition and expiry (none given: none; one
        revision, as any assignment). Giving `owner` at the root a condition or an expiry
        that way is refused as revoking it is when the subject is the last owner
        (FAILED_PRECONDITION GATEHOUSE_LAST_OWNER): no lasting owner would be left. SERVER:
        that rule is asked only of a grant held in force (one expired is a plain assign),
        after membership and the role's existence."""
        try:
            # SERVER: the tenant id and scope are checked first, on their own (authorization
            # reads them); the other fields only once those are well-formed.
            _well_formed({"tenant_id": tenant_id, "scope": scope})
            if expires_at is not None and expires_at <= self.now:
                raise Refused(invalid_argument(["expires_at"]))
            tenant = self._writable(tenant_id)
            # SERVER: membership is checked before the role exists (DESIGN is silent).
            if subject not in tenant.members:
                raise _refuse("FAILED_PRECONDITION", "NOT_A_MEMBER")
            if role not in tenant.roles:
                raise _refuse("NOT_FOUND", "NOT_FOUND")
            if (subject, role, scope) in tenant.in_force(self.now):
                if not replace:
                    raise _refuse("ALREADY_EXISTS", "ALREADY_EXISTS")
                lasting = not condition and expires_at is None
                if role == OWNER and scope == "" and not lasting and tenant.last_owner(subject):
                    raise _refuse("FAILED_PRECONDITION", "LAST_OWNER")
        except Refused as refused:
            return refused.outcome
        granted = (subject, role, scope)
        tenant.assignments.add(granted)
        if condition:
            tenant.conditional.add(granted)
        else:
            tenant.conditional.discard(granted)
        if expires_at is not None:
            tenant.expires[granted] = expires_at
        else:
            tenant.expires.pop(granted, None)
        return self._bump(tenant, subject=subject, role=role, scope=scope)

    def revoke_role(self, tenant_id: str, subject: str, role: str, scope: str) -> Outcome:
        """Take back one grant; `owner` at the root is never taken from the last owner."""
        try:
            _well_formed({"tenant_id": tenant_id, "scope": scope})
            tenant = self._writable(tenant_id)
            if role == OWNER and scope == "" and tenant.last_owner(subject):
                raise _refuse("FAILED_PRECONDITION", "LAST_OWNER")
            if (subject, role, scope) not in tenant.assignments:
                raise _refuse("NOT_FOUND", "NOT_FOUND")
        except Refused as refused:
            return refused.outcome
        tenant.assignments.discard((subject, role, scope))
        tenant.forget_gone()
        return self._bump(tenant)

    # --- org-unit moves ---

    def move_scope(
        self, tenant_id: str, from_scope: str, to_scope: str, *, keep_existing: bool, expected_revision: int = 0
    ) -> Outcome:
        """MoveScope (issue 18): every assignment at or below `from_scope` goes to the same
        place below `to_scope`, `from_scope` itself becoming `to_scope`; all in one
        revision. A target at or below the source is refused, and so is a source with
        nothing at or below it, and a move that would land an assignment where its
        subject holds the role already (which stays) unless told to keep that one (the
        moved one is then dropped). SERVER: the target-inside-source refusal is an
        INVALID_ARGUMENT naming `to_scope` with reason GATEHOUSE_MOVE_INTO_ITSELF, made
        before the tenant is read; the tenant checks (found, not deleted, revision) come
        before what the move finds. A grant moves with its condition and expiry (expired or
        not: it is a row like any other, and so is one in the way)."""
        try:
            _well_formed({"tenant_id": tenant_id, "from_scope": from_scope, "to_scope": to_scope})
            if scope_covers(from_scope, to_scope):
                raise Refused(
                    Outcome("INVALID_ARGUMENT", "GATEHOUSE_MOVE_INTO_ITSELF", facts={"fields": ("to_scope",)})
                )
            tenant = self._writable(tenant_id, expected_revision)
            moving = {a for a in tenant.assignments if scope_covers(from_scope, a[2])}
            if not moving:
                raise _refuse("NOT_FOUND", "NOTHING_TO_MOVE")
            staying = tenant.assignments - moving
            depth = len(scope_segments(from_scope))
            landing = {
                a: (a[0], a[1], "/".join(scope_segments(to_scope) + scope_segments(a[2])[depth:])) for a in moving
            }
            dropped = {a for a in moving if landing[a] in staying}
            if dropped and not keep_existing:
                raise _refuse("FAILED_PRECONDITION", "MOVE_CONFLICT")
        except Refused as refused:
            return refused.outcome
        moved = {landing[a]: a for a in moving - dropped}
        conditional, expires = tenant.conditional, tenant.expires
        tenant.assignments = staying | moved.keys()
        tenant.conditional = (conditional & staying) | {new for new, old in moved.items() if old in conditional}
        tenant.expires = {a: at for a, at in expires.items() if a in staying}
        tenant.expires.update({new: expires[old] for new, old in moved.items() if old in expires})
        return self._bump(tenant, moved=len(moving) - len(dropped), merged=len(dropped))

    # --- the expiry sweep ---

    def sweep(self) -> Outcome:
        """The relay's sweep at `now`: in every tenant but deleted ones, each subject's
        expired assignments deleted together, one revision per subject. SERVER (README
        "Expiring grants"): housekeeping, no decision changes; `swept` is the number of
        subjects, as store.assignments.sweep_expired_assignments counts them."""
        swept = 0
        for tenant in self.tenants.values():
            if tenant.status is Status.DELETED:
                continue
            expired = tenant.assignments - tenant.in_force(self.now)
            for subject in sorted({a[0] for a in expired}):
                tenant.assignments -= {a for a in expired if a[0] == subject}
                tenant.revision += 1
                swept += 1
            tenant.forget_gone()
        return Outcome(facts={"swept": swept})

    def expiries(self) -> list[float]:
        """Every expiry of an assignment held in any tenant, in order (swept or not)."""
        return sorted(at for tenant in self.tenants.values() for a, at in tenant.expires.items() if a in tenant.assignments)

    # --- for failure reports ---

    def describe(self, tenant_id: str, subject: str | None = None) -> str:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return f"tenant {tenant_id}: (none)"
        lines = [
            f"tenant {tenant.slug} ({tenant.id}) {tenant.status.value} rev={tenant.revision} plan={tenant.plan}",
            f"  flags={self.effective_flags(tenant)} overrides={tenant.flag_overrides}",
            f"  plan features={ {n: (f.default_enabled, f.gates) for n, f in self.plans[tenant.plan].items()} }",
            "  roles="
            + ", ".join(f"{n}:{list(p)}" for n, p in sorted(tenant.roles.items()) if n not in SYSTEM_ROLES),
            f"  members={sorted(tenant.members)}",
        ]
        rows = sorted(a for a in tenant.assignments if subject is None or a[0] == subject)
        lines.append(f"  assignments{'' if subject is None else ' of ' + subject}=" + str(rows))
        conditional = sorted(a for a in tenant.conditional & tenant.assignments if subject is None or a[0] == subject)
        if conditional:
            lines.append(f"  under {OWNER_CONDITION!r}: {conditional}")
        expiring = sorted((a, at) for a, at in tenant.expires.items() if subject is None or a[0] == subject)
        if expiring:
            lines.append(
                f"  expiring (now={self.now:.3f}): "
                + ", ".join(f"{a} at {at:.3f}{' (expired)' if at <= self.now else ''}" for a, at in expiring)
            )
        return "\n".join(lines)
