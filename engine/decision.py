"""The CheckAccess decision, exactly in the order DESIGN.md lists, as pure functions.

The servicer asks `needs_subject` first (steps 2 and 3 need only the tenant) and loads
the subject's grants only when they can matter; `decide` applies steps 2–6 in order.
Step 1 (malformed request) is `gatehouse.engine.validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gatehouse.engine.conditions import Condition, ConditionFacts, ConditionInput, Missing, compile_condition
from gatehouse.engine.model import KeyState, Reason, SubjectSnapshot, TenantSnapshot, TenantStatus
from gatehouse.engine.patterns import PermissionSet, scope_covers

READ_ACTIONS = frozenset({"read", "list", "get"})


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason
    revision: int
    role: str = ""
    scope: str = ""
    feature: str = ""
    # Unix seconds from which deciding again could answer otherwise with the same entries:
    # the expiry of the grant that allowed, for CONDITIONAL the earliest expiry of the
    # grants whose conditions lacked attributes (an API key's expiry is `decided_until`'s),
    # or the time it was decided at when a condition read `request.time`.
    until: float = math.inf
    # CONDITIONAL: the attributes conditions needed and the request did not carry.
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Grant:
    """A compiled role assignment: where it applies, what it permits, and until when
    (unix seconds; None = for good)."""

    role: str
    scope: str
    permissions: PermissionSet
    expires_at: float | None = None
    condition: Condition | None = None  # compiled once, when the assignment was loaded

    def unexpired(self, now: float) -> bool:
        """Not past `expires_at` at `now` (unix seconds). `decide` makes the same test
        inline (it needs `expires_at` after it)."""
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """A tenant compiled for deciding: its status and the features that are off."""

    tenant_id: str
    status: TenantStatus
    revision: int
    disabled_features: tuple[tuple[str, PermissionSet], ...]


@dataclass(frozen=True, slots=True)
class SubjectGrants:
    """One subject's compiled grants in one tenant, stamped with the revision read at."""

    tenant_id: str
    subject_key: str
    revision: int
    is_member: bool
    grants: tuple[Grant, ...]
    key: "CompiledKey | None" = None

    def in_force(self, now: float) -> tuple[Grant, ...]:
        """The grants that hold at `now` (unix seconds) whatever the request: not expired,
        no condition.
        What the escalation guard and the owner rules count; `decide` applies the same
        test to each grant it tries."""
        return tuple(g for g in self.grants if g.condition is None and g.unexpired(now))


