"""Lookups: the CheckAccess decision turned around, as pure functions over compiled entries.

    covering_grants(grants, scope, now)     "what does this subject hold here?"
    TenantRoster + listed_subjects(...)     "who may do this here?" (in one go, or a chunk
                                            of members at a time: TenantRoster.deciding)
    tenant_denial(policy, permission)       "does the tenant itself deny everyone?"

Nothing here decides on its own: every answer is `decide` (engine/decision.py) asked for
each candidate, so a lookup can never disagree with CheckAccess given the same entries.

Conditions: "who may do this here?" is asked with one set of resource attributes and
context for every candidate (`LookupFacts`); each candidate is decided as CheckAccess
decides that subject with those facts. A candidate CheckAccess would answer CONDITIONAL
(only conditional grants could allow it, and they need attributes not given) is listed
as such, with the names missing and the conditions pending, never as allowed.

Expiry: a listing is kept no longer than every answer in it stays CheckAccess's answer
(`decided_until` of each candidate: the allowing grant's expiry, the expiry of the
grants that made an answer CONDITIONAL, an API key's expiry), and not at all when a
condition read `request.time`. An expired grant stops counting at that instant, with
no event.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from gatehouse.engine.conditions import ConditionInput, Missing
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
from gatehouse.engine.model import Reason, RosterSnapshot
from gatehouse.engine.patterns import PermissionSet, scope_covers

# An active member holding every permission at the tenant root: what it is denied, the
# tenant (status, feature flags) denies to everyone.
_PROBE_GRANT = Grant(role="", scope="", permissions=PermissionSet(("*",)))


def covering_grants(subject: SubjectGrants, scope: str | None, now: float) -> tuple[Grant, ...]:
    """The subject's grants that apply at `scope` (their scope covers it) and have not
    expired at `now` (unix seconds), in the order `decide` tries them; every unexpired
    one when `scope` is None. Conditional grants are included (with their condition)."""
    return tuple(
        grant for grant in subject.grants if grant.unexpired(now) and (scope is None or scope_covers(grant.scope, scope))
    )


def pending_conditions(
    subject: SubjectGrants, permission: str, scope: str, now: float, request: ConditionInput
) -> tuple[str, ...]:
    """The sources of the conditions that leave `subject` CONDITIONAL for `permission` at
    `scope`: the unexpired grants `decide` would try whose condition, for `request`, needs
    attributes it lacks. In the order `decide` tries them, each source once."""
    found: list[str] = []
    for grant in subject.grants:
        condition = grant.condition
        if (
            condition is not None
            and condition.source not in found
            and grant.unexpired(now)
            and scope_covers(grant.scope, scope)
            and grant.permissions.matches(permission)
            and isinstance(condition.evaluate(request, now), Missing)
        ):
            found.append(condition.source)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class LookupFacts:
    """What a lookup says of the resource and context, the same for every candidate
    (JSON-like maps; None: not given). `key` tells two sets of facts apart, for keeping
    listings and for page tokens."""

    resource_attributes: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        if self.resource_attributes is None and self.context is None:
            return ""
        text = json.dumps([self.resource_attributes, self.context], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def of(self, subject_key: str, scope: str) -> ConditionInput:
        """What a condition reads when CheckAccess asks for this subject at `scope` with
        these facts (no subject attributes, no resource type or id)."""
        subject_type, subject_id = _split(subject_key)
        return ConditionInput(
            subject_type, subject_id, resource_scope=scope,
            resource_attributes=self.resource_attributes, context=self.context,
        )


NO_FACTS = LookupFacts()


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
class Listed:
    """One subject `decide` allows, and the grant it names; or, when `missing` is set, one
    it answers CONDITIONAL (not allowed), the attributes missing and the conditions
    pending (`pending_conditions`)."""

    subject_type: str
    subject_id: str
    role: str = ""
    scope: str = ""
    missing: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()

    @property
    def conditional(self) -> bool:
        return bool(self.missing)


def _listed(
    member: SubjectGrants, key: tuple[str, str], decision: Decision, permission: str, scope: str, now: float,
    facts: LookupFacts,
) -> Listed | None:
    """The entry `decision` makes of `member` (named by `key`'s strings, not copies), or
    None when it is neither allowed nor CONDITIONAL."""
    if decision.allowed:
        return Listed(key[0], key[1], decision.role, decision.scope)
    if decision.reason is Reason.CONDITIONAL:
        pending = pending_conditions(member, permission, scope, now, facts.of(member.subject_key, scope))
        return Listed(key[0], key[1], missing=decision.missing, conditions=pending)
    return None


def _decide(
    policy: TenantPolicy, member: SubjectGrants, permission: str, scope: str, now: float, facts: LookupFacts
) -> Decision:
    """CheckAccess's decision for `member` asked with `facts`."""
    return decide(policy, member, permission, scope, now=now, facts=lambda: facts.of(member.subject_key, scope))


@dataclass(slots=True)
class Listing:
    """Every subject allowed one (permission, scope) with `facts`, or CONDITIONAL there,
    in subject order, and until when (unix seconds) that stays the answer for the same
    roster (`decided_until` of every member: an allowing grant's expiry, a key's, ...).
    `keys`: the (type, id) of each, for finding where a page starts."""

    listed: tuple[Listed, ...]
    valid_until: float
    _keys: list[tuple[str, str]] | None = None
    facts: LookupFacts = NO_FACTS

    @property
    def keys(self) -> list[tuple[str, str]]:
        keys = self._keys
        if keys is None:
            keys = self._keys = [(a.subject_type, a.subject_id) for a in self.listed]
        return keys

    def patched(
        self, policy: TenantPolicy, changed: dict[str, SubjectGrants | None], permission: str, scope: str, now: float
    ) -> "Listing":
        """This listing with the subjects of `changed` decided again (None: gone)."""
        listed = list(self.listed)
        keys = list(self.keys)
        valid_until = self.valid_until
        for subject_key, grants in sorted(changed.items()):
            key = _split(subject_key)
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del listed[at]
                del keys[at]
            if grants is None:
                continue
            decision = _decide(policy, grants, permission, scope, now, self.facts)
            valid_until = min(valid_until, decided_until(grants, now, decision))
            entry = _listed(grants, key, decision, permission, scope, now, self.facts)
            if entry is not None:
                listed.insert(at, entry)
                keys.insert(at, key)
        return Listing(tuple(listed), valid_until, keys, self.facts)


def _split(subject_key: str) -> tuple[str, str]:
    """"user/alice" -> ("user", "alice"): the order subjects are listed in."""
    kind, _, ident = subject_key.partition("/")
    return kind, ident


@dataclass(slots=True)
class TenantRoster:
    """A whole tenant compiled for deciding, read in one snapshot at `revision`: its
    policy and every member's grants (API keys of the tenant included), keyed and ordered
    by subject key. `listings` memoises `listed_subjects` per (permission, scope, facts),
    so a paged listing decides each member once, not once per page. `conditional`: some
    member holds a conditional grant (else the facts cannot matter, and are not keyed).
    `keys`: each member's (type, id), which its listings share rather than each holding
    copies."""

    policy: TenantPolicy
    revision: int
    members: tuple[SubjectGrants, ...]
    listings: dict[tuple[str, str, str], Listing] = field(default_factory=dict)
    conditional: bool = False
    keys: tuple[tuple[str, str], ...] = ()

    MAX_LISTINGS = 64  # (permission, scope, facts) listings remembered per roster
    # Subjects named by the listings remembered per roster, all together (~80 bytes each):
    # 64 listings of a 10,000-member tenant naming everyone held 640,000 (124 MB a roster).
    MAX_LISTED = 100_000

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.members):
            self.keys = tuple(_split(member.subject_key) for member in self.members)

    def advanced(self, revision: int, changed: dict[str, SubjectGrants | None], now: float) -> "TenantRoster":
        """This roster at a later `revision`, when between the two only the subjects of
        `changed` changed (their grants read at `revision`; None or not a member: gone).
        The tenant's own data is the same (only subject-level changes in between), so the
        policy carries over; kept listings are patched for the changed subjects alone."""
        members = list(self.members)
        keys = list(self.keys)
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
        roster = TenantRoster(policy, revision, tuple(members), conditional=_has_conditions(members), keys=tuple(keys))
        for (permission, scope, facts_key), listing in self.listings.items():
            if now < listing.valid_until:
                patched = listing.patched(policy, changed, permission, scope, now)
                if now < patched.valid_until:
                    roster.listings[(permission, scope, facts_key)] = patched
        return roster

    def listing(self, permission: str, scope: str, now: float, facts: LookupFacts = NO_FACTS) -> Listing:
        """`listed_subjects`, remembered while it stays exactly valid: never past the
        earliest instant an answer in it changes by itself (a grant's or key's expiry),
        and not at all when a condition read `request.time`. All members decided in one
        go; `deciding` is the same a chunk of members at a time."""
        found = self.kept(permission, scope, now, facts)
        if found is None:
            found = self.deciding(permission, scope, now, facts).step(len(self.members))
            assert found is not None  # every member decided in that one step
            found = self.keep(permission, scope, facts, found, now)
        return found

    def kept(self, permission: str, scope: str, now: float, facts: LookupFacts = NO_FACTS) -> Listing | None:
        """The listing remembered for (permission, scope, facts), if still exactly valid
        at `now`; else None."""
        found = self.listings.get(self._key(permission, scope, facts))
        return found if found is not None and now < found.valid_until else None

    def deciding(self, permission: str, scope: str, now: float, facts: LookupFacts = NO_FACTS) -> "ListingInProgress":
        """`listed_subjects` of this roster at `now`, to be decided a chunk of members at
        a time (`ListingInProgress.step`), so a caller can let other work run in between."""
        return ListingInProgress(self, permission, scope, now, self._facts(facts))

    def keep(self, permission: str, scope: str, facts: LookupFacts, listing: Listing, now: float) -> Listing:
        """Remember `listing` (this roster's, decided for (permission, scope, facts) at
        `now`) while it stays exactly valid (not at all when it already is not, e.g. a
        condition read the time), forgetting the oldest first past MAX_LISTINGS listings
        or MAX_LISTED subjects named together; the one kept last always stays, so its next
        pages find it. Returns `listing`."""
        if not now < listing.valid_until:
            return listing
        key = self._key(permission, scope, facts)
        self.listings.pop(key, None)
        listed = sum(len(kept.listed) for kept in self.listings.values()) + len(listing.listed)
        while self.listings and (len(self.listings) >= self.MAX_LISTINGS or listed > self.MAX_LISTED):
            listed -= len(self.listings.pop(next(iter(self.listings))).listed)
        self.listings[key] = listing
        return listing

    def _facts(self, facts: LookupFacts) -> LookupFacts:
        # No condition anywhere: the facts cannot change an answer, so they are not keyed
        # (nor carried into patches, where a later condition would read them).
        return facts if self.conditional else NO_FACTS

    def _key(self, permission: str, scope: str, facts: LookupFacts) -> tuple[str, str, str]:
        return permission, scope, self._facts(facts).key


