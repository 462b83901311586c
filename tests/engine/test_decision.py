"""The CheckAccess decision (DESIGN.md "Decision semantics", steps 2–6) and its order.

Examples pin each step and the order between neighbours; a hypothesis property then
compares the engine with `reference_decide`, a model written here from the design text
(its own pattern and scope matching, no engine code), over random tenants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gatehouse.engine.decision import (
    Decision,
    SubjectGrants,
    TenantPolicy,
    compile_subject,
    compile_tenant,
    decide,
    effective_flags,
    needs_subject,
)
from gatehouse.engine.model import (
    AssignmentRow,
    KeyState,
    Plan,
    PlanFeature,
    Reason,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
)

PROPERTY = settings(max_examples=200, deadline=None)

ALICE = SubjectRef("user", "alice")


def tenant_snapshot(
    status: TenantStatus = TenantStatus.ACTIVE,
    *,
    tenant_id: str = "t1",
    revision: int = 7,
    features: Mapping[str, PlanFeature] | None = None,
    overrides: Mapping[str, bool] | None = None,
) -> TenantSnapshot:
    record = TenantRecord(
        id=tenant_id,
        slug=f"slug-{tenant_id}",
        name=f"Tenant {tenant_id}",
        status=status,
        plan="pro",
        region="eu",
        settings={},
        flag_overrides=dict(overrides or {}),
        quota_overrides={},
        revision=revision,
    )
    return TenantSnapshot(tenant=record, plan=Plan(name="pro", features=dict(features or {})))


def policy(status: TenantStatus = TenantStatus.ACTIVE, **kwargs: object) -> TenantPolicy:
    return compile_tenant(tenant_snapshot(status, **kwargs))  # type: ignore[arg-type]


def grants(
    *assignments: tuple[str, str, tuple[str, ...]],
    tenant_id: str = "t1",
    revision: int = 7,
    is_member: bool = True,
    subject: SubjectRef = ALICE,
) -> SubjectGrants:
    rows = tuple(AssignmentRow(role=role, scope=scope, permissions=perms) for role, scope, perms in assignments)
    return compile_subject(SubjectSnapshot(tenant_id, subject, revision, is_member, rows))


EDITOR = ("editor", "", ("invoice.*",))
EVERYTHING = ("owner", "", ("*",))


# --- step 2: unknown tenant ----------------------------------------------------------


@pytest.mark.parametrize("subject", [None, grants(EVERYTHING)], ids=["no-subject", "owner"])
def test_unknown_tenant_is_not_found(subject: SubjectGrants | None) -> None:
    assert decide(None, subject, "invoice.read", "") == Decision(False, Reason.TENANT_NOT_FOUND, 0)
    assert not needs_subject(None, "invoice.read")


# --- step 3: tenant status -----------------------------------------------------------


@pytest.mark.parametrize("permission", ["invoice.read", "invoice.list", "invoice.get", "read", "a.b.get"])
def test_suspended_tenant_still_answers_reads(permission: str) -> None:
    tenant = policy(TenantStatus.SUSPENDED)
    assert needs_subject(tenant, permission)
    allowed = decide(tenant, grants(EVERYTHING), permission, "")
    assert allowed.allowed and allowed.reason is Reason.ALLOWED and allowed.role == "owner"
    # A read on a suspended tenant goes on through the remaining steps.
    assert decide(tenant, grants(), permission, "").reason is Reason.NO_GRANT
    assert decide(tenant, None, permission, "").reason is Reason.NOT_A_MEMBER


@pytest.mark.parametrize(
    "permission", ["invoice.edit", "invoice.delete", "invoice.read.all", "invoice.reader", "readonly", "invoice.gets"]
)
def test_suspended_tenant_refuses_everything_but_reads(permission: str) -> None:
    tenant = policy(TenantStatus.SUSPENDED)
    assert not needs_subject(tenant, permission)
    for subject in (None, grants(EVERYTHING)):
        decision = decide(tenant, subject, permission, "")
        assert decision == Decision(False, Reason.TENANT_SUSPENDED, 7)


@pytest.mark.parametrize("status", [TenantStatus.DRAFT, TenantStatus.ARCHIVED, TenantStatus.DELETED])
@pytest.mark.parametrize("permission", ["invoice.read", "invoice.edit"])
def test_inactive_tenants_refuse_everything(status: TenantStatus, permission: str) -> None:
    tenant = policy(status)
    assert not needs_subject(tenant, permission)
    for subject in (None, grants(EVERYTHING)):
        assert decide(tenant, subject, permission, "") == Decision(False, Reason.TENANT_INACTIVE, 7)


def test_active_tenant_always_needs_the_subject() -> None:
    assert needs_subject(policy(), "invoice.edit")
    assert needs_subject(policy(), "invoice.read")


# --- step 4: membership --------------------------------------------------------------


def test_no_subject_is_not_a_member() -> None:
    assert decide(policy(), None, "invoice.read", "") == Decision(False, Reason.NOT_A_MEMBER, 7)


def test_former_member_with_leftover_assignments_is_not_a_member() -> None:
    subject = grants(EVERYTHING, is_member=False)
    assert decide(policy(), subject, "invoice.read", "").reason is Reason.NOT_A_MEMBER


def test_status_is_checked_before_membership() -> None:
    assert decide(policy(TenantStatus.SUSPENDED), None, "invoice.edit", "").reason is Reason.TENANT_SUSPENDED
    assert decide(policy(TenantStatus.ARCHIVED), None, "invoice.read", "").reason is Reason.TENANT_INACTIVE


def test_grants_of_another_tenant_never_answer() -> None:
    """Same subject id, same role name, other tenant: unrelated (zero cross-tenant answers)."""
    tenant = policy(tenant_id="t1", revision=3)
    foreign = grants(EVERYTHING, tenant_id="t2", revision=99)
    decision = decide(tenant, foreign, "invoice.read", "")
    assert decision == Decision(False, Reason.NOT_A_MEMBER, 3)
    assert decide(policy(tenant_id="t2"), foreign, "invoice.read", "").allowed


# --- step 5: feature flags -----------------------------------------------------------

REPORTS_OFF = {"reports": PlanFeature(default_enabled=False, gates=("report.*",))}
REPORTS_ON = {"reports": PlanFeature(default_enabled=True, gates=("report.*",))}


def test_feature_off_by_plan_default_gates_its_permissions() -> None:
    decision = decide(policy(features=REPORTS_OFF), grants(EVERYTHING), "report.read", "")
    assert decision == Decision(False, Reason.FEATURE_DISABLED, 7, feature="reports")


def test_feature_off_does_not_gate_other_permissions() -> None:
    assert decide(policy(features=REPORTS_OFF), grants(EVERYTHING), "invoice.read", "").allowed
    # `report.*` is a whole-segment pattern: `reports.read` and `report` are not gated.
    assert decide(policy(features=REPORTS_OFF), grants(EVERYTHING), "reports.read", "").allowed
    assert decide(policy(features=REPORTS_OFF), grants(EVERYTHING), "report", "").allowed


def test_tenant_override_turns_a_feature_on() -> None:
    tenant = policy(features=REPORTS_OFF, overrides={"reports": True})
    assert decide(tenant, grants(EVERYTHING), "report.read", "").allowed


def test_tenant_override_turns_a_feature_off() -> None:
    tenant = policy(features=REPORTS_ON, overrides={"reports": False})
    assert decide(tenant, grants(EVERYTHING), "report.read", "").reason is Reason.FEATURE_DISABLED


def test_feature_on_by_default_gates_nothing() -> None:
    assert decide(policy(features=REPORTS_ON), grants(EVERYTHING), "report.read", "").allowed


def test_override_of_a_feature_the_plan_lacks_gates_nothing() -> None:
    tenant = policy(features=REPORTS_ON, overrides={"exports": False})
    assert decide(tenant, grants(EVERYTHING), "export.run", "").allowed


def test_feature_without_gates_never_denies() -> None:
    tenant = policy(features={"beta": PlanFeature(default_enabled=False)})
    assert decide(tenant, grants(EVERYTHING), "beta.read", "").allowed


def test_effective_flags_are_plan_defaults_with_overrides() -> None:
    features = {
        "reports": PlanFeature(False, ("report.*",)),
        "exports": PlanFeature(True, ("export.*",)),
        "sso": PlanFeature(False),
    }
    snapshot = tenant_snapshot(features=features, overrides={"reports": True, "exports": False})
    assert effective_flags(snapshot) == {"reports": True, "exports": False, "sso": False}


def test_membership_is_checked_before_features_and_features_before_grants() -> None:
    tenant = policy(features=REPORTS_OFF)
    assert decide(tenant, None, "report.read", "").reason is Reason.NOT_A_MEMBER
    assert decide(tenant, grants(), "report.read", "").reason is Reason.FEATURE_DISABLED
    assert decide(tenant, grants(EVERYTHING), "report.read", "").reason is Reason.FEATURE_DISABLED


def test_suspended_read_of_a_disabled_feature_is_feature_disabled() -> None:
    tenant = policy(TenantStatus.SUSPENDED, features=REPORTS_OFF)
    assert decide(tenant, grants(EVERYTHING), "report.read", "").reason is Reason.FEATURE_DISABLED
    assert decide(tenant, grants(EVERYTHING), "report.edit", "").reason is Reason.TENANT_SUSPENDED


# --- step 6: grants ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant_scope", "resource_scope", "expected"),
    [
        ("emea/de", "emea/de", True),
        ("emea/de", "emea/de/berlin", True),
        ("emea/de", "emea/dex", False),
        ("emea/de", "emea", False),
        ("emea/de", "", False),
        ("", "emea/de/berlin", True),
        ("", "", True),
    ],
)
def test_grant_scope_must_cover_the_resource(grant_scope: str, resource_scope: str, expected: bool) -> None:
    decision = decide(policy(), grants(("editor", grant_scope, ("invoice.*",))), "invoice.read", resource_scope)
    assert decision.allowed is expected
    assert decision.reason is (Reason.ALLOWED if expected else Reason.NO_GRANT)


@pytest.mark.parametrize(
    ("permission", "expected"),
    [("invoice.read", True), ("invoice.line.edit", True), ("invoice", False), ("invoicex.read", False),
     ("report.read", False)],
)
def test_grant_pattern_must_match_the_permission(permission: str, expected: bool) -> None:
    assert decide(policy(), grants(EDITOR), permission, "").allowed is expected


def test_scope_and_pattern_must_hold_for_the_same_assignment() -> None:
    subject = grants(("editor", "emea", ("invoice.*",)), ("auditor", "apac", ("report.*",)))
    assert decide(policy(), subject, "report.read", "emea/de").reason is Reason.NO_GRANT
    assert decide(policy(), subject, "invoice.read", "apac/jp").reason is Reason.NO_GRANT
    assert decide(policy(), subject, "report.read", "apac/jp").allowed
    assert decide(policy(), subject, "invoice.read", "emea/de").allowed


def test_member_without_assignments_has_no_grant() -> None:
    assert decide(policy(), grants(), "invoice.read", "") == Decision(False, Reason.NO_GRANT, 7)


def test_allowed_reports_the_role_and_scope_that_granted() -> None:
    subject = grants(("reader", "emea/de", ("invoice.read",)), ("auditor", "apac", ("*",)))
    decision = decide(policy(), subject, "invoice.read", "emea/de/berlin")
    assert decision == Decision(True, Reason.ALLOWED, 7, role="reader", scope="emea/de")


def test_the_widest_applicable_grant_is_reported() -> None:
    subject = grants(
        ("local-admin", "emea/de/berlin", ("*",)),
        ("regional", "emea", ("invoice.*",)),
        ("country", "emea/de", ("invoice.read",)),
    )
    decision = decide(policy(), subject, "invoice.read", "emea/de/berlin")
    assert (decision.role, decision.scope) == ("regional", "emea")


def test_revision_is_the_newest_of_tenant_and_subject() -> None:
    assert decide(policy(revision=5), grants(EDITOR, revision=9), "invoice.read", "").revision == 9
    assert decide(policy(revision=9), grants(EDITOR, revision=5), "invoice.read", "").revision == 9
    assert decide(policy(revision=9), grants(EDITOR, revision=5), "report.read", "").revision == 9


def test_compiled_subject_keeps_its_identity() -> None:
    subject = grants(EDITOR, ("viewer", "a/b", ("invoice.read",)), revision=4)
    assert (subject.tenant_id, subject.subject_key, subject.revision, subject.is_member) == ("t1", "user/alice", 4, True)
    assert {(g.role, g.scope) for g in subject.grants} == {("editor", ""), ("viewer", "a/b")}


# --- the reference model -------------------------------------------------------------


def reference_pattern_matches(pattern: list[str], permission: list[str]) -> bool:
    if not pattern:
        return not permission
    if pattern[0] == "*":
        return any(reference_pattern_matches(pattern[1:], permission[n:]) for n in range(1, len(permission) + 1))
    return bool(permission) and pattern[0] == permission[0] and reference_pattern_matches(pattern[1:], permission[1:])


def reference_matches(patterns: tuple[str, ...], permission: str) -> bool:
    return any(reference_pattern_matches(p.split("."), permission.split(".")) for p in patterns)


def reference_covers(granted: str, requested: str) -> bool:
    granted_parts = granted.split("/") if granted else []
    requested_parts = requested.split("/") if requested else []
    return requested_parts[: len(granted_parts)] == granted_parts


@dataclass
class World:
    """One tenant as the design describes it; `subjects` maps a subject to (member?, assignments)."""

    tenant_id: str
    status: str
    revision: int
    features: dict[str, tuple[bool, tuple[str, ...]]]  # name -> (default on?, gated patterns)
    overrides: dict[str, bool]
    roles: dict[str, tuple[str, ...]]
    subjects: dict[str, tuple[bool, list[tuple[str, str]]]] = field(default_factory=dict)
    subject_revision: int = 0


@dataclass(frozen=True)
class Expected:
    allowed: bool
    reason: Reason
    revision: int
    grants: frozenset[tuple[str, str]] = frozenset()  # (role, scope) pairs that would grant
    features: frozenset[str] = frozenset()  # disabled features that gate the permission


def reference_decide(world: World | None, subject: str, permission: str, scope: str, foreign: bool) -> Expected:
    """DESIGN.md steps 2-6, read literally. `foreign`: the grants at hand are another tenant's."""
    if world is None:
        return Expected(False, Reason.TENANT_NOT_FOUND, 0)
    last_segment = permission.split(".")[-1]
    if world.status == "suspended" and last_segment not in ("read", "list", "get"):
        return Expected(False, Reason.TENANT_SUSPENDED, world.revision)
    if world.status in ("draft", "archived", "deleted"):
        return Expected(False, Reason.TENANT_INACTIVE, world.revision)
    if foreign:
        return Expected(False, Reason.NOT_A_MEMBER, world.revision)
    membership = world.subjects.get(subject)
    revision = world.revision if membership is None else max(world.revision, world.subject_revision)
    if membership is None or not membership[0]:
        return Expected(False, Reason.NOT_A_MEMBER, revision)
    gating = frozenset(
        name
        for name, (default_on, gates) in world.features.items()
        if not world.overrides.get(name, default_on) and reference_matches(gates, permission)
    )
    if gating:
        return Expected(False, Reason.FEATURE_DISABLED, revision, features=gating)
    granting = frozenset(
        (role, granted_scope)
        for role, granted_scope in membership[1]
        if reference_covers(granted_scope, scope) and reference_matches(world.roles[role], permission)
    )
    if granting:
        return Expected(True, Reason.ALLOWED, revision, grants=granting)
    return Expected(False, Reason.NO_GRANT, revision)


