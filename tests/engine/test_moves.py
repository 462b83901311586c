"""Where scopes go in a MoveScope (engine/moves.py): the table of the module docstring,
and the properties that make a moved subtree decide as it did (one-to-one, covering
kept both ways, nothing outside the source touched)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.moves import INTO_ITSELF, fits, moved_scope, require_move
from gatehouse.engine.patterns import is_valid_scope, scope_covers
from gatehouse.errors import MoveIntoItself

PROPERTY = settings(max_examples=300, deadline=None)

# Few segment names, so that prefixes, siblings sharing a prefix (`a` / `ab`) and
# repeated segments (`a/b/b`) come up often.
segment = st.sampled_from(["a", "b", "ab", "c"])
scope = st.lists(segment, max_size=4).map("/".join)
nonempty_scope = st.lists(segment, min_size=1, max_size=4).map("/".join)


@pytest.mark.parametrize(
    ("source", "target", "scope", "expected"),
    [
        ("org/eu/sales", "org/emea/sales", "org/eu/sales", "org/emea/sales"),
        ("org/eu/sales", "org/emea/sales", "org/eu/sales/team1", "org/emea/sales/team1"),
        ("org/eu/sales", "org/emea/sales", "org/eu/salesforce", None),
        ("org/eu/sales", "org/emea/sales", "org/eu", None),
        ("org/eu/sales", "org/emea/sales", "", None),
        ("org/eu/sales", "org/emea", "org/eu/sales/team1", "org/emea/team1"),
        ("org/eu/sales", "org/eu/vertrieb", "org/eu/sales/team1", "org/eu/vertrieb/team1"),
        ("org/eu/sales", "", "org/eu/sales/team1", "team1"),
        ("org/eu/sales", "", "org/eu/sales", ""),
        ("a/b", "a", "a/b/b/c", "a/b/c"),
    ],
)
def test_the_documented_examples(source: str, target: str, scope: str, expected: str | None) -> None:
    assert moved_scope(scope, source, target) == expected


@pytest.mark.parametrize(
    ("source", "target"),
    [("a", "a"), ("a", "a/b"), ("a/b", "a/b/c/d"), ("", ""), ("", "a"), ("", "a/b")],
)
def test_a_subtree_cannot_move_into_itself(source: str, target: str) -> None:
    with pytest.raises(MoveIntoItself) as raised:
        require_move(source, target)
    assert raised.value.violations[0].field == "to_scope"
    assert raised.value.violations[0].description == INTO_ITSELF
    assert raised.value.reason == "GATEHOUSE_MOVE_INTO_ITSELF"


@pytest.mark.parametrize(("source", "target"), [("a", ""), ("a/b", "a"), ("a", "ab"), ("ab", "a/c"), ("a/b", "c")])
def test_any_other_target_is_a_move(source: str, target: str) -> None:
    require_move(source, target)


@PROPERTY
@given(source=nonempty_scope, target=scope, scopes=st.lists(scope, max_size=8))
def test_a_move_is_one_to_one_keeps_covering_and_touches_nothing_outside(
    source: str, target: str, scopes: list[str]
) -> None:
    if scope_covers(source, target):
        return  # refused (the test above)
    moved = {s: moved_scope(s, source, target) for s in scopes}
    inside = {s: m for s, m in moved.items() if m is not None}
    assert set(inside) == {s for s in scopes if scope_covers(source, s)}
    assert len(set(inside.values())) == len(inside)
    for s, m in inside.items():
        assert is_valid_scope(m) and scope_covers(target, m)
        for t, n in inside.items():
            assert scope_covers(s, t) == scope_covers(m, n), (s, t, m, n)


def test_a_moved_scope_may_be_too_long() -> None:
    long_target = "/".join(["x" * 100] * 10)  # 1,009 characters
    moved = moved_scope("a/" + "y" * 20, "a", long_target)
    assert moved is not None and not fits(moved) and fits(long_target)
