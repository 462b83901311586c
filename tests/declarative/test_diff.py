"""The difference between live and desired state (gatehouse.declarative.diff).

Properties over random states: diff(a, a) is empty; the steps of diff(a, b) applied to a
give b (with --prune), or a with b laid over it (without); and nothing a file leaves out
is removed without --prune. Examples pin the order the server needs (grant before revoke
for the last-owner guard, revoke before a role is deleted) and the refusals.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from gatehouse.declarative.diff import (
    AddMember,
    AssignRole,
    ChangeGrant,
    CreateRole,
    CreateTenant,
    DeleteRole,
    PatchConfig,
    PlanError,
    RemoveMember,
    RevokeRole,
    Transition,
    UpsertPlan,
    apply_steps,
    diff,
    merge_patch_between,
    overlay,
)
from gatehouse.declarative.model import FeatureSpec, Grant, MemberSpec, PlanSpec, RoleSpec, State, TenantSpec
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import TenantStatus
from gatehouse.merge_patch import merge_patch

names = st.sampled_from(["a", "b", "c", "d"])
scopes = st.sampled_from(["", "emea", "emea/de", "us"])
json_leaf = st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(["x", "y"]), st.floats(0.5, 2.5))
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(names, inner, max_size=3)), max_leaves=6
)
settings_map = st.dictionaries(names, json_value, max_size=4)
# draft is only ever a start (nothing leads back to it); deleted is tested by example.
statuses = st.sampled_from([TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
# A grant's terms: conditions that type-check (the schema checks them), expiries to the microsecond.
LATER = datetime.datetime(2031, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
conditions = st.sampled_from(["", "context.ok == true", "resource.attributes.owner == subject.id"])
expiries = st.sampled_from([None, LATER, LATER + datetime.timedelta(microseconds=250)])


@st.composite
def member_grants(draw: Any, grantable: list[str]) -> frozenset[Grant]:
    """At most one grant per (role, scope), each with its own terms."""
    keys = draw(st.sets(st.tuples(st.sampled_from(grantable), scopes), max_size=3))
    return frozenset(Grant(role, scope, draw(conditions), draw(expiries)) for role, scope in keys)


@st.composite
def plans(draw: Any) -> dict[str, PlanSpec]:
    out = {}
    for name in draw(st.sets(st.sampled_from(["free", "pro"]))):
        features = draw(
            st.dictionaries(names, st.builds(FeatureSpec, st.booleans(), st.sampled_from([(), ("report.*",)])), max_size=2)
        )
        quotas = draw(st.dictionaries(names, st.integers(0, 9), max_size=2))
        out[name] = PlanSpec(name, features, quotas, draw(st.dictionaries(names, st.integers(0, 9), max_size=2)))
    return out


@st.composite
def tenant(draw: Any, slug: str) -> TenantSpec:
    roles = {
        name: RoleSpec(name, draw(st.sampled_from([("x.read",), ("x.*", "y.read")])), draw(st.sampled_from(["", "d"])))
        for name in draw(st.sets(st.sampled_from(["ops", "billing", "audit"]), max_size=2))
    }
    grantable = sorted(roles) + ["owner", "viewer"]
    members = {}
    for subject in draw(st.sets(st.sampled_from(["user/alice", "user/bob", "service/ci"]), max_size=3)):
        members[subject] = MemberSpec(subject, draw(member_grants(grantable)))
    return TenantSpec(
        slug=slug,
        name=draw(st.sampled_from(["Acme", "Acme Corp"])),
        plan=draw(st.sampled_from(["free", "pro"])),
        region=draw(st.sampled_from(["", "eu"])),
        status=draw(statuses),
        settings=draw(settings_map),
        flag_overrides=draw(st.dictionaries(names, st.booleans(), max_size=2)),
        quota_overrides=draw(st.dictionaries(names, st.integers(0, 9), max_size=2)),
        roles=roles,
        members=members,
    )


@st.composite
def states(draw: Any) -> State:
    slugs = draw(st.sets(st.sampled_from(["acme", "globex"]), max_size=2))
    return State(plans=draw(plans()), tenants={slug: draw(tenant(slug)) for slug in slugs})


UNMANAGEABLE = ("plan", "region", "status", "settings", "flag_overrides", "quota_overrides", "roles", "members")


@st.composite
def files(draw: Any) -> State:
    """A state as a file may hold it: any of a tenant's fields but its name (needed to create it)
    left out (None, not managed).
    Without its roles, its grants name system roles only (others might not exist live)."""
    state = draw(states())
    tenants = {}
    for slug, t in state.tenants.items():
        left_out = draw(st.sets(st.sampled_from(UNMANAGEABLE)))
        t = replace(t, **{name: None for name in left_out})
        if t.roles is None and t.members is not None:
            t = replace(t, members={
                s: replace(m, grants=frozenset(g for g in m.grants if g.role in ("owner", "viewer")))
                for s, m in t.members.items()
            })  # fmt: skip
        tenants[slug] = t
    return replace(state, tenants=tenants)


def forget_ids(state: State) -> State:
    return replace(state, tenants={slug: replace(t, id=None) for slug, t in state.tenants.items()})


@settings(max_examples=300, deadline=None)
@given(states(), st.booleans())
def test_diff_of_a_state_with_itself_is_empty(state: State, prune: bool) -> None:
    assert diff(state, state, prune=prune) == []


@settings(max_examples=300, deadline=None)
@given(states(), states())
def test_the_steps_applied_to_a_give_b_with_prune(a: State, b: State) -> None:
    result = apply_steps(a, diff(a, b, prune=True))
    # Plans and tenants are never removed; everything the file names is exactly as written.
    assert {name: result.plans[name] for name in b.plans} == b.plans
    assert forget_ids(State(tenants={s: result.tenants[s] for s in b.tenants})).tenants == b.tenants
    assert diff(result, b, prune=True) == []


@settings(max_examples=300, deadline=None)
@given(states(), files())
def test_without_prune_the_file_is_laid_over_live_and_nothing_is_removed(a: State, b: State) -> None:
    steps = diff(a, b, prune=False)
    assert not any(isinstance(s, (DeleteRole, RemoveMember, RevokeRole)) for s in steps)
    result = apply_steps(a, steps)
    assert forget_ids(result) == forget_ids(overlay(a, b))
    assert diff(result, b, prune=False) == []


@settings(max_examples=300, deadline=None)
@given(states(), files())
def test_with_prune_what_the_file_leaves_out_is_still_not_managed(a: State, b: State) -> None:
    try:
        steps = diff(a, b, prune=True)
    except PlanError:
        # Pruning roles that members the file leaves alone still hold: refused, rightly.
        assert any(t.members is None and t.roles is not None for t in b.tenants.values())
        reject()
    result = apply_steps(a, steps)
    assert forget_ids(result) == forget_ids(overlay(a, b, prune=True))
    assert diff(result, b, prune=True) == []


@settings(max_examples=200, deadline=None)
@given(settings_map, settings_map)
def test_merge_patch_between_two_settings_turns_one_into_the_other(source: dict[str, Any], target: dict[str, Any]) -> None:
    assert merge_patch(source, merge_patch_between(source, target)) == target
    assert merge_patch_between(target, target) == {}


def test_a_new_tenant_is_created_then_walked_to_its_status() -> None:
    want = TenantSpec(
        slug="acme", name="Acme", status=TenantStatus.SUSPENDED,
        members={"user/alice": MemberSpec("user/alice", frozenset({Grant("owner")}))},
    )  # fmt: skip
    steps = diff(State(), State(tenants={"acme": want}))
    assert steps == [
        CreateTenant(want),
        Transition("acme", Action.ACTIVATE, TenantStatus.DRAFT, TenantStatus.ACTIVE),
        Transition("acme", Action.SUSPEND, TenantStatus.ACTIVE, TenantStatus.SUSPENDED),
        AddMember("acme", "user/alice"),
        AssignRole("acme", "user/alice", Grant("owner")),
    ]


def test_ownership_moves_by_granting_before_revoking_and_roles_go_after_their_grants() -> None:
    live = TenantSpec(
        slug="acme", name="Acme", plan="", region="", status=TenantStatus.ACTIVE, settings={},
        flag_overrides={}, quota_overrides={}, roles={"ops": RoleSpec("ops", ("x.*",), "")},
        members={"user/alice": MemberSpec("user/alice", frozenset({Grant("owner"), Grant("ops", "eu")}))},
    )  # fmt: skip
    want = replace(live, roles={}, members={"user/bob": MemberSpec("user/bob", frozenset({Grant("owner")}))})
    steps = diff(State(tenants={"acme": live}), State(tenants={"acme": want}), prune=True)
    assert steps == [
        AddMember("acme", "user/bob"),
        AssignRole("acme", "user/bob", Grant("owner")),
        RemoveMember("acme", "user/alice"),
        DeleteRole("acme", "ops"),
    ]


def test_settings_keys_and_overrides_the_file_leaves_out_stay_without_prune() -> None:
    live = TenantSpec(
        slug="acme", name="Acme", plan="", region="", status=TenantStatus.ACTIVE,
        settings={"theme": "light", "limits": {"a": 1, "b": 2}}, flag_overrides={"reports": True},
    )  # fmt: skip
    want = TenantSpec(slug="acme", settings={"limits": {"a": 3}})
    (step,) = diff(State(tenants={"acme": live}), State(tenants={"acme": want}))
    assert step == PatchConfig("acme", {"limits": {"a": 3}}, before=live)
    (pruned,) = diff(State(tenants={"acme": live}), State(tenants={"acme": want}), prune=True)
    # flag_overrides is left out: not managed, even with prune; `{}` manages it as none.
    assert pruned == PatchConfig("acme", {"theme": None, "limits": {"a": 3, "b": None}}, before=live)
    (cleared,) = diff(State(tenants={"acme": live}), State(tenants={"acme": replace(want, flag_overrides={})}), prune=True)
    assert cleared == replace(pruned, clear_flags=("reports",))


def test_json_numbers_compare_as_json_and_true_is_not_one() -> None:
    live = TenantSpec(slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={"n": 3.0, "b": 1})
    assert diff(State(tenants={"acme": live}), State(tenants={"acme": TenantSpec("acme", settings={"n": 3, "b": 1})})) == []
    (step,) = diff(State(tenants={"acme": live}), State(tenants={"acme": TenantSpec("acme", settings={"b": True})}))
    assert isinstance(step, PatchConfig) and step.settings_patch == {"b": True}


def test_a_plan_without_prune_keeps_the_features_the_file_leaves_out() -> None:
    live = PlanSpec("pro", {"reports": FeatureSpec(True, ("report.*",))}, {"seats": 5})
    want = PlanSpec("pro", {}, {"seats": 9})
    (step,) = diff(State(plans={"pro": live}), State(plans={"pro": want}))
    assert step == UpsertPlan(PlanSpec("pro", {"reports": FeatureSpec(True, ("report.*",))}, {"seats": 9}), live)


def test_a_tenant_to_be_deleted_is_archived_then_deleted_and_nothing_else() -> None:
    live = TenantSpec(slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={})
    want = TenantSpec(slug="acme", name="Other", status=TenantStatus.DELETED, roles={"ops": RoleSpec("ops", ("x.read",))})
    assert diff(State(tenants={"acme": live}), State(tenants={"acme": want})) == [
        Transition("acme", Action.ARCHIVE, TenantStatus.ACTIVE, TenantStatus.ARCHIVED),
        Transition("acme", Action.DELETE, TenantStatus.ARCHIVED, TenantStatus.DELETED),
    ]
    assert diff(State(), State(tenants={"acme": want})) == []


@pytest.mark.parametrize(
    "want, message",
    [
        (TenantSpec("acme", status=TenantStatus.DRAFT, where="s.yaml:3"), "s.yaml:3: tenant acme: no lifecycle path from active to draft"),
        (
            TenantSpec("acme", roles={"owner": RoleSpec("owner", ("*",), where="s.yaml:9")}),
            "s.yaml:9: tenant acme: owner is a system role and fixed",
        ),
        (
            TenantSpec("acme", members={"user/a": MemberSpec("user/a", frozenset({Grant("ghost")}), where="s.yaml:12")}),
            "s.yaml:12: tenant acme: user:a is granted ghost, which is neither a system role nor defined",
        ),
    ],
)
def test_what_no_calls_can_reach_is_refused_naming_the_line(want: TenantSpec, message: str) -> None:
    live = TenantSpec(slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={})
    with pytest.raises(PlanError) as caught:
        diff(State(tenants={"acme": live}), State(tenants={"acme": want}))
    assert str(caught.value).startswith(message)


def test_a_null_setting_can_stay_but_not_be_written() -> None:
    live = TenantSpec(slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={"a": None})
    assert diff(State(tenants={"acme": live}), State(tenants={"acme": TenantSpec("acme", settings={"a": None})})) == []
    with pytest.raises(PlanError, match="settings.b: a null cannot be written"):
        diff(State(tenants={"acme": live}), State(tenants={"acme": TenantSpec("acme", settings={"b": None})}))


def test_a_new_tenant_needs_a_name() -> None:
    with pytest.raises(PlanError, match="name is required"):
        diff(State(), State(tenants={"acme": TenantSpec("acme", where="s.yaml:1")}))


def test_create_role_and_grant_in_one_apply() -> None:
    live = TenantSpec(slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={})
    want = TenantSpec(
        "acme", roles={"ops": RoleSpec("ops", ("x.*",))},
        members={"user/a": MemberSpec("user/a", frozenset({Grant("ops", "eu")}))},
    )  # fmt: skip
    assert diff(State(tenants={"acme": live}), State(tenants={"acme": want})) == [
        CreateRole("acme", RoleSpec("ops", ("x.*",), "")),
        AddMember("acme", "user/a"),
        AssignRole("acme", "user/a", Grant("ops", "eu")),
    ]


NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def active(**fields: Any) -> TenantSpec:
    return TenantSpec(
        slug="acme", name="A", plan="", region="", status=TenantStatus.ACTIVE, settings={},
        flag_overrides={}, quota_overrides={}, roles={}, **fields,
    )  # fmt: skip


def test_a_grant_is_its_role_and_scope_and_other_terms_are_a_change_of_it() -> None:
    plain = Grant("viewer", "eu")
    conditional = Grant("viewer", "eu", "context.ok == true")
    expiring = Grant("viewer", "eu", "context.ok == true", LATER)
    live = active(members={"user/a": MemberSpec("user/a", frozenset({plain, Grant("owner")}))})
    for prune in (False, True):
        want = replace(live, members={"user/a": MemberSpec("user/a", frozenset({expiring, Grant("owner")}))})
        steps = diff(State(tenants={"acme": live}), State(tenants={"acme": want}), prune=prune, now=NOW)
        assert steps == [ChangeGrant("acme", "user/a", expiring, plain)]
        result = apply_steps(State(tenants={"acme": live}), steps)
        assert result.tenants["acme"].members == want.members
        assert diff(result, State(tenants={"acme": want}), prune=prune, now=NOW) == []
    # Back to plain, and the expiry alone: changes too.
    held = active(members={"user/a": MemberSpec("user/a", frozenset({expiring}))})
    for target in (plain, conditional, replace(expiring, expires_at=LATER + datetime.timedelta(days=1))):
        want = replace(held, members={"user/a": MemberSpec("user/a", frozenset({target}))})
        assert diff(State(tenants={"acme": held}), State(tenants={"acme": want})) == [
            ChangeGrant("acme", "user/a", target, expiring)
        ]


def test_changes_run_after_the_new_grants_and_before_the_revokes() -> None:
    live = active(members={
        "user/a": MemberSpec("user/a", frozenset({Grant("owner"), Grant("viewer", "eu")})),
        "user/b": MemberSpec("user/b", frozenset()),
    })  # fmt: skip
    want = replace(live, members={
        "user/a": MemberSpec("user/a", frozenset({Grant("owner", "", "context.ok == true")})),
        "user/b": MemberSpec("user/b", frozenset({Grant("owner")})),
    })  # fmt: skip
    assert diff(State(tenants={"acme": live}), State(tenants={"acme": want}), prune=True) == [
        AssignRole("acme", "user/b", Grant("owner")),
        ChangeGrant("acme", "user/a", Grant("owner", "", "context.ok == true"), Grant("owner")),
        RevokeRole("acme", "user/a", Grant("viewer", "eu")),
    ]


def test_a_grant_expiring_by_the_apply_is_refused_naming_its_line() -> None:
    past = Grant("viewer", "eu", expires_at=NOW, where="s.yaml:14")
    want = TenantSpec("acme", members={"user/a": MemberSpec("user/a", frozenset({past}), where="s.yaml:12")})
    live = State(tenants={"acme": active(members={"user/a": MemberSpec("user/a")})})
    with pytest.raises(PlanError) as caught:
        diff(live, State(tenants={"acme": want}), now=NOW)
    assert str(caught.value) == (
        "s.yaml:14: tenant acme: user:a: viewer at eu: expires_at 2030-01-01T00:00:00Z is not ahead of now "
        "(2030-01-01T00:00:00Z); drop the grant or give it a later expiry"
    )
    ahead = replace(past, expires_at=NOW + datetime.timedelta(microseconds=1))
    later = replace(want, members={"user/a": MemberSpec("user/a", frozenset({ahead}))})
    assert diff(live, State(tenants={"acme": later}), now=NOW) == [AssignRole("acme", "user/a", ahead)]