def engine_inputs(world: World, subject: str) -> tuple[TenantPolicy, SubjectSnapshot | None]:
    features = {name: PlanFeature(default, gates) for name, (default, gates) in world.features.items()}
    snapshot = tenant_snapshot(
        TenantStatus(world.status),
        tenant_id=world.tenant_id,
        revision=world.revision,
        features=features,
        overrides=world.overrides,
    )
    membership = world.subjects.get(subject)
    if membership is None:
        return compile_tenant(snapshot), None
    is_member, assignments = membership
    rows = tuple(AssignmentRow(role, scope, world.roles[role]) for role, scope in assignments)
    ref = SubjectRef(*subject.split("/", 1))
    return compile_tenant(snapshot), SubjectSnapshot(world.tenant_id, ref, world.subject_revision, is_member, rows)


# --- strategies ----------------------------------------------------------------------

SEGMENTS = ["invoice", "report", "read", "get", "edit"]
SUBJECTS = ["user/alice", "service/billing", "api_key/k1"]
ROLES = ["owner", "viewer", "auditor"]
FEATURES = ["reports", "exports", "beta"]

permissions = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(".".join)
role_patterns = st.lists(st.sampled_from(["*", *SEGMENTS]), min_size=1, max_size=3).map(".".join)
scope_lists = st.lists(st.sampled_from(["emea", "de", "d"]), max_size=3)
scopes = scope_lists.map("/".join)
STATUSES = ["active"] * 5 + ["suspended"] * 2 + ["draft", "archived", "deleted"]


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about one time in n (a weighted `sampled_from` would be skewed by hypothesis's
    preference for its first element)."""
    return st.integers(min_value=1, max_value=n).map(lambda k: k == n)


@dataclass(frozen=True)
class Case:
    world: World | None
    foreign: bool  # the grants at hand are the subject's grants in another tenant
    subject: str
    permission: str
    scope: str


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A tenant and a check against it. Role patterns, assignment scopes and feature gates
    are drawn partly from the check itself, so every step of the decision is reached often."""
    subject = draw(st.sampled_from(SUBJECTS))
    permission_segments = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3))
    permission = ".".join(permission_segments)
    scope_segments = draw(scope_lists)
    scope = "/".join(scope_segments)

    near_patterns = st.sampled_from(
        [permission, "*", f"{permission_segments[0]}.*", f"*.{permission_segments[-1]}"]
    )
    patterns = st.one_of(near_patterns, role_patterns)
    covering = st.integers(min_value=0, max_value=len(scope_segments)).map(lambda n: "/".join(scope_segments[:n]))

    roles = {role: tuple(draw(st.lists(patterns, min_size=1, max_size=2))) for role in ROLES}
    features = {
        name: (draw(st.booleans()), tuple(draw(st.lists(patterns, max_size=2))))
        for name in FEATURES
        if draw(one_in(2))
    }
    overrides = {name: draw(st.booleans()) for name in FEATURES if draw(one_in(3))}
    subjects = {}  # only the asking subject: no other row can reach a decision about it
    if not draw(one_in(10)):  # a tenth were never members
        assignments = draw(st.lists(st.tuples(st.sampled_from(ROLES), st.one_of(covering, scopes)), max_size=3))
        subjects[subject] = (not draw(one_in(10)), assignments)  # a tenth are former members
    world = World(
        tenant_id="t1",
        status=draw(st.sampled_from(STATUSES)),
        revision=draw(st.integers(min_value=1, max_value=50)),
        features=features,
        overrides=overrides,
        roles=roles,
        subjects=subjects,
        subject_revision=draw(st.integers(min_value=1, max_value=50)),
    )
    return Case(
        world=None if draw(one_in(12)) else world,
        foreign=draw(one_in(12)),
        subject=subject,
        permission=permission,
        scope=scope,
    )


