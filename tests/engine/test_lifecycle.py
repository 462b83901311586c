"""The tenant lifecycle table against DESIGN.md "Lifecycle", pair by pair and by random walks.

    DRAFT → ACTIVE → SUSPENDED ⇄ ACTIVE; ACTIVE/SUSPENDED → ARCHIVED; ARCHIVED → ACTIVE (restore);
    DRAFT/ARCHIVED → DELETED (needs an explicit confirm field; terminal).

The expectation below is written from that text in plain strings, not derived from the
engine's table, so a wrong row in the table cannot agree with itself.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gatehouse.engine.lifecycle import TRANSITIONS, Action, Guard, transition
from gatehouse.engine.model import TenantStatus
from gatehouse.errors import Code, ConfirmationRequired, FailedPrecondition, IllegalTransition

# (from, action) -> to, as the design draws it. Only "delete" needs confirm.
DIAGRAM: dict[tuple[str, str], str] = {
    ("draft", "activate"): "active",
    ("active", "suspend"): "suspended",
    ("suspended", "resume"): "active",
    ("active", "archive"): "archived",
    ("suspended", "archive"): "archived",
    ("archived", "restore"): "active",
    ("draft", "delete"): "deleted",
    ("archived", "delete"): "deleted",
}
DIAGRAM_STATES = {"draft", "active", "suspended", "archived", "deleted"}
NEEDS_CONFIRM = {"delete"}

ALL_PAIRS = list(itertools.product(TenantStatus, Action))


def expected_after(state: str, action: str, confirm: bool) -> str | type[Exception]:
    """The state the design says follows, or the error it says is raised."""
    target = DIAGRAM.get((state, action))
    if target is None:
        return IllegalTransition
    if action in NEEDS_CONFIRM and not confirm:
        return ConfirmationRequired
    return target


def test_states_and_actions_are_the_designs() -> None:
    assert {status.value for status in TenantStatus} == DIAGRAM_STATES
    assert {action.value for action in Action} == {action for _, action in DIAGRAM}


def test_table_is_exactly_the_diagram() -> None:
    table = {(state.value, action.value): target.value for (state, action), (_, target) in TRANSITIONS.items()}
    assert table == DIAGRAM


def test_only_terminal_steps_need_confirm() -> None:
    for (state, action), (guard, target) in TRANSITIONS.items():
        assert (guard is Guard.CONFIRM) is (target is TenantStatus.DELETED), (state, action)


@pytest.mark.parametrize("confirm", [False, True], ids=["no-confirm", "confirm"])
@pytest.mark.parametrize(("state", "action"), ALL_PAIRS, ids=[f"{s.value}-{a.value}" for s, a in ALL_PAIRS])
def test_every_state_action_pair(state: TenantStatus, action: Action, confirm: bool) -> None:
    expected = expected_after(state.value, action.value, confirm)
    if isinstance(expected, str):
        assert transition(state, action, confirm=confirm) is TenantStatus(expected)
        return
    with pytest.raises(expected) as raised:
        transition(state, action, confirm=confirm)
    error = raised.value
    assert isinstance(error, FailedPrecondition)
    assert error.code is Code.FAILED_PRECONDITION
    assert error.metadata == {"from": state.value, "action": action.value}
    if expected is IllegalTransition:
        assert error.reason == "GATEHOUSE_ILLEGAL_TRANSITION"
        assert not isinstance(error, ConfirmationRequired)
    else:
        assert error.reason == "GATEHOUSE_CONFIRMATION_REQUIRED"
        assert not isinstance(error, IllegalTransition)


def test_confirm_defaults_to_false() -> None:
    with pytest.raises(ConfirmationRequired):
        transition(TenantStatus.DRAFT, Action.DELETE)
    assert transition(TenantStatus.DRAFT, Action.ACTIVATE) is TenantStatus.ACTIVE


@pytest.mark.parametrize("confirm", [False, True])
@pytest.mark.parametrize("action", list(Action), ids=[a.value for a in Action])
def test_deleted_is_terminal(action: Action, confirm: bool) -> None:
    with pytest.raises(IllegalTransition) as raised:
        transition(TenantStatus.DELETED, action, confirm=confirm)
    assert raised.value.reason == "GATEHOUSE_ILLEGAL_TRANSITION"
    assert raised.value.code is Code.FAILED_PRECONDITION


@pytest.mark.parametrize("action", [Action.DELETE], ids=["delete"])
@pytest.mark.parametrize("state", [TenantStatus.ACTIVE, TenantStatus.SUSPENDED], ids=["active", "suspended"])
def test_live_tenants_cannot_be_deleted_even_with_confirm(state: TenantStatus, action: Action) -> None:
    with pytest.raises(IllegalTransition):
        transition(state, action, confirm=True)


def test_every_state_is_reachable_from_draft() -> None:
    reached = {TenantStatus.DRAFT}
    frontier = [TenantStatus.DRAFT]
    while frontier:
        state = frontier.pop()
        for action in Action:
            try:
                after = transition(state, action, confirm=True)
            except IllegalTransition:
                continue
            if after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(TenantStatus)


class TenantLifecycle(RuleBasedStateMachine):
    """Random walks of actions from DRAFT, each step checked against the diagram."""

    @initialize()
    def start(self) -> None:
        self.state = TenantStatus.DRAFT
        self.expected = "draft"

    @rule(action=st.sampled_from(Action), confirm=st.booleans())
    def act(self, action: Action, confirm: bool) -> None:
        expected = expected_after(self.expected, action.value, confirm)
        if isinstance(expected, str):
            self.state = transition(self.state, action, confirm=confirm)
            self.expected = expected
        else:
            with pytest.raises(expected):
                transition(self.state, action, confirm=confirm)

    @invariant()
    def agrees_with_the_diagram(self) -> None:
        assert self.state.value == self.expected
        assert self.state.value in DIAGRAM_STATES


TenantLifecycle.TestCase.settings = settings(max_examples=100, stateful_step_count=20, deadline=None)
test_random_walks_follow_the_diagram = TenantLifecycle.TestCase
