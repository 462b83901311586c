"""Step 1 of every request: malformed input is INVALID_ARGUMENT naming the field.

Every helper either returns the value or raises InvalidArgument whose first violation
names the field exactly as the caller passed it; no input makes one raise anything else.
"""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse.engine.patterns import is_valid_id, is_valid_pattern, is_valid_permission, is_valid_scope
from gatehouse.engine.validate import (
    ID_RULE,
    NAME_RULE,
    PATTERN_RULE,
    PERMISSION_RULE,
    SCOPE_RULE,
    require_id,
    require_name,
    require_page_size,
    require_patterns,
    require_permission,
    require_revision,
    require_scope,
)
from gatehouse.errors import Code, InvalidArgument

PROPERTY = settings(max_examples=100, deadline=None)


def assert_rejects(call: Callable[[], object], field: str, description: str | None = None) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        call()
    error = raised.value
    assert error.code is Code.INVALID_ARGUMENT
    assert error.reason == "GATEHOUSE_INVALID_ARGUMENT"
    assert error.violations[0].field == field
    assert error.metadata["field"] == field
    assert field in error.message
    if description is not None:
        assert error.violations[0].description == description
    return error


# --- ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["alice", "a" * 128, "user:alice@example.com", "k-1.2_3"])
def test_require_id_returns_a_valid_id(value: str) -> None:
    assert require_id("subject.id", value) == value


def test_require_id_says_an_empty_id_is_required() -> None:
    assert_rejects(lambda: require_id("tenant_id", ""), "tenant_id", "is required")


@pytest.mark.parametrize("value", ["a" * 129, "x" * 10_240, "al ice", "alice\n", "zürich", "a\x00"], ids=repr)
def test_require_id_names_the_field(value: str) -> None:
    assert_rejects(lambda: require_id("checks[3].subject.id", value), "checks[3].subject.id", ID_RULE)


@PROPERTY
@given(value=st.text(max_size=140))
def test_require_id_accepts_exactly_the_valid_ids(value: str) -> None:
    if is_valid_id(value):
        assert require_id("resource.id", value) == value
    else:
        assert_rejects(lambda: require_id("resource.id", value), "resource.id")


# --- permissions and patterns --------------------------------------------------------


def test_require_permission() -> None:
    assert require_permission("permission", "invoice.read") == "invoice.read"
    assert_rejects(lambda: require_permission("permission", ""), "permission", "is required")
    assert_rejects(lambda: require_permission("permission", "invoice.*"), "permission", PERMISSION_RULE)
    assert_rejects(lambda: require_permission("permission", "Invoice.Read"), "permission", PERMISSION_RULE)
    assert_rejects(lambda: require_permission("permission", "invoice..read"), "permission", PERMISSION_RULE)


@PROPERTY
@given(value=st.text(alphabet="abz09_-.*A ", max_size=30))
def test_require_permission_accepts_exactly_the_valid_permissions(value: str) -> None:
    if is_valid_permission(value):
        assert require_permission("permission", value) == value
    else:
        assert_rejects(lambda: require_permission("permission", value), "permission")


def test_require_patterns_returns_a_tuple_from_any_iterable() -> None:
    assert require_patterns("role.permissions", iter(["invoice.*", "*.read", "*"])) == ("invoice.*", "*.read", "*")
    assert require_patterns("role.permissions", []) == ()


def test_require_patterns_names_the_bad_index() -> None:
    assert_rejects(
        lambda: require_patterns("role.permissions", ["invoice.*", "report.read", "invoice*"]),
        "role.permissions[2]",
        PATTERN_RULE,
    )
    assert_rejects(lambda: require_patterns("api_key.permissions", [""]), "api_key.permissions[0]")


def test_require_patterns_bounds_the_count() -> None:
    assert len(require_patterns("role.permissions", [f"p{i}.read" for i in range(256)])) == 256
    assert_rejects(lambda: require_patterns("role.permissions", ["a.read"] * 257), "role.permissions")