FOREIGN_OWNER = AssignmentRow("owner", "", ("*",))


@PROPERTY
@given(case=cases())
def test_decide_agrees_with_the_reference_model(case: Case) -> None:
    """Run the engine the way the servicer does: subject loaded only when `needs_subject`."""
    world, subject, permission, scope = case.world, case.subject, case.permission, case.scope
    if world is None:
        tenant, snapshot = None, None
    else:
        tenant, snapshot = engine_inputs(world, subject)
    if case.foreign:
        # A wrongly keyed cache hands over the same subject's grants from tenant t2,
        # where it is an owner at the root: the strongest grant there is.
        ref = SubjectRef(*subject.split("/", 1))
        snapshot = SubjectSnapshot("t2", ref, 99, True, (FOREIGN_OWNER,))
    loaded = compile_subject(snapshot) if snapshot is not None and needs_subject(tenant, permission) else None

    actual = decide(tenant, loaded, permission, scope)
    expected = reference_decide(world, subject, permission, scope, foreign=case.foreign)
    event(expected.reason.name)

    assert (actual.allowed, actual.reason, actual.revision) == (expected.allowed, expected.reason, expected.revision)
    if actual.allowed:
        assert (actual.role, actual.scope) in expected.grants
    else:
        assert (actual.role, actual.scope) == ("", "")
    if actual.reason is Reason.FEATURE_DISABLED:
        assert actual.feature in expected.features
    else:
        assert actual.feature == ""


