"""Lookups in the engine with conditions and expiry (issue 18): every listed subject is
what `decide` answers it with the lookup's facts, and a kept listing is served only
while it still equals a listing decided afresh at that instant.

A hypothesis property builds random rosters (members with expiring and conditional
grants, an API key that expires) and asks one roster the same question at increasing
instants: each answer, kept or decided again, must equal `listed_subjects` at that
instant, which must equal `decide` member by member."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.decision import compile_subject, decide
from gatehouse.engine.lookup import (
    NO_FACTS,
    Listing,
    LookupFacts,
    TenantRoster,
    compile_roster,
    covering_grants,
    listed_subjects,
)
from gatehouse.engine.model import AssignmentRow, KeyState, Reason, RosterSnapshot, SubjectRef, SubjectSnapshot
from tests.engine.test_decision import policy, tenant_snapshot

OWNER = "resource.attributes.owner == subject.id"
OFFICE = "context.ip.startsWith(\"10.\")"
TIMED = "request.time < timestamp(\"2100-01-01T00:00:00Z\")"


def member(name: str, *rows: AssignmentRow, key: KeyState | None = None, kind: str = "user") -> SubjectSnapshot:
    return SubjectSnapshot("t1", SubjectRef(kind, name), 7, True, rows, key)


def roster(*members: SubjectSnapshot) -> TenantRoster:
    return compile_roster(RosterSnapshot(tenant_snapshot(), tuple(sorted(members, key=lambda m: m.subject.key))))


def entries(listing: Listing) -> list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]]:
    return [(f"{e.subject_type}/{e.subject_id}", e.role, e.scope, e.missing, e.conditions) for e in listing.listed]


def test_a_conditional_subject_is_listed_as_such_and_allowed_with_the_attribute() -> None:
    tenant = roster(
        member("al", AssignmentRow("editor", "eu", ("doc.*",), condition=OWNER)),
        member("bo", AssignmentRow("editor", "", ("doc.*",))),
        member("cy", AssignmentRow("editor", "", ("doc.*",), condition=OFFICE),
               AssignmentRow("owner", "eu", ("doc.edit",), condition=OWNER)),
    )
    bare = tenant.listing("doc.edit", "eu/fr", 1.0)
    assert entries(bare) == [
        ("user/al", "", "", ("resource.attributes.owner",), (OWNER,)),
        ("user/bo", "editor", "", (), ()),
        ("user/cy", "", "", ("context.ip", "resource.attributes.owner"), (OFFICE, OWNER)),
    ]
    assert [e.conditional for e in bare.listed] == [True, False, True]
    owned = tenant.listing("doc.edit", "eu/fr", 1.0, LookupFacts({"owner": "al"}, {"ip": "10.1.2.3"}))
    assert entries(owned) == [
        ("user/al", "editor", "eu", (), ()), ("user/bo", "editor", "", (), ()), ("user/cy", "editor", "", (), ()),
    ]
    # Someone else's resource, outside the office: al and cy are denied, not conditional.
    other = tenant.listing("doc.edit", "eu/fr", 1.0, LookupFacts({"owner": "zed"}, {"ip": "192.168.0.1"}))
    assert entries(other) == [("user/bo", "editor", "", (), ())]
    # Outside the conditional grant's scope: al is not conditional there, just not allowed.
    assert [e.subject_id for e in tenant.listing("doc.edit", "us", 1.0).listed] == ["bo", "cy"]
    assert len(tenant.listings) == 4  # one per (permission, scope, facts)


def test_without_conditions_in_the_tenant_the_facts_share_one_listing() -> None:
    tenant = roster(member("al", AssignmentRow("editor", "", ("doc.*",))))
    first = tenant.listing("doc.edit", "", 1.0, LookupFacts({"owner": "x"}))
    assert tenant.listing("doc.edit", "", 1.0, NO_FACTS) is first and len(tenant.listings) == 1


def test_a_listing_is_kept_until_the_first_allowing_grant_expires_then_decided_again() -> None:
    tenant = roster(
        member("al", AssignmentRow("editor", "", ("doc.*",), expires_at=100.0)),
        member("bo", AssignmentRow("editor", "", ("doc.*",), expires_at=200.0), AssignmentRow("viewer", "", ("doc.*",))),
        member("cy", AssignmentRow("editor", "", ("doc.*",), expires_at=50.0, condition=OWNER)),
        member("dd", AssignmentRow("editor", "", ("report.*",), expires_at=10.0)),  # never allowed: does not bound
    )
    first = tenant.listing("doc.read", "", 1.0)
    assert first.valid_until == 50.0  # cy's conditional grant: CONDITIONAL until then
    assert entries(first)[2] == ("user/cy", "", "", ("resource.attributes.owner",), (OWNER,))
    assert tenant.listing("doc.read", "", 49.9) is first
    at_50 = tenant.listing("doc.read", "", 50.0)
    assert at_50 is not first and [e.subject_id for e in at_50.listed] == ["al", "bo"] and at_50.valid_until == 100.0
    at_100 = tenant.listing("doc.read", "", 100.0)
    assert [(e.subject_id, e.role) for e in at_100.listed] == [("bo", "editor")] and at_100.valid_until == 200.0
    at_200 = tenant.listing("doc.read", "", 200.0)
    assert [(e.subject_id, e.role) for e in at_200.listed] == [("bo", "viewer")] and at_200.valid_until == math.inf


def test_a_listing_that_read_the_time_is_not_kept() -> None:
    tenant = roster(member("al", AssignmentRow("editor", "", ("doc.*",), condition=TIMED)))
    listing = tenant.listing("doc.read", "", 1.0)
    assert [(e.subject_id, e.role) for e in listing.listed] == [("al", "editor")]
    assert listing.valid_until == 1.0 and not tenant.listings
    # Brought forward (a subject write), a kept listing that now reads the time is dropped.
    tenant = roster(member("al", AssignmentRow("editor", "", ("doc.*",))))
    tenant.listing("doc.read", "", 1.0)
    changed = compile_subject(member("bo", AssignmentRow("editor", "", ("doc.*",), condition=TIMED)))
    advanced = tenant.advanced(8, {"user/bo": changed}, 2.0)
    assert not advanced.listings and advanced.conditional


def test_covering_grants_leave_out_expired_ones_and_carry_conditions() -> None:
    grants = compile_subject(member(
        "al", AssignmentRow("a", "", ("*",), expires_at=10.0), AssignmentRow("b", "eu", ("*",), condition=OWNER),
    ))
    assert [(g.role, g.condition.source if g.condition else "") for g in covering_grants(grants, "eu", 9.0)] == [
        ("a", ""), ("b", OWNER),
    ]
    assert [g.role for g in covering_grants(grants, None, 10.0)] == ["b"]
    assert [g.role for g in covering_grants(grants, "us", 10.0)] == []


def test_a_conditional_answer_lasts_no_longer_than_its_grants() -> None:
    grants = compile_subject(member(
        "al", AssignmentRow("a", "", ("*",), expires_at=30.0, condition=OWNER),
        AssignmentRow("b", "", ("*",), expires_at=20.0, condition=OFFICE),
    ))
    first = decide(policy(), grants, "doc.read", "", now=1.0)
    assert (first.reason, first.missing, first.until) == (Reason.CONDITIONAL, ("context.ip", "resource.attributes.owner"), 20.0)
    second = decide(policy(), grants, "doc.read", "", now=20.0)
    assert (second.reason, second.missing, second.until) == (Reason.CONDITIONAL, ("resource.attributes.owner",), 30.0)
    third = decide(policy(), grants, "doc.read", "", now=30.0)
    assert (third.reason, third.until) == (Reason.NO_GRANT, math.inf)


# --- the property --------------------------------------------------------------------------

NAMES = ["al", "bo", "cy", "dd", "ee"]
SCOPES = ["", "eu", "eu/fr", "us"]
PERMISSIONS = ["doc.read", "doc.edit", "report.read"]
PATTERNS = ["*", "doc.*", "*.read", "doc.read"]
rows = st.lists(
    st.builds(
        AssignmentRow,
        role=st.sampled_from(["a", "b", "c"]),
        scope=st.sampled_from(SCOPES),
        permissions=st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2).map(tuple),
        expires_at=st.one_of(st.none(), st.floats(min_value=0, max_value=20)),
        condition=st.sampled_from(["", "", OWNER, OFFICE]),
    ),
    max_size=3,
    unique_by=lambda r: (r.role, r.scope),
)
members = st.lists(st.tuples(st.sampled_from(NAMES), rows), max_size=5, unique_by=lambda m: m[0])
facts = st.sampled_from([
    NO_FACTS, LookupFacts({"owner": "al"}), LookupFacts({"owner": "bo"}, {"ip": "10.0.0.1"}),
    LookupFacts(None, {"ip": "8.8.8.8"}), LookupFacts({"owner": "zz"}, {}),
])


@settings(max_examples=300, deadline=None)
@given(
    members, st.one_of(st.none(), st.floats(min_value=0, max_value=20)), st.sampled_from(PERMISSIONS),
    st.sampled_from(SCOPES), facts, st.lists(st.floats(min_value=0, max_value=21), min_size=1, max_size=6),
)
def test_every_listing_served_equals_decide_at_that_instant(
    drawn: list[tuple[str, list[AssignmentRow]]], key_expiry: float | None, permission: str, scope: str,
    lookup: LookupFacts, instants: list[float],
) -> None:
    snapshots = [member(name, *assignments) for name, assignments in drawn]
    snapshots.append(member("k1", AssignmentRow("a", "", ("*",)), key=KeyState(("doc.*",), expires_at=key_expiry),
                            kind="api_key"))
    tenant = roster(*snapshots)
    for now in sorted(instants):
        served = tenant.listing(permission, scope, now, lookup)
        assert entries(served) == entries(listed_subjects(tenant.policy, tenant.members, permission, scope, now, lookup))
        expected = []
        for grants in tenant.members:
            question = lookup.of(grants.subject_key, scope)
            decision = decide(tenant.policy, grants, permission, scope, now=now, facts=lambda: question)
            if decision.allowed or decision.reason is Reason.CONDITIONAL:
                expected.append((grants.subject_key, decision.role, decision.scope, decision.missing))
        assert [(k, role, at, missing) for k, role, at, missing, _ in entries(served)] == expected
