"""Org-unit moves (MoveScope): where each scope goes when a subtree moves.

Gatehouse keeps no table of org units: a scope exists only as the scope of role
assignments, compared segment by segment (`gatehouse.engine.patterns.scope_covers`). A
move therefore names the subtree's whole new path, the way LDAP's ModifyDN names the
new DN (RFC 4511 section 4.9: new RDN and new superior) and `mv a/b c/d` does when `c/d`
does not exist: `source` *becomes* `target`, and everything below `source` keeps its
place below it. Moving "under" the target (`mv a/b c/` when `c` exists, keeping the last
segment) cannot be decided here, since whether `c` "exists" is no question Gatehouse can
answer, and it could not express a rename.

    source            target            a scope at            moves to
    org/eu/sales      org/emea/sales    org/eu/sales          org/emea/sales
                                        org/eu/sales/team1    org/emea/sales/team1
                                        org/eu/salesforce     (stays: not below the source)
    org/eu/sales      org/emea          org/eu/sales/team1    org/emea/team1
    org/eu/sales      org/eu/vertrieb   org/eu/sales/team1    org/eu/vertrieb/team1   (a rename)
    org/eu/sales      ""  (the root)    org/eu/sales/team1    team1

The map is one-to-one on the moved scopes and keeps every covering relation between
them (a covers b exactly when moved(a) covers moved(b)), so a subtree decides after the
move as it did before, at its new place. Refused, before anything is read
(`MoveIntoItself`, INVALID_ARGUMENT naming `to_scope`): a target at or below the source
(that includes any move of the tenant root, which everything is below); the subtree
would have to contain itself.
"""

from __future__ import annotations

from gatehouse.engine.patterns import MAX_SCOPE_LEN, scope_covers
from gatehouse.errors import MoveIntoItself

INTO_ITSELF = "must not be the source scope or below it: a subtree cannot move into itself"


def require_move(source: str, target: str, *, field: str = "to_scope") -> None:
    """Raise MoveIntoItself (naming `field`) unless `target` lies outside `source`'s
    subtree. Both must be valid scopes already (`validate.require_scope`)."""
    if scope_covers(source, target):
        raise MoveIntoItself(field, INTO_ITSELF)


def moved_scope(scope: str, source: str, target: str) -> str | None:
    """Where `scope` goes when `source` moves to `target`; None when `scope` is not at or
    below `source` (it stays). The result may be longer than a scope may be
    (`fits`): the caller refuses such a move."""
    if not scope_covers(source, scope) or source == "":
        return None
    rest = scope[len(source):]  # "" or "/…"
    if target == "":
        return rest[1:]
    return target + rest


def fits(scope: str) -> bool:
    """True when a moved scope is no longer than any scope may be."""
    return len(scope) <= MAX_SCOPE_LEN