@PROPERTY
@given(
    status=st.sampled_from(TenantStatus),
    is_member=st.booleans(),
    assignments=st.lists(st.tuples(st.sampled_from(ROLES), scopes, st.lists(role_patterns, max_size=2)), max_size=3),
    permission=permissions,
    scope=scopes,
)
def test_needs_subject_is_false_only_when_the_subject_cannot_matter(
    status: TenantStatus,
    is_member: bool,
    assignments: list[tuple[str, str, list[str]]],
    permission: str,
    scope: str,
) -> None:
    """Skipping the subject load must not change the answer (only the revision it names)."""
    tenant = policy(status)
    subject = grants(*((role, s, tuple(p)) for role, s, p in assignments), is_member=is_member)
    with_subject = decide(tenant, subject, permission, scope)
    without = decide(tenant, None, permission, scope)
    if not needs_subject(tenant, permission):
        assert with_subject == without
    elif with_subject.reason is not Reason.NOT_A_MEMBER:
        assert without.reason is Reason.NOT_A_MEMBER  # the subject did matter


# --- API keys as subjects (step 4: KEY_REVOKED; step 6: limited to their own patterns) ---

KEY = SubjectRef("api_key", "k1")


def key_grants(key: KeyState, *assignments: tuple[str, str, tuple[str, ...]], is_member: bool = True) -> SubjectGrants:
    rows = tuple(AssignmentRow(role=role, scope=scope, permissions=perms) for role, scope, perms in assignments)
    return compile_subject(SubjectSnapshot("t1", KEY, 7, is_member, rows, key=key))


