"""Expiring grants in the engine (issue 18): a grant past its `expires_at` grants nothing,
compared with the `now` of each decision; an ALLOW is valid no longer than the grant that
gave it. A hypothesis property compares `decide` with a reference written from the text:
"allowed iff some unexpired grant covers the scope and matches the permission"."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.decision import SubjectGrants, compile_subject, decide, decided_until
from gatehouse.engine.model import AssignmentRow, KeyState, Reason, SubjectRef, SubjectSnapshot
from gatehouse.engine.patterns import pattern_matches, scope_covers
from tests.engine.test_decision import policy

ALICE = SubjectRef("user", "alice")


def subject(*rows: AssignmentRow, key: KeyState | None = None) -> SubjectGrants:
    return compile_subject(SubjectSnapshot("t1", ALICE, 7, True, rows, key))


def test_a_grant_allows_until_its_instant_and_not_from_it() -> None:
    grants = subject(AssignmentRow("editor", "eu", ("doc.*",), expires_at=100.0))
    before = decide(policy(), grants, "doc.edit", "eu/fr", now=99.999)
    assert (before.allowed, before.role, before.until) == (True, "editor", 100.0)
    assert decided_until(grants, 99.999, before) == 100.0
    for now in (100.0, 100.001, 1e12):
        after = decide(policy(), grants, "doc.edit", "eu/fr", now=now)
        assert (after.allowed, after.reason) == (False, Reason.NO_GRANT)
        assert decided_until(grants, now, after) == math.inf  # a denial stays one


def test_an_allow_lasts_as_long_as_its_own_grant_not_another() -> None:
    grants = subject(
        AssignmentRow("root", "", ("doc.read",), expires_at=50.0),
        AssignmentRow("eu", "eu", ("doc.read",), expires_at=None),
        AssignmentRow("other", "us", ("doc.read",), expires_at=10.0),
    )
    first = decide(policy(), grants, "doc.read", "eu", now=5.0)
    assert (first.role, decided_until(grants, 5.0, first)) == ("root", 50.0)
    later = decide(policy(), grants, "doc.read", "eu", now=50.0)
    assert (later.role, decided_until(grants, 50.0, later)) == ("eu", math.inf)


def test_a_key_expiring_first_bounds_the_allow() -> None:
    grants = subject(AssignmentRow("r", "", ("*",), expires_at=100.0), key=KeyState(("*",), expires_at=60.0))
    allow = decide(policy(), grants, "doc.read", "", now=1.0)
    assert decided_until(grants, 1.0, allow) == 60.0


def test_in_force_leaves_out_what_has_expired() -> None:
    grants = subject(AssignmentRow("a", "", ("*",), expires_at=10.0), AssignmentRow("b", "", ("*",)))
    assert [g.role for g in grants.in_force(9.0)] == ["a", "b"]
    assert [g.role for g in grants.in_force(10.0)] == ["b"]


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
    ),
    max_size=4,
    unique_by=lambda r: (r.role, r.scope),
)


@settings(max_examples=300, deadline=None)
@given(rows, st.sampled_from(PERMISSIONS), st.sampled_from(SCOPES), st.floats(min_value=0, max_value=20))
def test_decide_agrees_with_the_reference_and_until_is_exact(
    assignments: list[AssignmentRow], permission: str, scope: str, now: float
) -> None:
    grants = subject(*assignments)
    decision = decide(policy(), grants, permission, scope, now=now)
    expected = any(
        scope_covers(r.scope, scope)
        and any(pattern_matches(p, permission) for p in r.permissions)
        and (r.expires_at is None or now < r.expires_at)
        for r in assignments
    )
    assert decision.allowed == expected
    # Exact: the same answer at every instant before `until`, and (when finite) another at it.
    until = decided_until(grants, now, decision)
    for later in (now, (now + min(until, 21.0)) / 2, math.nextafter(min(until, 21.0), -math.inf)):
        if now <= later < until:
            assert decide(policy(), grants, permission, scope, now=later) == decision
    if until != math.inf:
        assert decide(policy(), grants, permission, scope, now=until) != decision
