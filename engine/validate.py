"""Step 1 of every request: reject malformed input with INVALID_ARGUMENT naming the field.

Pure functions over plain values, shared by every servicer so no validation is written
twice: a rule's message is the same in every method. Each `require_*(field, value)`
returns the value or raises `InvalidArgument` naming `field`; `Violations` runs several
of them and raises one error naming every bad field of a request (BadRequest lists each).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, TypeVar

from gatehouse.engine.conditions import ConditionError, check_condition
from gatehouse.engine.patterns import (
    is_valid_id,
    is_valid_pattern,
    is_valid_permission,
    is_valid_scope,
    is_valid_tenant_id,
)
from gatehouse.errors import FieldViolation, InvalidArgument

T = TypeVar("T")

REQUIRED = "is required"
ID_RULE = "must be 1-128 characters of [A-Za-z0-9._:@-]"
TENANT_ID_RULE = "must be a tenant id as the server returns it: a uuid of lowercase hex digits, hyphenated 8-4-4-4-12"
PERMISSION_RULE = "must be dot-separated segments of [a-z0-9_-]+"
PATTERN_RULE = "must be dot-separated segments of [a-z0-9_-]+ or *"
SCOPE_RULE = (
    "must be empty or /-separated segments of [A-Za-z0-9._:@-] "
    "(no empty, . or .. segment, no leading or trailing /)"
)
NAME_RULE = "must be 1-200 printable characters"
SLUG_RULE = "must match ^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
SLUG_IS_AN_ID = "must not be shaped like a tenant id (a uuid): tenants are named by slug or id"
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
NEGATIVE_RULE = "must not be negative"


class Violations:
    """Every bad field of one request, so the error names them all, not just the first.

        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        scope = v.check(require_scope, "scope", request.scope)
        v.raise_if_any()   # InvalidArgument with one field violation per bad field

    A failed check returns its input unchanged; nothing may use the values before
    `raise_if_any()`.
    """

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def check(self, rule: Callable[..., T], field: str, value: Any, /, **options: Any) -> T:
        try:
            return rule(field, value, **options)
        except InvalidArgument as error:
            self.found.extend(error.violations)
            return value  # type: ignore[no-any-return]  # stands in for T until raise_if_any() fails the call

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found[0].field, self.found[0].description, *self.found[1:])


def require_id(field: str, value: str) -> str:
    if not is_valid_id(value):
        raise InvalidArgument(field, ID_RULE if value else REQUIRED)
    return value


def optional_id(field: str, value: str) -> str:
    """An id that may be left empty ("" = not given)."""
    return require_id(field, value) if value else ""


def require_tenant_id(field: str, value: str) -> str:
    """A tenant id in its one spelling (see `gatehouse.engine.patterns`); any other
    spelling of a uuid, or anything that is no uuid, is refused rather than canonicalised."""
    if not is_valid_tenant_id(value):
        raise InvalidArgument(field, TENANT_ID_RULE if value else REQUIRED)
    return value


def optional_tenant_id(field: str, value: str) -> str:
    """A tenant id that may be left empty ("" = none: platform scope, or no filter)."""
    return require_tenant_id(field, value) if value else ""


KEY_ID_RULE = "must be the 16 hex digits of an API key id"


def require_key_id(field: str, value: str) -> str:
    if len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(field, KEY_ID_RULE if value else REQUIRED)
    return value


def require_permission(field: str, value: str) -> str:
    if not is_valid_permission(value):
        raise InvalidArgument(field, PERMISSION_RULE if value else REQUIRED)
    return value


def require_patterns(field: str, values: Iterable[str]) -> tuple[str, ...]:
    patterns = tuple(values)
    if len(patterns) > 256:
        raise InvalidArgument(field, "at most 256 patterns")
    for index, value in enumerate(patterns):
        if not is_valid_pattern(value):
            raise InvalidArgument(f"{field}[{index}]", PATTERN_RULE)
    return patterns


def require_slug(field: str, value: str) -> str:
    """A tenant slug: lowercase letters, digits and inner hyphens, 3-63 characters, and
    not a tenant id's shape (a slug that is another tenant's id would make "slug or id",
    as the CLI and apply take a tenant, name two tenants)."""
    if not SLUG_RE.fullmatch(value):
        raise InvalidArgument(field, SLUG_RULE if value else REQUIRED)
    if is_valid_tenant_id(value):
        raise InvalidArgument(field, SLUG_IS_AN_ID)
    return value


def require_scope(field: str, value: str) -> str:
    if not is_valid_scope(value):
        raise InvalidArgument(field, SCOPE_RULE)
    return value


def require_name(field: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, REQUIRED)
        return value
    if len(value) > 200 or not value.isprintable():
        raise InvalidArgument(field, NAME_RULE)
    return value


def require_condition(field: str, value: str) -> str:
    """A role assignment's condition: "" (none), or CEL that parses, type-checks against
    the condition variables and is a bool (`engine.conditions`). The message says where
    (line and column) and why."""
    if value:
        try:
            check_condition(value)
        except ConditionError as error:
            raise InvalidArgument(field, f"is not a usable condition: {error}") from None
    return value


def require_revision(field: str, value: int) -> int:
    if value < 0:
        raise InvalidArgument(field, NEGATIVE_RULE)
    return value


def require_page_size(field: str, value: int, *, default: int = 100, maximum: int = 1000) -> int:
    """`value` as a page size: 0 asks for `default`; above `maximum`, `maximum` (Google
    AIP-158: "coerce" down, since next_page_token says there is more). Negative:
    InvalidArgument."""
    if value < 0:
        raise InvalidArgument(field, NEGATIVE_RULE)
    return min(value or default, maximum)
