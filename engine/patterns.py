"""Permission patterns and scope paths.

A permission is dot-separated segments of `[a-z0-9_-]+` (`invoice.line.edit`). In a
pattern, `*` stands for one or more whole segments: `invoice.*` matches `invoice.read`
and `invoice.line.edit` but not `invoice`; `*.read` matches every permission whose last
segment is `read`; `*` alone matches everything.

A scope is `/`-separated segments (`emea/de/berlin`); the empty scope is the tenant root.
Scope `a/b` covers `a/b` and everything below it (`a/b/c`), never a sibling that merely
shares a prefix (`a/bc`). A segment is never `.` or `..`: scopes are compared as text,
segment by segment, so `emea/de/../fr` would sit *below* `emea/de` here while a caller
that builds scopes from URL or file paths means `emea/fr` (RFC 3986 section 5.2.4 removes
dot segments). Refusing them leaves one spelling per org unit.

A tenant id is a uuid in the one spelling Postgres prints and the store returns
(`str(uuid.UUID(...))`: 8-4-4-4-12 lowercase hex digits). Postgres would accept the same
uuid upper-case, without hyphens, in braces or as `urn:uuid:`; each of those would be a
second cache key for one tenant, which tenant events (naming the canonical form) never
evict, so they are refused instead of canonicalised.
"""

from __future__ import annotations

import re
from typing import Iterable

SEGMENT = r"[a-z0-9_-]+"
PERMISSION_RE = re.compile(rf"^{SEGMENT}(?:\.{SEGMENT})*$")
PATTERN_RE = re.compile(rf"^(?:{SEGMENT}|\*)(?:\.(?:{SEGMENT}|\*))*$")
# A scope segment: an id that is not `.` or `..` (dot segments, see above).
SCOPE_SEGMENT_RE = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._:@-]{1,128}$")
ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
TENANT_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_PERMISSION_LEN = 256
MAX_SCOPE_LEN = 1024


def is_valid_id(value: str) -> bool:
    """Ids are 1–128 chars of `[A-Za-z0-9._:@-]`."""
    return ID_RE.fullmatch(value) is not None


def is_valid_tenant_id(value: str) -> bool:
    """A uuid in canonical form: 36 characters, lowercase hex, hyphens at 8-4-4-4-12."""
    return TENANT_ID_RE.fullmatch(value) is not None


def is_valid_permission(value: str) -> bool:
    return len(value) <= MAX_PERMISSION_LEN and PERMISSION_RE.fullmatch(value) is not None


def is_valid_pattern(value: str) -> bool:
    return len(value) <= MAX_PERMISSION_LEN and PATTERN_RE.fullmatch(value) is not None


def is_valid_scope(value: str) -> bool:
    """Empty (tenant root) or segments separated by single `/`, no leading or trailing `/`,
    none of them `.` or `..`."""
    if value == "":
        return True
    if len(value) > MAX_SCOPE_LEN:
        return False
    return all(SCOPE_SEGMENT_RE.fullmatch(segment) for segment in value.split("/"))


def scope_covers(granted: str, requested: str) -> bool:
    """True when a grant at `granted` applies to a resource at `requested`."""
    if granted == "":
        return True
    if requested == granted:
        return True
    return requested.startswith(granted) and requested[len(granted)] == "/"


def _segments_match(pattern: tuple[str, ...], permission: list[str]) -> bool:
    """Glob over whole segments, `*` standing for one or more of them.

    Not a regular expression: `*.*.*.*.*.*.x` compiled to one backtracks through every
    way of splitting a long permission between the stars (seconds at six stars, and
    role and API-key patterns come from tenant admins). The greedy glob below only ever
    re-tries the most recent `*`, so it is O(len(pattern) * len(permission)) at worst.
    """
    i = j = 0
    star = -1  # index in `pattern` of the most recent `*`
    resume = 0  # where that `*`'s match ends; moved right when a later segment fails
    while j < len(permission):
        if i < len(pattern) and pattern[i] == "*":
            star, i, j = i, i + 1, j + 1  # a `*` takes at least one segment
            resume = j
        elif i < len(pattern) and pattern[i] == permission[j]:
            i, j = i + 1, j + 1
        elif star >= 0:
            resume += 1  # let the last `*` take one more segment and try again
            i, j = star + 1, resume
        else:
            return False
    return i == len(pattern)


class PermissionSet:
    """A compiled set of permission patterns: a hit is a set lookup or a short prefix scan.

    Patterns that are exact names go to a frozenset; `prefix.*` becomes a `startswith`,
    `*.suffix` an `endswith` (the viewer role's `*.read`); only patterns with a `*`
    elsewhere fall back to the segment glob.
    """

    __slots__ = ("patterns", "_all", "_exact", "_prefixes", "_suffixes", "_globs")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(sorted(set(patterns)))
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        globs: list[tuple[str, ...]] = []
        match_all = False
        for pattern in self.patterns:
            if pattern == "*":
                match_all = True
            elif "*" not in pattern:
                exact.add(pattern)
            elif pattern.endswith(".*") and "*" not in pattern[:-2]:
                prefixes.append(pattern[:-1])  # keep the dot: a segment boundary
            elif pattern.startswith("*.") and "*" not in pattern[2:]:
                suffixes.append(pattern[1:])  # ".read": at least one segment before it
            else:
                globs.append(tuple(pattern.split(".")))
        self._all = match_all
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)
        self._globs = tuple(globs)

    def matches(self, permission: str) -> bool:
        if self._all or permission in self._exact:
            return True
        for prefix in self._prefixes:
            if permission.startswith(prefix):
                return True
        for suffix in self._suffixes:
            if permission.endswith(suffix):
                return True
        if self._globs:
            segments = permission.split(".")
            for glob in self._globs:
                if _segments_match(glob, segments):
                    return True
        return False

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PermissionSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"PermissionSet({list(self.patterns)!r})"


def pattern_matches(pattern: str, permission: str) -> bool:
    """One pattern against one valid permission (the compiled set must agree with it)."""
    return _segments_match(tuple(pattern.split(".")), permission.split("."))


def pattern_covers(wider: str, narrower: str) -> bool:
    """True when every permission `narrower` matches, `wider` matches too.

    The escalation guard's question: may a caller holding `wider` hand out `narrower`?
    A literal segment of `narrower` may be matched by a literal or a `*` of `wider`; a
    `*` of `narrower` (any run of segments, including ones `wider` never names) only by a
    `*` of `wider`, and never split across two of them, since it may stand for a single
    segment. A dynamic programme over (i, j) = how much of each has been matched.
    """
    a, b = wider.split("."), narrower.split(".")
    # reach[i][j]: a[:i] can match exactly what b[:j] stands for.
    reach = [[False] * (len(b) + 1) for _ in range(len(a) + 1)]
    reach[0][0] = True
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == "*":
                # This `*` takes b[j-1] as its first token, or takes it in addition.
                reach[i][j] = reach[i - 1][j - 1] or reach[i][j - 1]
            elif b[j - 1] != "*":
                reach[i][j] = reach[i - 1][j - 1] and a[i - 1] == b[j - 1]
    return reach[len(a)][len(b)]
