"""Permission patterns, scope paths and the shapes of ids (DESIGN.md "Decision semantics").

The engine is checked against small reference implementations written here from the
design text (segment lists and recursion, no regular expressions), so a shared mistake
in the engine's fast paths cannot make both sides agree.
"""

from __future__ import annotations

import uuid

import functools
import itertools
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.patterns import (
    PermissionSet,
    is_valid_id,
    is_valid_pattern,
    is_valid_permission,
    is_valid_scope,
    is_valid_tenant_id,
    pattern_covers,
    pattern_matches,
    scope_covers,
)

PROPERTY = settings(max_examples=150, deadline=None)

ID_ALPHABET = string.ascii_letters + string.digits + "._:@-"
PERMISSION_ALPHABET = string.ascii_lowercase + string.digits + "_-"


# --- reference implementations -------------------------------------------------------


@functools.lru_cache(maxsize=None)
def reference_match(pattern: tuple[str, ...], permission: tuple[str, ...]) -> bool:
    """`*` is one or more whole segments; anything else must equal one segment."""
    if not pattern:
        return not permission
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        return any(reference_match(rest, permission[taken:]) for taken in range(1, len(permission) + 1))
    return bool(permission) and permission[0] == head and reference_match(rest, permission[1:])


def reference_covers(granted: str, requested: str) -> bool:
    """A grant's segments are a prefix of the resource's segments; "" is the root."""
    granted_segments = granted.split("/") if granted else []
    requested_segments = requested.split("/") if requested else []
    return requested_segments[: len(granted_segments)] == granted_segments


def reference_permission_valid(value: str) -> bool:
    return all(segment and set(segment) <= set(PERMISSION_ALPHABET) for segment in value.split("."))


# --- strategies ----------------------------------------------------------------------

# A few short segments that collide often, plus arbitrary valid ones.
permission_segments = st.sampled_from(["a", "b", "ab", "read", "invoice", "line", "x-1", "_", "0"])
permissions = st.lists(permission_segments, min_size=1, max_size=6).map(".".join)
pattern_parts = st.lists(st.one_of(permission_segments, st.just("*")), min_size=1, max_size=5)
patterns = pattern_parts.map(".".join)

scope_segments = st.sampled_from(["a", "b", "ab", "emea", "de", "berlin", "A-1", "x:y", "a.b", "@", "_", "9"])
scope_lists = st.lists(scope_segments, min_size=0, max_size=4)
scopes = scope_lists.map("/".join)


@st.composite
def pattern_matching(draw: st.DrawFn) -> tuple[str, str]:
    """A permission, and a pattern made from it by replacing runs of segments with `*`."""
    segments = draw(st.lists(permission_segments, min_size=1, max_size=7))
    parts: list[str] = []
    index = 0
    while index < len(segments):
        run = draw(st.integers(min_value=1, max_value=len(segments) - index))
        parts.extend(["*"] if draw(st.booleans()) else segments[index : index + run])
        index += run
    return ".".join(parts), ".".join(segments)


# --- permission patterns -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "permission", "expected"),
    [
        ("invoice.*", "invoice.read", True),
        ("invoice.*", "invoice.line.edit", True),
        ("invoice.*", "invoice", False),
        ("invoice.*", "invoicex.read", False),
        ("invoice.*", "x.invoice.read", False),
        ("invoice.read", "invoice.read", True),
        ("invoice.read", "invoice.reader", False),
        ("invoice.read", "invoice.read.all", False),
        ("*.read", "invoice.read", True),
        ("*.read", "invoice.line.read", True),
        ("*.read", "read", False),
        ("*.read", "invoice.readx", False),
        ("invoice.*.edit", "invoice.line.edit", True),
        ("invoice.*.edit", "invoice.line.item.edit", True),
        ("invoice.*.edit", "invoice.edit", False),
        ("invoice.*.edit", "invoice.line.editx", False),
        ("*.*", "a", False),
        ("*.*", "a.b", True),
        ("*.*", "a.b.c", True),
        ("a.*.b.*", "a.x.b.y", True),
        ("a.*.b.*", "a.b.b.b", True),
        ("a.*.b.*", "a.x.b", False),
        ("*", "invoice", True),
        ("*", "invoice.line.edit", True),
    ],
)
def test_pattern_examples(pattern: str, permission: str, expected: bool) -> None:
    assert is_valid_pattern(pattern) and is_valid_permission(permission)
    assert pattern_matches(pattern, permission) is expected
    assert PermissionSet([pattern]).matches(permission) is expected
    assert reference_match(tuple(pattern.split(".")), tuple(permission.split("."))) is expected


