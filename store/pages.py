"""List queries and page tokens: filters numbered as `$n`, pages of size + 1 rows, and
opaque tokens that must be exactly what a listing issued."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from gatehouse.errors import InvalidArgument
from gatehouse.store.api import Page

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


class Filters:
    """A WHERE clause assembled from optional filters, numbering its `$n` parameters.

    Built per call rather than one query with `($1 IS NULL OR ...)` so that each filter
    combination gets a plan that can use its index.
    """

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        """A placeholder bound to `value`."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: Any) -> None:
        """Add a condition; each `{}` in `template` becomes a placeholder for the next value."""
        self.clauses.append(template.format(*(self.param(value) for value in values)))

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def clamp_page_size(requested: int) -> int:
    return min(requested, MAX_PAGE_SIZE) if requested > 0 else DEFAULT_PAGE_SIZE


def page_of(
    rows: Sequence[asyncpg.Record],
    size: int,
    convert: Callable[[asyncpg.Record], T],
    *,
    key: Callable[[asyncpg.Record], list[Any]],
) -> Page[T]:
    """The first `size` rows as records; a token for the next page when there were more
    (the query asks for size + 1 rows to find out without a count)."""
    items = [convert(row) for row in rows[:size]]
    token = encode_token(key(rows[size - 1])) if len(rows) > size else ""
    return Page(items=items, next_page_token=token)


def encode_token(key: list[Any]) -> str:
    # Opaque to callers: the sort key of the last row returned, as base64url JSON.
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The sort key in `token` (None for the first page); InvalidArgument when it is not
    one this listing handed out."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
        key = None
    if not (
        isinstance(key, list)
        and len(key) == len(shape)
        and all(type(value) is expected and _storable(value) for value, expected in zip(key, shape, strict=True))
        # One spelling per token, like every identifier: base64 decoding ignores stray
        # characters and padding, and JSON spacing, so a token must be exactly what
        # `encode_token` makes of the key it holds.
        and encode_token(key) == token
    ):
        raise InvalidArgument("page_token", "is not a page token from this listing")
    return key


def _storable(value: Any) -> bool:
    """A sort-key value Postgres can compare with: a bigint, or text without NUL or lone
    surrogates. A token is opaque, but not trusted: one made by hand (`[10**30]`,
    `["\\ud800"]`) must not reach the database as a query argument it refuses."""
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True
