"""Lookups in the engine with conditions and expiry (issue 18): every listed subject is
what `decide` answers it with the lookup's facts, and a kept listing is served only
while it still equals a listing decided afresh at that instant.

A hypothesis property builds random rosters (members with expiring and conditional
grants, an API key that expires) and asks one roster the same question at increasing
instants: each answer, kept or decided again, must equal `listed_subjects` at that
instant, which must equal `decide` member by member, and equal that listing decided a
few members at a time (`TenantRoster.deciding`, what LookupSubjects serves).

What a roster keeps is bounded by the subjects its listings name, not only their count,
and the listings name subjects by the roster's own (type, id) strings."""

from __future__ import annotations

import math

import pytest
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


# --- what a roster keeps -------------------------------------------------------------------


def everyone(count: int) -> TenantRoster:
    """A tenant of `count` members, each holding every permission at the root."""
    return roster(*(member(f"u{i:06d}", AssignmentRow("admin", "", ("*",))) for i in range(count)))


def test_kept_listings_are_bounded_by_the_subjects_they_name_not_only_their_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 64 listings of a 10,000-member tenant each naming every member held 640,000
    # entries (124 MB per roster, 8 rosters a process): the bound is on what they name.
    monkeypatch.setattr(TenantRoster, "MAX_LISTED", 400)
    big = everyone(100)
    for i in range(TenantRoster.MAX_LISTINGS):
        assert len(big.listing(f"doc.p{i}", "", 0.0).listed) == 100
        assert sum(len(kept.listed) for kept in big.listings.values()) <= 400
    assert len(big.listings) == 4
    assert ("doc.p63", "", "") in big.listings, "the newest listing (the one being paged) is kept"
    # Conditional entries count as much as allowed ones.
    conditional = roster(*(member(f"u{i:03d}", AssignmentRow("a", "", ("*",), condition=OWNER)) for i in range(300)))
    conditional.listing("doc.a", "", 0.0)
    conditional.listing("doc.b", "", 0.0)
    assert list(conditional.listings) == [("doc.b", "", "")]


def test_a_listing_larger_than_the_bound_is_still_kept_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TenantRoster, "MAX_LISTED", 40)
    huge = everyone(41)
    huge.listing("doc.a", "", 0.0)
    huge.listing("doc.b", "", 0.0)
    assert list(huge.listings) == [("doc.b", "", "")]


def test_listings_share_the_rosters_subject_strings() -> None:
    kept = roster(
        *(member(f"u{i}", AssignmentRow("admin", "", ("*",))) for i in range(5)),
        member("v0", AssignmentRow("a", "", ("*",), condition=OWNER)),
    )
    listing = kept.listing("doc.read", "", 0.0)
    assert [e.conditional for e in listing.listed] == [False] * 5 + [True]
    assert all(e.subject_type is k[0] and e.subject_id is k[1] for e, k in zip(listing.listed, kept.keys, strict=True))
    assert all(k is r for k, r in zip(listing.keys, kept.keys, strict=True))
    # Brought forward, the roster and its patched listings still share them.
    changed = compile_subject(member("u2", AssignmentRow("viewer", "", ("report.*",))))
    advanced = kept.advanced(8, {"user/u2": changed}, 1.0)
    patched = advanced.listings[("doc.read", "", "")]
    assert [e.subject_id for e in patched.listed] == ["u0", "u1", "u3", "u4", "v0"]
    held = {id(key) for key in advanced.keys}
    assert all(id(k) in held for k in patched.keys)
    assert all(e.subject_id is k[1] for e, k in zip(patched.listed, patched.keys, strict=True))


def test_a_listing_decided_a_chunk_at_a_time_is_the_one_decided_in_one_go() -> None:
    tenant = everyone(10)
    deciding = tenant.deciding("doc.read", "", 0.0)
    steps = [deciding.step(3) for _ in range(4)]
    assert steps[:3] == [None, None, None] and steps[3] is not None
    assert entries(steps[3]) == entries(listed_subjects(tenant.policy, tenant.members, "doc.read", "", 0.0))
    assert steps[3].keys == [("user", f"u{i:06d}") for i in range(10)]
    assert tenant.kept("doc.read", "", 0.0) is None  # deciding alone keeps nothing
    assert tenant.keep("doc.read", "", NO_FACTS, steps[3], 0.0) is tenant.kept("doc.read", "", 0.0) is steps[3]
    empty = roster().deciding("doc.read", "", 0.0).step(256)
    assert empty is not None and empty.listed == ()


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
    st.integers(min_value=1, max_value=4),
)
def test_every_listing_served_equals_decide_at_that_instant(
    drawn: list[tuple[str, list[AssignmentRow]]], key_expiry: float | None, permission: str, scope: str,
    lookup: LookupFacts, instants: list[float], chunk: int,
) -> None:
    snapshots = [member(name, *assignments) for name, assignments in drawn]
    snapshots.append(member("k1", AssignmentRow("a", "", ("*",)), key=KeyState(("doc.*",), expires_at=key_expiry),
                            kind="api_key"))
    tenant = roster(*snapshots)
    for now in sorted(instants):
        served = tenant.listing(permission, scope, now, lookup)
        assert entries(served) == entries(listed_subjects(tenant.policy, tenant.members, permission, scope, now, lookup))
        deciding = tenant.deciding(permission, scope, now, lookup)
        while (chunked := deciding.step(chunk)) is None:
            pass
        assert entries(chunked) == entries(served) and chunked.keys == served.keys
        expected = []
        for grants in tenant.members:
            question = lookup.of(grants.subject_key, scope)
            decision = decide(tenant.policy, grants, permission, scope, now=now, facts=lambda: question)
            if decision.allowed or decision.reason is Reason.CONDITIONAL:
                expected.append((grants.subject_key, decision.role, decision.scope, decision.missing))
        assert [(k, role, at, missing) for k, role, at, missing, _ in entries(served)] == expected
