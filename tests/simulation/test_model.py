"""The reference model on its own: if it were wrong, the simulation would prove nothing.

Examples straight from DESIGN.md, plus a cross-check of the model's pattern matcher and
scope test against a brute-force reading of their definitions.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import uuid

import pytest

from tests.simulation.model import (
    LIFECYCLE,
    OWNER_CONDITION,
    Answer,
    Check,
    Feature,
    Status,
    World,
    is_canonical_tenant_id,
    is_read_action,
    is_valid_scope,
    pattern_matches,
    scope_covers,
)
from tests.simulation.operations import DOT_SCOPES, GRANT_SCOPES, misspellings


@pytest.mark.parametrize(
    ("pattern", "permission", "matches"),
    [
        ("invoice.*", "invoice.read", True),
        ("invoice.*", "invoice.line.edit", True),
        ("invoice.*", "invoice", False),  # `*` takes at least one segment
        ("invoice.*", "invoices.read", False),
        ("*", "anything.at.all", True),
        ("*", "x", True),
        ("*.read", "a.b.read", True),
        ("*.read", "read", False),
        ("*.read", "a.reader", False),
        ("*.line.*", "invoice.line.edit", True),
        ("*.line.*", "line.edit", False),
        ("a.*.c", "a.b.x.c", True),
        ("a.*.c", "a.c", False),
        ("invoice.read", "invoice.read", True),
        ("invoice.read", "invoice.read.all", False),
    ],
)
def test_pattern_examples(pattern: str, permission: str, matches: bool) -> None:
    assert pattern_matches(pattern, permission) is matches


def _pattern_by_regex(pattern: str, permission: str) -> bool:
    """The definition spelled as a regular expression over whole segments."""
    seg = r"[a-z0-9_-]+"
    regex = r"\.".join(rf"{seg}(?:\.{seg})*" if part == "*" else re.escape(part) for part in pattern.split("."))
    return re.fullmatch(regex, permission) is not None


def test_pattern_matcher_agrees_with_a_regex_on_every_small_case() -> None:
    alphabet = ("a", "b", "*")
    permissions = [".".join(p) for n in range(1, 5) for p in itertools.product("ab", repeat=n)]
    patterns = [".".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)]
    for pattern, permission in itertools.product(patterns, permissions):
        assert pattern_matches(pattern, permission) is _pattern_by_regex(pattern, permission), (pattern, permission)


@pytest.mark.parametrize(
    ("granted", "requested", "covers"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", True),
        ("a/b", "a/bc", False),  # segment boundary, not string prefix
        ("a/b", "a", False),
        ("a/b", "", False),
        ("", "", True),  # the tenant root covers everything
        ("", "emea/de/berlin", True),
        ("emea/de", "emea/de/berlin", True),
        ("emea/de", "emea/dex", False),
    ],
)
def test_scope_examples(granted: str, requested: str, covers: bool) -> None:
    assert scope_covers(granted, requested) is covers


def test_read_actions_are_the_last_segment() -> None:
    assert all(is_read_action(p) for p in ("invoice.read", "a.b.list", "doc.get", "read"))
    assert not any(is_read_action(p) for p in ("invoice.write", "read.invoice", "invoice.reader"))


def test_lifecycle_table_is_design_md() -> None:
    edges = {(source, verb, target) for verb, moves in LIFECYCLE.items() for source, target in moves.items()}
    S = Status
    assert edges == {
        (S.DRAFT, "Activate", S.ACTIVE),
        (S.ACTIVE, "Suspend", S.SUSPENDED),
        (S.SUSPENDED, "Resume", S.ACTIVE),
        (S.ACTIVE, "Archive", S.ARCHIVED),
        (S.SUSPENDED, "Archive", S.ARCHIVED),
        (S.ARCHIVED, "Restore", S.ACTIVE),
        (S.DRAFT, "Delete", S.DELETED),
        (S.ARCHIVED, "Delete", S.DELETED),
    }


T1, T2 = "7d3f6c1e-0b2a-4e9d-8c5f-a1b2c3d4e5f6", "e0c1a2b3-4d5e-4f60-9a7b-8c9d0e1f2a3b"


def _world() -> tuple[World, str, str]:
    world = World()
    world.upsert_plan("p", {"reports": Feature(False, ("report.*",))})
    for index, tenant_id in enumerate((T1, T2)):
        assert world.create_tenant(f"slug-{index}", "p", tenant_id).code == "OK"
        assert world.transition(tenant_id, "Activate", confirm=False).code == "OK"
    return world, T1, T2


def test_decision_order_and_tenant_isolation() -> None:
    world, t1, t2 = _world()
    world.create_role(t1, "editor", ("invoice.*",))
    world.create_role(t2, "editor", ("doc.*",))  # same name, other permissions
    for tenant_id in (t1, t2):
        world.add_member(tenant_id, "user/alice")
        world.assign_role(tenant_id, "user/alice", "editor", "emea")

    assert world.check(t1, "user/alice", "invoice.edit", "emea/de").reason == "ALLOWED"
    assert world.check(t2, "user/alice", "invoice.edit", "emea/de").reason == "NO_GRANT"
    assert world.check(t2, "user/alice", "doc.edit", "emea/de").grants == {("editor", "emea")}
    assert world.check(t1, "user/alice", "invoice.edit", "emeax").reason == "NO_GRANT"
    assert world.check(t1, "user/bob", "invoice.edit", "emea").reason == "NOT_A_MEMBER"
    assert world.check("nope", "user/alice", "invoice.edit", "emea").reason == "TENANT_NOT_FOUND"

    world.assign_role(t1, "user/alice", "owner", "")
    assert world.check(t1, "user/alice", "report.read", "").reason == "FEATURE_DISABLED"
    world.patch_flags(t1, {"reports": True}, [])
    assert world.check(t1, "user/alice", "report.read", "").reason == "ALLOWED"
    assert world.check(t2, "user/alice", "report.read", "").reason == "FEATURE_DISABLED"

    world.transition(t1, "Suspend", confirm=False)
    assert world.check(t1, "user/alice", "invoice.edit", "emea").reason == "TENANT_SUSPENDED"
    assert world.check(t1, "user/bob", "invoice.edit", "emea").reason == "TENANT_SUSPENDED"  # before membership
    assert world.check(t1, "user/alice", "invoice.list", "emea").reason == "ALLOWED"
    world.transition(t1, "Archive", confirm=False)
    assert world.check(t1, "user/alice", "invoice.list", "emea").reason == "TENANT_INACTIVE"


def test_admin_outcomes_and_revisions() -> None:
    world, t1, t2 = _world()
    revision = world.tenants[t1].revision
    assert world.add_member(t1, "user/alice").revision == revision + 1
    assert world.add_member(t1, "user/alice").code == "ALREADY_EXISTS"
    assert world.tenants[t1].revision == revision + 1  # a refusal writes nothing
    assert world.assign_role(t1, "user/bob", "owner", "").reason == "GATEHOUSE_NOT_A_MEMBER"
    assert world.assign_role(t1, "user/alice", "ghost", "").code == "NOT_FOUND"
    assert world.assign_role(t1, "user/alice", "owner", "").code == "OK"
    assert world.remove_member(t1, "user/alice").reason == "GATEHOUSE_LAST_OWNER"
    assert world.revoke_role(t1, "user/alice", "owner", "").reason == "GATEHOUSE_LAST_OWNER"
    assert world.update_role(t1, "viewer", ("*",)).reason == "GATEHOUSE_SYSTEM_ROLE"
    assert world.create_role(t1, "viewer", ()).code == "ALREADY_EXISTS"
    world.create_role(t1, "editor", ("doc.*",))
    world.assign_role(t1, "user/alice", "editor", "emea")
    assert world.delete_role(t1, "editor").reason == "GATEHOUSE_ROLE_IN_USE"
    assert world.transition(t1, "Restore", confirm=False).reason == "GATEHOUSE_ILLEGAL_TRANSITION"
    assert world.update_tenant_plan(t1, "p", expected_revision=1).code == "ABORTED"

    # A second owner frees the first; removing a member takes its grants with it.
    world.add_member(t1, "user/bob")
    world.assign_role(t1, "user/bob", "owner", "")
    assert world.remove_member(t1, "user/alice").code == "OK"
    world.add_member(t1, "user/alice")
    assert world.check(t1, "user/alice", "doc.edit", "emea").reason == "NO_GRANT"
    assert world.tenants[t2].members == set()  # nothing of this touched the other tenant

    world.transition(t2, "Archive", confirm=False)
    assert world.transition(t2, "Delete", confirm=False).reason == "GATEHOUSE_CONFIRMATION_REQUIRED"
    assert world.transition(t2, "Delete", confirm=True).code == "OK"
    assert world.add_member(t2, "user/alice").reason == "GATEHOUSE_TENANT_DELETED"
    assert world.upsert_plan("p", {}).facts == {"tenants_affected": 2}  # the deleted t2 too: one revision, one config


def test_moves_follow_the_issue_examples() -> None:
    world, t1, t2 = _world()
    world.create_role(t1, "editor", ("doc.*",))
    for subject in ("user/alice", "user/bob"):
        world.add_member(t1, subject)
    world.assign_role(t1, "user/alice", "editor", "org/eu/sales")
    world.assign_role(t1, "user/alice", "editor", "org/eu/sales/team1")
    world.assign_role(t1, "user/bob", "editor", "org/eu/salesforce")
    world.assign_role(t1, "user/bob", "editor", "org/emea/sales/team1")
    revision = world.tenants[t1].revision

    assert world.move_scope(t1, "org/eu", "org/eu/x", keep_existing=False).reason == "GATEHOUSE_MOVE_INTO_ITSELF"
    assert world.move_scope(t1, "", "org", keep_existing=False).reason == "GATEHOUSE_MOVE_INTO_ITSELF"
    assert world.move_scope(t1, "org/us", "org/emea", keep_existing=False).reason == "GATEHOUSE_NOTHING_TO_MOVE"
    assert world.move_scope(t1, "org/eu/..", "org", keep_existing=False).facts == {"fields": ("from_scope",)}
    assert world.tenants[t1].revision == revision
    done = world.move_scope(t1, "org/eu/sales", "org/emea/sales", keep_existing=False)
    assert (done.revision, done.facts) == (revision + 1, {"moved": 2, "merged": 0})
    assert world.check(t1, "user/alice", "doc.edit", "org/emea/sales/team1/x").grants == {
        ("editor", "org/emea/sales"), ("editor", "org/emea/sales/team1")
    }
    assert world.check(t1, "user/alice", "doc.edit", "org/eu/sales").reason == "NO_GRANT"
    assert ("user/bob", "editor", "org/eu/salesforce") in world.tenants[t1].assignments  # a sibling stays

    world.assign_role(t1, "user/bob", "editor", "org/eu/x/team1")
    world.assign_role(t1, "user/bob", "editor", "org/eu/x/team2")
    assert world.move_scope(t1, "org/eu/x", "org/emea/sales", keep_existing=False).reason == "GATEHOUSE_MOVE_CONFLICT"
    merged = world.move_scope(t1, "org/eu/x", "org/emea/sales", keep_existing=True)
    assert merged.facts == {"moved": 1, "merged": 1}
    assert world.move_scope(t1, "org/emea", "", keep_existing=False).facts == {"moved": 4, "merged": 0}
    assert {a for a in world.tenants[t1].assignments if a[0] == "user/bob"} == {
        ("user/bob", "editor", "org/eu/salesforce"), ("user/bob", "editor", "sales/team1"),
        ("user/bob", "editor", "sales/team2"),
    }
    assert world.tenants[t2].assignments == set()


def test_every_misspelling_is_the_same_uuid_and_refused() -> None:
    for tenant_id in (T1, str(uuid.uuid4()), "abcdef01-2345-4678-9abc-def012345678"):
        spellings = misspellings(tenant_id)
        assert len(spellings) >= 7, spellings
        for spelling in spellings.values():
            assert spelling != tenant_id and uuid.UUID(spelling) == uuid.UUID(tenant_id)
            assert not is_canonical_tenant_id(spelling)
        assert is_canonical_tenant_id(tenant_id)


def test_dot_segments_are_refused_and_the_vocabulary_is_not() -> None:
    assert all(not is_valid_scope(scope) for scope in DOT_SCOPES)
    assert all(is_valid_scope(scope) for scope in GRANT_SCOPES)
    assert is_valid_scope("a.b/..c/d.")  # dots inside a segment are fine


def test_malformed_admin_calls_change_nothing() -> None:
    world, t1, _ = _world()
    world.add_member(t1, "user/alice")
    revision = world.tenants[t1].revision
    upper = t1.upper()
    assert world.add_member(upper, "user/bob").facts == {"fields": ("tenant_id",)}
    assert world.get_tenant("{" + t1 + "}").code == "INVALID_ARGUMENT"
    refused = world.assign_role(upper, "user/alice", "admin", "emea/..")
    assert (refused.code, refused.facts) == ("INVALID_ARGUMENT", {"fields": ("scope", "tenant_id")})
    assert world.assign_role(t1, "user/alice", "admin", "./emea").facts == {"fields": ("scope",)}
    assert world.revoke_role(t1, "user/alice", "admin", "..").code == "INVALID_ARGUMENT"
    assert world.list_audit_events(t1.replace("-", "")).code == "INVALID_ARGUMENT"
    assert world.tenants[t1].revision == revision and world.tenants[t1].assignments == set()


def test_reads_refuse_step_one_before_min_revision_before_deciding() -> None:
    world, t1, t2 = _world()
    current = world.tenants[t1].revision
    ok = Check(t1, "user/alice", "invoice.read", "emea", current)
    assert isinstance(world.check_call(ok), Answer)
    future = Check(t1, "user/alice", "invoice.read", "emea", current + 1)
    refused = world.check_call(future)
    assert (refused.code, refused.reason) == ("FAILED_PRECONDITION", "GATEHOUSE_REVISION_NOT_REACHED")
    assert refused.facts == {"tenant_id": t1, "min_revision": str(current + 1), "current_revision": str(current)}
    unknown = world.check_call(Check(str(uuid.UUID(int=3)), "user/alice", "invoice.read", "", 1))
    assert unknown.facts["current_revision"] == "0"
    both = world.check_call(Check(t1.upper(), "user/alice", "invoice.read", "a/./b", current + 1))
    assert both.facts == {"fields": ("resource.scope", "tenant_id")}  # step 1 first

    # A batch: any bad field of any check fails it whole; then the first check not reached.
    fine = Check(t2, "user/bob", "doc.edit", "", 0)
    batch = world.batch_call([fine, future, Check(t2.upper(), "user/bob", "doc.edit", "..", 0)])
    assert batch.facts == {"fields": ("checks[2].resource.scope", "checks[2].tenant_id")}
    batch = world.batch_call([fine, ok, future, dataclasses.replace(future, tenant_id=t2)])
    assert batch.facts["check"] == "checks[2]" and batch.facts["tenant_id"] == t1
    assert [answer.reason for answer in world.batch_call([fine, ok])] == ["NOT_A_MEMBER", "NOT_A_MEMBER"]

    assert world.config_call(t1, current + 5).facts["current_revision"] == str(current)
    assert world.config_call(t1.upper(), 0).facts == {"fields": ("tenant_id",)}
    assert world.config_call(t1, current).revision == current


def test_a_moved_grant_keeps_its_condition_and_expiry() -> None:
    world, t1, _ = _world()
    world.create_role(t1, "editor", ("doc.*",))
    world.add_member(t1, "user/alice")
    world.assign_role(t1, "user/alice", "editor", "eu/sales", condition=OWNER_CONDITION)
    world.assign_role(t1, "user/alice", "viewer", "eu/sales", expires_at=100.0)
    assert world.move_scope(t1, "eu", "emea", keep_existing=False).facts == {"moved": 2, "merged": 0}
    assert world.check(t1, "user/alice", "doc.edit", "emea/sales").reason == "CONDITIONAL"
    assert world.check(t1, "user/alice", "doc.edit", "emea/sales", owner="alice").reason == "ALLOWED"
    world.now = 100.0
    assert world.check(t1, "user/alice", "doc.read", "emea/sales", owner="other").reason == "NO_GRANT"

    # A grant revoked and another moved onto its key: the newcomer carries only its own.
    world.add_member(t1, "user/bob")
    world.assign_role(t1, "user/bob", "editor", "x", condition=OWNER_CONDITION, expires_at=150.0)
    world.revoke_role(t1, "user/bob", "editor", "x")
    world.assign_role(t1, "user/bob", "editor", "y")
    world.move_scope(t1, "y", "x", keep_existing=False)
    world.now = 200.0
    assert world.check(t1, "user/bob", "doc.edit", "x").reason == "ALLOWED"


def test_an_expired_grant_grants_nothing_but_its_row_stays_until_swept() -> None:
    world, t1, t2 = _world()
    world.create_role(t1, "editor", ("doc.*",))
    for subject in ("user/alice", "user/bob"):
        world.add_member(t1, subject)
    world.now = 1000.0
    assert world.assign_role(t1, "user/alice", "editor", "", expires_at=1000.0).facts == {"fields": ("expires_at",)}
    assert world.assign_role("Nope", "user/alice", "editor", "..", expires_at=999.0).facts == {
        "fields": ("scope", "tenant_id")  # SERVER: these first, on their own
    }
    world.assign_role(t1, "user/alice", "editor", "emea", expires_at=1002.0)
    world.assign_role(t1, "user/alice", "owner", "", expires_at=1001.0)
    world.assign_role(t1, "user/bob", "owner", "")
    assert world.check(t1, "user/alice", "doc.edit", "emea/de").grants == {("editor", "emea"), ("owner", "")}
    # An expiring owner is not another owner, expired or not.
    assert world.revoke_role(t1, "user/bob", "owner", "").reason == "GATEHOUSE_LAST_OWNER"

    world.now = 1001.0  # at the instant itself it has expired
    assert world.check(t1, "user/alice", "doc.edit", "emea/de").grants == {("editor", "emea")}
    assert world.assign_role(t1, "user/alice", "editor", "emea").code == "ALREADY_EXISTS"  # still in force
    world.now = 1003.0
    assert world.check(t1, "user/alice", "doc.edit", "emea/de").reason == "NO_GRANT"
    assert world.list_assignments(t1, "user/alice").facts == {
        "assignments": [("user/alice", "editor", "emea"), ("user/alice", "owner", "")]
    }
    assert world.delete_role(t1, "editor").reason == "GATEHOUSE_ROLE_IN_USE"
    # Expired, not swept: granted anew (here for good, the expiry gone).
    revision = world.tenants[t1].revision
    assert world.assign_role(t1, "user/alice", "editor", "emea").revision == revision + 1
    assert world.check(t1, "user/alice", "doc.edit", "emea/de").reason == "ALLOWED"

    # The sweep: one revision per subject with expired rows, none in a deleted tenant,
    # no decision changed.
    world.add_member(t2, "user/carol")
    world.create_role(t2, "editor", ("doc.*",))
    world.assign_role(t2, "user/carol", "editor", "", expires_at=1004.0)
    world.transition(t2, "Archive", confirm=False)
    world.transition(t2, "Delete", confirm=True)
    world.assign_role(t1, "user/bob", "editor", "a", expires_at=1004.0)
    world.assign_role(t1, "user/bob", "editor", "b", expires_at=1004.5)
    world.now = 1005.0
    before = {s: world.check(t1, s, "doc.edit", "emea") for s in ("user/alice", "user/bob")}
    revisions = world.tenants[t1].revision, world.tenants[t2].revision
    assert world.sweep().facts == {"swept": 2}  # alice's owner, both of bob's
    assert (world.tenants[t1].revision, world.tenants[t2].revision) == (revisions[0] + 2, revisions[1])
    after = {s: world.check(t1, s, "doc.edit", "emea") for s in ("user/alice", "user/bob")}
    assert {s: (a.allowed, a.reason, a.grants) for s, a in after.items()} == {
        s: (a.allowed, a.reason, a.grants) for s, a in before.items()
    }
    assert world.list_assignments(t1, "user/bob").facts == {"assignments": [("user/bob", "owner", "")]}
    assert world.sweep().facts == {"swept": 0}
    assert world.expiries() == [1004.0]  # the deleted tenant's row: never swept


def test_replace_gives_a_held_grant_new_terms_never_the_last_lasting_owners() -> None:
    """AssignRole `on_existing` REPLACE (tests/server/test_admin_replace_grant.py): the held
    grant takes the request's terms in one revision; nothing held (or held expired) is a
    plain assign; the last lasting owner's root grant gets no condition and no expiry."""
    world, t1, _ = _world()
    world.create_role(t1, "editor", ("doc.*",))
    for subject in ("user/alice", "user/bob"):
        world.add_member(t1, subject)
    world.now = 1000.0
    world.assign_role(t1, "user/alice", "owner", "")
    world.assign_role(t1, "user/bob", "editor", "emea", condition=OWNER_CONDITION)
    tenant = world.tenants[t1]
    assert world.check(t1, "user/bob", "doc.edit", "emea").reason == "CONDITIONAL"
    # REFUSE (the default) while held: ALREADY_EXISTS, nothing written.
    revision = tenant.revision
    assert world.assign_role(t1, "user/bob", "editor", "emea").code == "ALREADY_EXISTS"
    assert tenant.revision == revision
    # REPLACE: no condition, an expiry; one revision; decided by the new terms.
    assert world.assign_role(t1, "user/bob", "editor", "emea", expires_at=1002.0, replace=True).revision == revision + 1
    assert world.check(t1, "user/bob", "doc.edit", "emea").reason == "ALLOWED"
    assert tenant.expires == {("user/bob", "editor", "emea"): 1002.0} and not tenant.conditional
    # REPLACE again without terms: for good.
    world.assign_role(t1, "user/bob", "editor", "emea", replace=True)
    assert tenant.expires == {}
    world.now = 1003.0
    assert world.check(t1, "user/bob", "doc.edit", "emea").reason == "ALLOWED"
    # Nothing held: a plain assign.
    assert world.assign_role(t1, "user/bob", "editor", "apac", replace=True).code == "OK"

    # The last lasting owner: no condition, no expiry; lasting terms are fine.
    revision = tenant.revision
    for terms in ({"condition": OWNER_CONDITION}, {"expires_at": 2000.0}):
        refused = world.assign_role(t1, "user/alice", "owner", "", replace=True, **terms)
        assert (refused.code, refused.reason) == ("FAILED_PRECONDITION", "GATEHOUSE_LAST_OWNER")
    assert world.assign_role(t1, "user/alice", "owner", "", replace=True).code == "OK"
    # With another lasting owner, it may.
    world.assign_role(t1, "user/bob", "owner", "")
    assert world.assign_role(t1, "user/alice", "owner", "", expires_at=2000.0, replace=True).code == "OK"
    # Now bob is the only lasting one; alice (expiring) is no "other owner".
    assert world.assign_role(t1, "user/bob", "owner", "", condition=OWNER_CONDITION, replace=True).reason == (
        "GATEHOUSE_LAST_OWNER"
    )
    # Alice's owner grant expired (not swept): a plain assign, whatever the terms.
    world.now = 2001.0
    assert world.assign_role(t1, "user/alice", "owner", "", expires_at=3000.0, replace=True).code == "OK"
    assert tenant.revision == revision + 4  # the four that were OK, one each