def test_key_is_limited_to_its_own_patterns() -> None:
    key = key_grants(KeyState(permissions=("invoice.read",)), EVERYTHING)
    assert decide(policy(), key, "invoice.read", "", now=100.0).allowed
    denied = decide(policy(), key, "invoice.create", "", now=100.0)
    assert (denied.allowed, denied.reason) == (False, Reason.NO_GRANT)


def test_key_patterns_alone_grant_nothing() -> None:
    key = key_grants(KeyState(permissions=("*",)))
    assert decide(policy(), key, "invoice.read", "", now=100.0).reason is Reason.NO_GRANT


@pytest.mark.parametrize(
    "key",
    [KeyState(permissions=("*",), revoked=True), KeyState(permissions=("*",), expires_at=100.0)],
    ids=["revoked", "expired"],
)
def test_revoked_or_expired_key_answers_key_revoked(key: KeyState) -> None:
    decision = decide(policy(), key_grants(key, EVERYTHING), "invoice.read", "", now=100.0)
    assert (decision.allowed, decision.reason) == (False, Reason.KEY_REVOKED)


def test_key_before_its_expiry_works() -> None:
    key = key_grants(KeyState(permissions=("*",), expires_at=100.0), EVERYTHING)
    assert decide(policy(), key, "invoice.read", "", now=99.9).allowed


def test_tenant_status_is_checked_before_the_key() -> None:
    key = key_grants(KeyState(permissions=("*",), revoked=True), EVERYTHING)
    assert decide(policy(TenantStatus.ARCHIVED), key, "invoice.read", "", now=1.0).reason is Reason.TENANT_INACTIVE
