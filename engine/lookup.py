"""Lookups: the CheckAccess decision turned around, as pure functions over compiled entries.

    covering_grants(grants, scope)          "what does this subject hold here?"
    TenantRoster + allowed_subjects(...)    "who may do this here?"
    tenant_denial(policy, permission)       "does the tenant itself deny everyone?"

Nothing here decides on its own: every answer is `decide` (engine/decision.py) asked for
each candidate, so a lookup can never disagree with CheckAccess given the same entries.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field

from gatehouse.engine.decision import (
    Decision,
    Grant,
    SubjectGrants,
    TenantPolicy,
    compile_subject,
    compile_tenant,
    decide,
    decided_until,
)
from gatehouse.engine.model import RosterSnapshot
from gatehouse.engine.patterns import PermissionSet, scope_covers

# An active member holding every permission at the tenant root: what it is denied, the
# tenant (status, feature flags) denies to everyone.
_PROBE_GRANT = Grant(role="", scope="", permissions=PermissionSet(("*",)))


def covering_grants(subject: SubjectGrants, scope: str | None) -> tuple[Grant, ...]:
    """The subject's grants that apply at `scope` (their scope covers it), in the order
    `decide` tries them; all of them when `scope` is None."""
    if scope is None:
        return subject.grants
    return tuple(grant for grant in subject.grants if scope_covers(grant.scope, scope))


def tenant_denial(policy: TenantPolicy | None, permission: str) -> Decision | None:
    """The decision every subject gets when the tenant decides alone (unknown, inactive,
    suspended for a write, the permission's feature off), else None: then each subject's
    own grants decide."""
    if policy is None:
        return decide(None, None, permission, "")
    probe = SubjectGrants(policy.tenant_id, "", policy.revision, True, (_PROBE_GRANT,))
    decision = decide(policy, probe, permission, "")
    return None if decision.allowed else decision


@dataclass(frozen=True, slots=True)
class Allowed:
    """One subject `decide` allows, and the grant it names."""

    subject_type: str
    subject_id: str
    role: str
    scope: str


@dataclass(slots=True)
class Listing:
    """Every subject allowed one (permission, scope), in subject order, and until when
    (unix seconds) that stays the answer for the same roster (an API key's expiry).
    `keys`: the (type, id) of each, for finding where a page starts."""

    allowed: tuple[Allowed, ...]
    valid_until: float

    @property
    def keys(self) -> list[tuple[str, str]]:
        keys = self._keys
        if keys is None:
            keys = self._keys = [(a.subject_type, a.subject_id) for a in self.allowed]
        return keys

    _keys: list[tuple[str, str]] | None = None

    def patched(
        self, policy: TenantPolicy, changed: dict[str, SubjectGrants | None], permission: str, scope: str, now: float
    ) -> "Listing":
        """This listing with the subjects of `changed` decided again (None: gone)."""
        allowed = list(self.allowed)
        keys = list(self.keys)
        valid_until = self.valid_until
        for subject_key, grants in sorted(changed.items()):
            key = _split(subject_key)
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del allowed[at]
                del keys[at]
            if grants is None:
                continue
            decision = decide(policy, grants, permission, scope, now=now)
            valid_until = min(valid_until, decided_until(grants, now))
            if decision.allowed:
                allowed.insert(at, Allowed(key[0], key[1], decision.role, decision.scope))
                keys.insert(at, key)
        return Listing(tuple(allowed), valid_until, keys)


def _split(subject_key: str) -> tuple[str, str]:
    """"user/alice" -> ("user", "alice"): the order subjects are listed in."""
    kind, _, ident = subject_key.partition("/")
    return kind, ident


@dataclass(slots=True)
class TenantRoster:
    """A whole tenant compiled for deciding, read in one snapshot at `revision`: its
    policy and every member's grants (API keys of the tenant included), keyed and ordered
    by subject key. `listings` memoises `allowed_subjects` per (permission, scope), so a
    paged listing decides each member once, not once per page."""

    policy: TenantPolicy
    revision: int
    members: tuple[SubjectGrants, ...]
    listings: dict[tuple[str, str], Listing] = field(default_factory=dict)

    MAX_LISTINGS = 64  # (permission, scope) pairs remembered per roster

    def advanced(self, revision: int, changed: dict[str, SubjectGrants | None], now: float) -> "TenantRoster":
        """This roster at a later `revision`, when between the two only the subjects of
        `changed` changed (their grants read at `revision`; None or not a member: gone).
        The tenant's own data is the same (only subject-level changes in between), so the
        policy carries over; kept listings are patched for the changed subjects alone."""
        members = list(self.members)
        keys = [_split(member.subject_key) for member in members]
        for subject_key, grants in sorted(changed.items()):
            key = _split(subject_key)
            at = bisect.bisect_left(keys, key)
            present = at < len(keys) and keys[at] == key
            if grants is not None and grants.is_member:
                if present:
                    members[at] = grants
                else:
                    members.insert(at, grants)
                    keys.insert(at, key)
            elif present:
                del members[at]
                del keys[at]
        policy = dataclasses.replace(self.policy, revision=revision)
        roster = TenantRoster(policy, revision, tuple(members))
        for (permission, scope), listing in self.listings.items():
            if now < listing.valid_until:
                roster.listings[(permission, scope)] = listing.patched(policy, changed, permission, scope, now)
        return roster

    def listing(self, permission: str, scope: str, now: float) -> Listing:
        """`allowed_subjects`, remembered while it stays exactly valid."""
        key = (permission, scope)
        found = self.listings.get(key)
        if found is not None and now < found.valid_until:
            return found
        if len(self.listings) >= self.MAX_LISTINGS:
            self.listings.pop(next(iter(self.listings)))
        found = self.listings[key] = allowed_subjects(self.policy, self.members, permission, scope, now)
        return found


def compile_roster(snapshot: RosterSnapshot) -> TenantRoster:
    """The tenant and every member compiled as CheckAccess compiles them, each role's
    patterns compiled once for the whole tenant."""
    shared: dict[tuple[str, ...], PermissionSet] = {}
    return TenantRoster(
        policy=compile_tenant(snapshot.tenant),
        revision=snapshot.revision,
        members=tuple(compile_subject(member, shared) for member in snapshot.members),
    )


def allowed_subjects(
    policy: TenantPolicy, members: tuple[SubjectGrants, ...], permission: str, scope: str, now: float
) -> Listing:
    """Every member `decide` allows `permission` at `scope` at `now`, in the order given."""
    allowed = []
    valid_until = math.inf
    for member in members:
        decision = decide(policy, member, permission, scope, now=now)
        valid_until = min(valid_until, decided_until(member, now))
        if decision.allowed:
            kind, ident = _split(member.subject_key)
            allowed.append(Allowed(kind, ident, decision.role, decision.scope))
    return Listing(tuple(allowed), valid_until)