@PROPERTY
@given(values=st.lists(st.text(alphabet="ab.*", max_size=6), max_size=5))
def test_require_patterns_reports_the_first_bad_pattern(values: list[str]) -> None:
    bad = [index for index, value in enumerate(values) if not is_valid_pattern(value)]
    if not bad:
        assert require_patterns("role.permissions", values) == tuple(values)
    else:
        assert_rejects(lambda: require_patterns("role.permissions", values), f"role.permissions[{bad[0]}]")


# --- scopes --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "emea", "emea/de/berlin"])
def test_require_scope_accepts_root_and_paths(value: str) -> None:
    assert require_scope("resource.scope", value) == value


@pytest.mark.parametrize("value", ["a//b", "/a", "a/", "/", "a b", "emea/zürich"], ids=repr)
def test_require_scope_names_the_field(value: str) -> None:
    assert_rejects(lambda: require_scope("resource.scope", value), "resource.scope", SCOPE_RULE)


@PROPERTY
@given(value=st.text(alphabet="ab/:. é", max_size=12))
def test_require_scope_accepts_exactly_the_valid_scopes(value: str) -> None:
    if is_valid_scope(value):
        assert require_scope("assignment.scope", value) == value
    else:
        assert_rejects(lambda: require_scope("assignment.scope", value), "assignment.scope")


# --- names, revisions, page sizes ----------------------------------------------------


@pytest.mark.parametrize("value", ["Acme", "Zürich GmbH", "a" * 200, "株式会社"])
def test_require_name_accepts_printable_names(value: str) -> None:
    assert require_name("name", value) == value


def test_require_name_required_or_optional() -> None:
    assert_rejects(lambda: require_name("name", ""), "name", "is required")
    assert require_name("name", "", required=False) == ""


@pytest.mark.parametrize("value", ["a" * 201, "Acme\n", "Acme\x00", "\u200b", "tab\there"], ids=repr)
def test_require_name_rejects_long_or_unprintable_names(value: str) -> None:
    assert_rejects(lambda: require_name("tenant.name", value), "tenant.name", NAME_RULE)
    assert_rejects(lambda: require_name("tenant.name", value, required=False), "tenant.name", NAME_RULE)


def test_require_revision() -> None:
    assert require_revision("expected_revision", 0) == 0
    assert require_revision("expected_revision", 42) == 42
    assert_rejects(lambda: require_revision("expected_revision", -1), "expected_revision")


@pytest.mark.parametrize(("value", "expected"), [(0, 100), (1, 1), (100, 100), (1000, 1000), (5000, 1000)])
def test_require_page_size_defaults_and_caps(value: int, expected: int) -> None:
    assert require_page_size("page_size", value) == expected


def test_require_page_size_custom_bounds_and_negative() -> None:
    assert require_page_size("page_size", 0, default=20, maximum=50) == 20
    assert require_page_size("page_size", 70, default=20, maximum=50) == 50
    assert_rejects(lambda: require_page_size("page_size", -1), "page_size")


@PROPERTY
@given(value=st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_require_page_size_is_always_within_bounds_or_invalid(value: int) -> None:
    if value < 0:
        assert_rejects(lambda: require_page_size("page_size", value), "page_size")
    else:
        assert 1 <= require_page_size("page_size", value) <= 1000


def test_a_slug_is_never_shaped_like_a_tenant_id() -> None:
    """The CLI and apply name a tenant by slug or id: a slug that is another tenant's id
    would name two (found by the issue-17 break-it pass: `tenant create <acme's id>` worked)."""
    import uuid

    from gatehouse.engine.validate import require_slug

    assert require_slug("slug", "acme-eu") == "acme-eu"
    assert require_slug("slug", "0b7c9a4e3f6d4c1e9a2b5d8e7f6a1b2c") == "0b7c9a4e3f6d4c1e9a2b5d8e7f6a1b2c"  # no hyphens
    with pytest.raises(InvalidArgument) as refused:
        require_slug("slug", str(uuid.uuid4()))
    assert refused.value.violations[0].field == "slug" and "tenant id" in refused.value.violations[0].description
