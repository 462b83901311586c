"""The tenant lifecycle as one transition table, and the one function that applies it.

    DRAFT → ACTIVE → SUSPENDED ⇄ ACTIVE; ACTIVE/SUSPENDED → ARCHIVED;
    ARCHIVED → ACTIVE (restore); DRAFT/ARCHIVED → DELETED (confirm; terminal).
"""

from __future__ import annotations

import enum

from gatehouse.engine.model import TenantStatus
from gatehouse.errors import ConfirmationRequired, IllegalTransition


class Action(enum.Enum):
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    RESUME = "resume"
    ARCHIVE = "archive"
    RESTORE = "restore"
    DELETE = "delete"


class Guard(enum.Enum):
    """What must hold, besides the state, for a transition to apply."""

    NONE = "none"
    CONFIRM = "confirm"  # the caller set `confirm`: the step cannot be undone


S = TenantStatus
TRANSITIONS: dict[tuple[TenantStatus, Action], tuple[Guard, TenantStatus]] = {
    (S.DRAFT, Action.ACTIVATE): (Guard.NONE, S.ACTIVE),
    (S.ACTIVE, Action.SUSPEND): (Guard.NONE, S.SUSPENDED),
    (S.SUSPENDED, Action.RESUME): (Guard.NONE, S.ACTIVE),
    (S.ACTIVE, Action.ARCHIVE): (Guard.NONE, S.ARCHIVED),
    (S.SUSPENDED, Action.ARCHIVE): (Guard.NONE, S.ARCHIVED),
    (S.ARCHIVED, Action.RESTORE): (Guard.NONE, S.ACTIVE),
    (S.DRAFT, Action.DELETE): (Guard.CONFIRM, S.DELETED),
    (S.ARCHIVED, Action.DELETE): (Guard.CONFIRM, S.DELETED),
}


def transition(state: TenantStatus, action: Action, *, confirm: bool = False) -> TenantStatus:
    """The state after `action`, or IllegalTransition / ConfirmationRequired."""
    try:
        guard, target = TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(
            f"cannot {action.value} a tenant that is {state.value}",
            metadata={"from": state.value, "action": action.value},
        ) from None
    if guard is Guard.CONFIRM and not confirm:
        raise ConfirmationRequired(
            f"{action.value} is terminal: set confirm=true",
            metadata={"from": state.value, "action": action.value},
        )
    return target
