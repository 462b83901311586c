"""The state `gatehouse apply` manages and `gatehouse export` writes: plain, immutable values.

One `State` holds plans (by name) and tenants (by slug); a tenant holds its custom roles
(by name) and its members (by subject, `type/id`), each with the role grants it holds: a
role at a scope, at most one per `(role, scope)` (its `key`, what identifies it), each
with its terms: a CEL condition ("" = none) and an expiry (None = for good). A field that is None is not managed: the file leaves it as it is live.
API keys are not part of it (a key's secret is shown once and never belongs in git; keys
and the roles they hold are managed with `gatehouse key`), nor are system roles (fixed).

`where` (file:line) names the place in the file a value came from, for errors; it takes
no part in equality.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from gatehouse.engine.model import TenantStatus

API_VERSION = "gatehouse/v1"


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    default_enabled: bool = False
    gates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """A plan as UpsertPlan writes it: features, quotas and rate limits by name."""

    name: str
    features: Mapping[str, FeatureSpec] = field(default_factory=dict)
    quotas: Mapping[str, int] = field(default_factory=dict)
    rate_limits: Mapping[str, int] = field(default_factory=dict)
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """A custom role of a tenant. `description` None: not managed."""

    name: str
    permissions: tuple[str, ...]
    description: str | None = None
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Grant:
    """A role held at a scope ("" = the tenant root), only where `condition` holds (CEL,
    as AssignRole takes it; "" = always) and until `expires_at` (an aware datetime in UTC
    to the microsecond, as the server keeps it; None = for good). A member holds at most
    one grant per `key`; a grant whose terms differ from the live one is a change of it."""

    role: str
    scope: str = ""
    condition: str = ""
    expires_at: datetime.datetime | None = None
    where: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the grant: (role, scope), as the server's (subject, role, scope)."""
        return (self.role, self.scope)

    @property
    def plain(self) -> bool:
        """No condition and no expiry."""
        return not self.condition and self.expires_at is None


def by_key(grants: Iterable[Grant]) -> dict[tuple[str, str], Grant]:
    """`grants` by their (role, scope), in that order."""
    return {grant.key: grant for grant in sorted(grants, key=lambda g: g.key)}


def sorted_grants(grants: Iterable[Grant]) -> list[Grant]:
    """`grants` in (role, scope) order."""
    return sorted(grants, key=lambda g: g.key)


def utc_instant(value: datetime.datetime) -> datetime.datetime:
    """An aware datetime in UTC, to the microsecond (the form `Grant.expires_at` holds)."""
    if value.tzinfo is None:
        raise ValueError("a time needs its zone")
    return value.astimezone(datetime.timezone.utc)


# RFC 3339 (section 5.6) date-time: the zone is required, as a time without one names no instant.
# An offset's hour is 00-23 and its minute 00-59 (RFC 3339 time-numoffset); Python reads
# `+00:60` as an hour, so the pattern refuses it. ASCII digits only.
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII
)
RFC3339_RULE = "must be an RFC 3339 time with its zone, e.g. 2027-01-31T18:00:00Z or 2027-01-31T19:00:00+01:00"


def parse_instant(text: str) -> datetime.datetime:
    """An RFC 3339 time with its zone (`2027-01-31T18:00:00Z`, `...+01:00`) as an aware
    datetime in UTC to the microsecond; ValueError (a message fit to show) otherwise.
    State files and the CLI's `--expires-at` read times through this one function."""
    found = RFC3339.fullmatch(text)
    if found is None:
        raise ValueError(RFC3339_RULE)
    fraction = found.group(7) or ""
    if fraction[6:].strip("0"):
        raise ValueError("to the microsecond at most (the server keeps microseconds)")
    zone = found.group(8)
    iso = "{}-{}-{}T{}:{}:{}".format(*found.groups()[:6]) + (f".{fraction[:6].ljust(6, '0')}" if fraction else "")
    try:
        return utc_instant(datetime.datetime.fromisoformat(iso + ("+00:00" if zone in ("Z", "z") else zone)))
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a valid time ({RFC3339_RULE})") from None


def rfc3339(value: datetime.datetime) -> str:
    """How files and plans write an instant: `2027-01-31T12:00:00Z` (UTC; `.ffffff` only
    when it has microseconds)."""
    return utc_instant(value).replace(tzinfo=None).isoformat() + "Z"


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """A member (its key `type/id`, see `subject_text` for how it is written) and the role
    grants it holds (at most one per `Grant.key`)."""

    subject: str
    grants: frozenset[Grant] = frozenset()
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A tenant. `id` None: found by slug. Any other field None: not managed (`roles: []`
    in the file manages them as none, which `--prune` acts on; no `roles:` leaves them be)."""

    slug: str
    name: str | None = None
    id: str | None = None
    plan: str | None = None
    region: str | None = None
    status: TenantStatus | None = None
    settings: Mapping[str, Any] | None = None
    flag_overrides: Mapping[str, bool] | None = None
    quota_overrides: Mapping[str, int] | None = None
    roles: Mapping[str, RoleSpec] | None = None
    members: Mapping[str, MemberSpec] | None = None
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class State:
    plans: Mapping[str, PlanSpec] = field(default_factory=dict)
    tenants: Mapping[str, TenantSpec] = field(default_factory=dict)


def subject_key(type_: str, id_: str) -> str:
    """The one spelling of a subject in the state: `type/id` (ids hold no `/`)."""
    return f"{type_}/{id_}"


def subject_text(key: str) -> str:
    """How the file and the CLI spell a subject: `user:alice` (as `gatehouse member add`
    takes it), or `type/id` when the type itself holds a `:`."""
    type_, id_ = split_subject(key)
    return f"{type_}/{id_}" if ":" in type_ else f"{type_}:{id_}"


def split_subject(key: str) -> tuple[str, str]:
    """(type, id) of `type/id`."""
    type_, _, id_ = key.partition("/")
    return type_, id_