@dataclass(slots=True)
class ListingInProgress:
    """A roster's listing being decided a chunk of members at a time, all at `now` (pure:
    the caller chooses what runs between chunks)."""

    roster: TenantRoster
    permission: str
    scope: str
    now: float
    facts: LookupFacts
    done: int = 0
    parts: list[Listing] = field(default_factory=list)

    def step(self, members: int) -> Listing | None:
        """Decide the next `members` members (at least one); the whole listing once every
        member is decided (the members' order kept), else None."""
        roster = self.roster
        end = self.done + max(1, members)
        self.parts.append(listed_subjects(
            roster.policy, roster.members[self.done:end], self.permission, self.scope, self.now, self.facts,
            roster.keys[self.done:end],
        ))
        self.done = end
        if end < len(roster.members):
            return None
        parts = self.parts
        listed = tuple(entry for part in parts for entry in part.listed)
        keys = [key for part in parts for key in part.keys]
        return Listing(listed, min(part.valid_until for part in parts), keys, parts[0].facts)


def _has_conditions(members: Iterable[SubjectGrants]) -> bool:
    return any(grant.condition is not None for member in members for grant in member.grants)


def compile_roster(snapshot: RosterSnapshot, members: Sequence[SubjectGrants] | None = None) -> TenantRoster:
    """The tenant and every member compiled as CheckAccess compiles them, each role's
    patterns compiled once for the whole tenant. `members`: the snapshot's members
    already compiled (`compile_subject`, in the snapshot's order), e.g. a chunk at a time
    by a caller letting other work run in between."""
    if members is None:
        shared: dict[tuple[str, ...], PermissionSet] = {}
        members = [compile_subject(member, shared) for member in snapshot.members]
    return TenantRoster(
        policy=compile_tenant(snapshot.tenant),
        revision=snapshot.revision,
        members=tuple(members),
        conditional=_has_conditions(members),
    )


def listed_subjects(
    policy: TenantPolicy, members: Sequence[SubjectGrants], permission: str, scope: str, now: float,
    facts: LookupFacts = NO_FACTS, keys: Sequence[tuple[str, str]] | None = None,
) -> Listing:
    """Every member `decide` allows `permission` at `scope` at `now` with `facts`, and
    every member it answers CONDITIONAL, in the order given. `keys`: each member's
    (type, id) to name it by (shared by the listing, not copied); else split from its key."""
    if keys is None:
        keys = [_split(member.subject_key) for member in members]
    listed = []
    named = []
    valid_until = math.inf
    for member, key in zip(members, keys, strict=True):
        decision = _decide(policy, member, permission, scope, now, facts)
        valid_until = min(valid_until, decided_until(member, now, decision))
        entry = _listed(member, key, decision, permission, scope, now, facts)
        if entry is not None:
            listed.append(entry)
            named.append(key)
    return Listing(tuple(listed), valid_until, named, facts=facts if facts.key else NO_FACTS)