@PROPERTY
@given(permission=permissions)
def test_star_matches_every_permission(permission: str) -> None:
    assert pattern_matches("*", permission)
    assert PermissionSet(["*"]).matches(permission)
    assert PermissionSet(["nothing.else", "*"]).matches(permission)


@PROPERTY
@given(pattern=patterns, permission=permissions)
def test_pattern_matches_agrees_with_reference(pattern: str, permission: str) -> None:
    expected = reference_match(tuple(pattern.split(".")), tuple(permission.split(".")))
    assert pattern_matches(pattern, permission) is expected
    assert PermissionSet([pattern]).matches(permission) is expected


@PROPERTY
@given(case=pattern_matching())
def test_pattern_built_from_permission_matches_it(case: tuple[str, str]) -> None:
    pattern, permission = case
    assert is_valid_pattern(pattern)
    assert pattern_matches(pattern, permission)
    assert PermissionSet([pattern]).matches(permission)


@PROPERTY
@given(prefix=st.lists(permission_segments, min_size=1, max_size=3), permission=permissions)
def test_prefix_star_respects_segment_boundary(prefix: list[str], permission: str) -> None:
    """`p.*` matches exactly the permissions that start with the segments of p and go on."""
    pattern = ".".join(prefix) + ".*"
    segments = permission.split(".")
    expected = len(segments) > len(prefix) and segments[: len(prefix)] == prefix
    assert PermissionSet([pattern]).matches(permission) is expected
    assert pattern_matches(pattern, permission) is expected


@PROPERTY
@given(pattern_list=st.lists(patterns, max_size=6), permission=permissions)
def test_permission_set_agrees_with_its_patterns_and_reference(pattern_list: list[str], permission: str) -> None:
    compiled = PermissionSet(pattern_list)
    by_pattern = any(pattern_matches(pattern, permission) for pattern in pattern_list)
    by_reference = any(
        reference_match(tuple(pattern.split(".")), tuple(permission.split("."))) for pattern in pattern_list
    )
    assert compiled.matches(permission) is by_pattern is by_reference


@PROPERTY
@given(pattern_list=st.lists(patterns, max_size=6))
def test_permission_set_identity_ignores_order_and_duplicates(pattern_list: list[str]) -> None:
    compiled = PermissionSet(pattern_list)
    again = PermissionSet(list(reversed(pattern_list)) + pattern_list)
    assert compiled == again and hash(compiled) == hash(again)
    assert bool(compiled) is bool(pattern_list)


def test_every_small_pattern_against_every_small_permission() -> None:
    """Exhaustive over segments {a, b}: 120 patterns of up to 4 parts x 62 permissions."""
    all_patterns = [p for n in range(1, 5) for p in itertools.product(["a", "b", "*"], repeat=n)]
    all_permissions = [p for n in range(1, 6) for p in itertools.product(["a", "b"], repeat=n)]
    for pattern in all_patterns:
        compiled = PermissionSet([".".join(pattern)])
        for permission in all_permissions:
            expected = reference_match(pattern, permission)
            assert pattern_matches(".".join(pattern), ".".join(permission)) is expected, (pattern, permission)
            assert compiled.matches(".".join(permission)) is expected, (pattern, permission)


def test_empty_permission_set_matches_nothing() -> None:
    assert not PermissionSet([]).matches("invoice.read")


def test_many_stars_against_a_long_permission_stay_linear() -> None:
    # A regex translation backtracks through every split of the permission between the
    # stars (minutes at this size); a tenant admin controls role patterns, so this is a
    # denial-of-service on the shared sidecar. Finishing at all is the assertion.
    pattern = ".".join(["*"] * 10) + ".z"
    permission = ".".join(["a"] * 120)
    assert is_valid_pattern(pattern) and is_valid_permission(permission)
    assert not pattern_matches(pattern, permission)
    assert not PermissionSet([pattern]).matches(permission)
    assert PermissionSet([pattern]).matches(permission + ".z")


# --- scope paths ---------------------------------------------------------------------


