"""Step 1 of every request: reject malformed input with INVALID_ARGUMENT naming the field.

Pure functions over plain values, shared by every servicer so no validation is written
twice.
"""

from __future__ import annotations

from typing import Iterable

from gatehouse.engine.patterns import is_valid_id, is_valid_pattern, is_valid_permission, is_valid_scope
from gatehouse.errors import InvalidArgument

ID_RULE = "must be 1-128 characters of [A-Za-z0-9._:@-]"
PERMISSION_RULE = "must be dot-separated segments of [a-z0-9_-]+"
PATTERN_RULE = "must be dot-separated segments of [a-z0-9_-]+ or *"
SCOPE_RULE = "must be empty or /-separated segments of [A-Za-z0-9._:@-] (no empty segment, no leading or trailing /)"
NAME_RULE = "must be 1-200 printable characters"


def require_id(field: str, value: str) -> str:
    if not is_valid_id(value):
        raise InvalidArgument(field, ID_RULE if value else "is required")
    return value


KEY_ID_RULE = "must be the 16 hex digits of an API key id"


def require_key_id(field: str, value: str) -> str:
    if len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(field, KEY_ID_RULE if value else "is required")
    return value


def require_permission(field: str, value: str) -> str:
    if not is_valid_permission(value):
        raise InvalidArgument(field, PERMISSION_RULE if value else "is required")
    return value


def require_patterns(field: str, values: Iterable[str]) -> tuple[str, ...]:
    patterns = tuple(values)
    if len(patterns) > 256:
        raise InvalidArgument(field, "at most 256 patterns")
    for index, value in enumerate(patterns):
        if not is_valid_pattern(value):
            raise InvalidArgument(f"{field}[{index}]", PATTERN_RULE)
    return patterns


def require_scope(field: str, value: str) -> str:
    if not is_valid_scope(value):
        raise InvalidArgument(field, SCOPE_RULE)
    return value


def require_name(field: str, value: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if len(value) > 200 or not value.isprintable():
        raise InvalidArgument(field, NAME_RULE)
    return value


def require_revision(field: str, value: int) -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return value


def require_page_size(field: str, value: int, *, default: int = 100, maximum: int = 1000) -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return min(value or default, maximum)