@dataclass(frozen=True, slots=True)
class CompiledKey:
    """An API key's limit and life, compiled: it is allowed only what its roles grant AND
    its own patterns match, and nothing once revoked or past `expires_at`."""

    limit: PermissionSet
    expires_at: float | None
    revoked: bool

    def usable(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


def effective_flags(snapshot: TenantSnapshot) -> dict[str, bool]:
    """Plan feature defaults, then the tenant's overrides on top."""
    flags = {name: feature.default_enabled for name, feature in snapshot.plan.features.items()}
    flags.update(snapshot.tenant.flag_overrides)
    return flags


def compile_tenant(snapshot: TenantSnapshot) -> TenantPolicy:
    flags = effective_flags(snapshot)
    disabled = tuple(
        (name, PermissionSet(feature.gates))
        for name, feature in sorted(snapshot.plan.features.items())
        if feature.gates and not flags.get(name, feature.default_enabled)
    )
    return TenantPolicy(
        tenant_id=snapshot.tenant.id,
        status=snapshot.tenant.status,
        revision=snapshot.tenant.revision,
        disabled_features=disabled,
    )


def compile_subject(
    snapshot: SubjectSnapshot, permission_sets: dict[tuple[str, ...], PermissionSet] | None = None
) -> SubjectGrants:
    """`permission_sets`: compiled patterns to share (a whole tenant's members compiled
    at once hold each role's set once, not once per member)."""
    if permission_sets is None:
        permission_sets = {}
    grants = []
    for row in snapshot.assignments:
        permissions = permission_sets.setdefault(row.permissions, PermissionSet(row.permissions))
        condition = compile_condition(row.condition) if row.condition else None
        grants.append(
            Grant(role=row.role, scope=row.scope, permissions=permissions, expires_at=row.expires_at, condition=condition)
        )
    # Widest scope first, so the reported grant is the most general one that applies.
    grants.sort(key=lambda g: (g.scope.count("/") if g.scope else -1, g.scope, g.role))
    return SubjectGrants(
        tenant_id=snapshot.tenant_id,
        subject_key=snapshot.subject.key,
        revision=snapshot.revision,
        is_member=snapshot.is_member,
        grants=tuple(grants),
        key=_compile_key(snapshot.key) if snapshot.key is not None else None,
    )


def _compile_key(key: KeyState) -> CompiledKey:
    return CompiledKey(limit=PermissionSet(key.permissions), expires_at=key.expires_at, revoked=key.revoked)


def is_read_action(permission: str) -> bool:
    return permission.rsplit(".", 1)[-1] in READ_ACTIONS


def decide(
    tenant: TenantPolicy | None,
    subject: SubjectGrants | None,
    permission: str,
    scope: str,
    now: float = 0.0,
    facts: ConditionFacts | None = None,
) -> Decision:
    """Steps 2–6 of DESIGN.md "Decision semantics"; the first that applies decides.

    `now` (unix seconds) is when the question is asked: an API key past its expiry
    answers KEY_REVOKED, and a grant past its `expires_at` grants nothing, whatever
    cache held it (no event is needed, or sent, at that instant). Passed in, so the
    engine stays a pure function.

    A grant with a condition applies only when it holds for the request: `facts()` gives
    the request's attributes and context (called at most once, and only when a condition
    is reached; None: the request carried none). When no grant allows and some
    condition could not be decided for want of attributes, the answer is CONDITIONAL
    naming them."""
    if tenant is None:
        return Decision(False, Reason.TENANT_NOT_FOUND, 0)
    if subject is not None and subject.tenant_id != tenant.tenant_id:
        # Grants read for another tenant say nothing about this one, whatever ids they
        # share: a cache or store keyed wrongly fails closed, never answers across tenants.
        subject = None
    revision = max(tenant.revision, subject.revision) if subject is not None else tenant.revision
    status = tenant.status
    if status is not TenantStatus.ACTIVE:
        if status is TenantStatus.SUSPENDED:
            if not is_read_action(permission):
                return Decision(False, Reason.TENANT_SUSPENDED, revision)
        else:
            return Decision(False, Reason.TENANT_INACTIVE, revision)
    key = subject.key if subject is not None else None
    if key is not None and not key.usable(now):
        return Decision(False, Reason.KEY_REVOKED, revision)
    if subject is None or not subject.is_member:
        return Decision(False, Reason.NOT_A_MEMBER, revision)
    for name, gates in tenant.disabled_features:
        if gates.matches(permission):
            return Decision(False, Reason.FEATURE_DISABLED, revision, feature=name)
    if key is not None and not key.limit.matches(permission):
        return Decision(False, Reason.NO_GRANT, revision)
    missing: set[str] | None = None
    missing_until = math.inf  # the earliest expiry among the grants that left `missing`
    timed = False  # a condition read request.time: the answer holds only now
    request: ConditionInput | None = None
    for grant in subject.grants:
        if scope_covers(grant.scope, scope) and grant.permissions.matches(permission):
            expires_at = grant.expires_at
            if expires_at is not None and now >= expires_at:
                continue
            condition = grant.condition
            if condition is not None:
                if request is None:
                    request = facts() if facts is not None else _bare_facts(subject.subject_key, scope)
                outcome = condition.evaluate(request, now)
                timed = timed or condition.reads_time
                if outcome is not True:
                    if isinstance(outcome, Missing):
                        missing = set(outcome.names) if missing is None else missing | set(outcome.names)
                        if expires_at is not None and expires_at < missing_until:
                            missing_until = expires_at
                    continue
            # Remembered no longer than the grant lasts: then another grant (or none) decides.
            until = now if timed else math.inf if expires_at is None else expires_at
            return Decision(True, Reason.ALLOWED, revision, role=grant.role, scope=grant.scope, until=until)
    until = now if timed else math.inf
    if missing:
        # CONDITIONAL lasts no longer than the grants that made it so: once one expires,
        # its missing names go (and with the last, the answer turns NO_GRANT).
        until = min(until, missing_until)
        return Decision(False, Reason.CONDITIONAL, revision, until=until, missing=tuple(sorted(missing)))
    return Decision(False, Reason.NO_GRANT, revision, until=until)


def _bare_facts(subject_key: str, scope: str) -> ConditionInput:
    """What a condition can know of a question asked without attributes (admin calls,
    adapters that carry none): who, and where."""
    subject_type, _, subject_id = subject_key.partition("/")
    return ConditionInput(subject_type, subject_id, resource_scope=scope)


def decided_until(subject: SubjectGrants | None, now: float, decision: Decision | None = None) -> float:
    """Until when (unix seconds) `decide` gives the same answer at `now` and later, with
    the same tenant and subject: an API key's expiry turns its answers into KEY_REVOKED,
    and an ALLOW lasts no longer than the grant that allowed it (`decision.until`), a
    CONDITIONAL no longer than the conditional grants that left attributes missing. A
    denial never turns into an allow as time passes (expiry only takes grants away), so
    nothing else in a decision depends on the time, except a condition reading
    `request.time` (then `decision.until` is the time it was decided at: not remembered)."""
    until = math.inf if decision is None else decision.until
    key = subject.key if subject is not None else None
    if key is None or key.expires_at is None or now >= key.expires_at:
        return until
    return min(until, key.expires_at)


def needs_subject(tenant: TenantPolicy | None, permission: str) -> bool:
    """False when steps 2–3 already deny, so the subject's grants need not be loaded."""
    if tenant is None:
        return False
    status = tenant.status
    if status is TenantStatus.ACTIVE:
        return True
    return status is TenantStatus.SUSPENDED and is_read_action(permission)