@PROPERTY
@given(granted=scopes, below=scope_lists)
def test_scope_covers_itself_and_everything_below(granted: str, below: list[str]) -> None:
    requested = "/".join([granted, *below]) if granted else "/".join(below)
    assert is_valid_scope(requested)
    assert scope_covers(granted, requested)


@PROPERTY
@given(granted=st.lists(scope_segments, min_size=1, max_size=4).map("/".join), tail=scope_segments, more=scope_lists)
def test_scope_never_covers_a_sibling_sharing_a_prefix(granted: str, tail: str, more: list[str]) -> None:
    sibling = "/".join([granted + tail, *more])  # `a/b` vs `a/bc`, `a/bc/d`
    assert is_valid_scope(sibling)
    assert not scope_covers(granted, sibling)


@PROPERTY
@given(requested=scopes)
def test_root_covers_every_scope(requested: str) -> None:
    assert scope_covers("", requested)


@PROPERTY
@given(granted=st.lists(scope_segments, min_size=1, max_size=4).map("/".join))
def test_a_scope_never_covers_its_parents(granted: str) -> None:
    assert not scope_covers(granted, "")
    parent = granted.rsplit("/", 1)[0] if "/" in granted else ""
    assert not scope_covers(granted, parent)


@PROPERTY
@given(granted=scopes, requested=scopes)
def test_scope_covers_agrees_with_reference(granted: str, requested: str) -> None:
    assert scope_covers(granted, requested) is reference_covers(granted, requested)


@pytest.mark.parametrize(
    ("granted", "requested", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", True),
        ("a/b", "a/bc", False),
        ("a/b", "a/bc/d", False),
        ("a/b", "a", False),
        ("a/b", "", False),
        ("a/b", "b/a/b", False),
        ("emea/de", "emea/de/berlin", True),
        ("", "emea/de/berlin", True),
        ("", "", True),
    ],
)
def test_scope_examples(granted: str, requested: str, expected: bool) -> None:
    assert scope_covers(granted, requested) is expected


# --- validity ------------------------------------------------------------------------


@PROPERTY
@given(value=st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_ids_of_the_id_alphabet_are_valid(value: str) -> None:
    assert is_valid_id(value)


@PROPERTY
@given(
    before=st.text(alphabet=ID_ALPHABET, max_size=10),
    bad=st.characters(exclude_characters=ID_ALPHABET),
    after=st.text(alphabet=ID_ALPHABET, max_size=10),
)
def test_ids_with_any_other_character_are_invalid(before: str, bad: str, after: str) -> None:
    assert not is_valid_id(before + bad + after)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 129,
        "a" * 10_240,
        "alice\n",  # `$` alone would accept a trailing newline
        "\nalice",
        "al\x00ice",
        "al\tice",
        "\x7f",
        "al ice",
        "alice/bob",
        "zürich",
        "ａlice",  # fullwidth a
        "١٢٣",  # Arabic-Indic digits
        "ǅ",
        "😀",
    ],
    ids=repr,
)
def test_invalid_ids(value: str) -> None:
    assert not is_valid_id(value)


@pytest.mark.parametrize("value", ["a", "a" * 128, "user:alice@example.com", "k-1.2_3", "0"])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)


@PROPERTY
@given(value=st.text(alphabet=PERMISSION_ALPHABET + ".", max_size=40) | st.text(max_size=20))
def test_permission_validity_agrees_with_reference(value: str) -> None:
    assert is_valid_permission(value) is reference_permission_valid(value)


@pytest.mark.parametrize("value", ["invoice.read", "a", "invoice.line.edit", "a_b-c.0"])
def test_valid_permissions(value: str) -> None:
    assert is_valid_permission(value)


@pytest.mark.parametrize(
    "value",
    ["", ".", "invoice.", ".invoice", "invoice..read", "Invoice.read", "invoice.*", "*", "invoice read",
     "invoice/read", "invoice.read\n", "invoice.réad", "a" * 10_240],
    ids=repr,
)
def test_invalid_permissions(value: str) -> None:
    assert not is_valid_permission(value)


@PROPERTY
@given(parts=pattern_parts)
def test_generated_patterns_are_valid(parts: list[str]) -> None:
    assert is_valid_pattern(".".join(parts))


@pytest.mark.parametrize("value", ["*", "invoice.*", "*.read", "a.*.c", "*.*", "invoice.read"])
def test_valid_patterns(value: str) -> None:
    assert is_valid_pattern(value)


@pytest.mark.parametrize(
    "value",
    ["", ".", "**", "invoice*", "inv*.read", "invoice.**", "invoice..*", "*.", ".*", "Invoice.*", "invoice.*\n"],
    ids=repr,
)
def test_invalid_patterns(value: str) -> None:
    assert not is_valid_pattern(value)


@pytest.mark.parametrize("value", ["", "a", "a/b", "emea/de/berlin", "x:y/a.b/c@d", "/".join(["s"] * 50)])
def test_valid_scopes(value: str) -> None:
    assert is_valid_scope(value)


@pytest.mark.parametrize(
    "value",
    ["a//b", "/a", "a/", "/", "//", "a b", "a/b\n", "a/\x00", "emea/zürich", "a" * 129, "a/" + "b" * 129,
     "/".join(["seg"] * 300)],
    ids=repr,
)
def test_invalid_scopes(value: str) -> None:
    assert not is_valid_scope(value)


@PROPERTY
@given(segments=st.lists(scope_segments, min_size=1, max_size=4), position=st.integers(min_value=0, max_value=4))
def test_scope_with_an_empty_segment_is_invalid(segments: list[str], position: int) -> None:
    segments.insert(min(position, len(segments)), "")
    assert not is_valid_scope("/".join(segments))


# --- pattern coverage (the escalation guard) ---------------------------------------------

# Brute force over every permission of up to 6 segments drawn from the patterns' own
# segments plus one they never name: a counterexample to coverage, if any, is that short.
_COVER_SEGMENTS = ["x", "y"]
_cover_patterns = st.lists(st.sampled_from([*_COVER_SEGMENTS, "*"]), min_size=1, max_size=4).map(".".join)


def _permissions_upto(length: int) -> list[str]:
    alphabet = [*_COVER_SEGMENTS, "fresh"]
    out: list[str] = []
    layer = [[s] for s in alphabet]
    for _ in range(length):
        out += [".".join(p) for p in layer]
        layer = [p + [s] for p in layer for s in alphabet]
    return out


_ALL_SHORT = _permissions_upto(6)


@given(_cover_patterns, _cover_patterns)
@settings(max_examples=400, deadline=None)
def test_pattern_covers_agrees_with_brute_force(wider: str, narrower: str) -> None:
    brute = all(pattern_matches(wider, p) for p in _ALL_SHORT if pattern_matches(narrower, p))
    assert pattern_covers(wider, narrower) == brute


@pytest.mark.parametrize(
    ("wider", "narrower", "covers"),
    [
        ("*", "invoice.read", True),
        ("*", "*", True),
        ("invoice.*", "invoice.line.*", True),
        ("invoice.*", "*", False),
        ("*.read", "invoice.read", True),
        ("*.read", "invoice.*", False),
        ("*.*", "*", False),  # `*` may be a single segment
        ("*", "*.*", True),
        ("invoice.read", "invoice.*", False),
        ("invoice.read", "invoice.read", True),
    ],
)
def test_pattern_covers_examples(wider: str, narrower: str, covers: bool) -> None:
    assert pattern_covers(wider, narrower) is covers


# --- dot segments (issue 11): `.` and `..` are no scope segment ----------------------------


@PROPERTY
@given(before=scope_lists, dots=st.sampled_from([".", ".."]), after=scope_lists)
def test_a_scope_with_a_dot_segment_is_invalid(before: list[str], dots: str, after: list[str]) -> None:
    """Wherever it stands: a caller resolving paths reads `a/b/../c` as `a/c`, while a
    text comparison would put it below `a/b`; one org unit must have one spelling."""
    assert not is_valid_scope("/".join([*before, dots, *after]))


@pytest.mark.parametrize("segment", ["...", ".a", "a.", "a..b", ".hidden", "v1.2"])
def test_dots_inside_a_segment_are_allowed(segment: str) -> None:
    assert is_valid_scope(segment) and is_valid_scope(f"emea/{segment}/x")


@PROPERTY
@given(st.uuids())
def test_a_tenant_id_has_exactly_one_valid_spelling(value: uuid.UUID) -> None:
    canonical = str(value)
    assert is_valid_tenant_id(canonical)
    digits = value.hex
    for other in (canonical.upper(), digits, "{" + canonical + "}", value.urn, digits.upper()):
        if other != canonical:
            assert not is_valid_tenant_id(other)
