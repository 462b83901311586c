"""What export writes reads back to the same text, whatever characters a condition, a
setting or a settings key holds: PyYAML writes U+0085 (NEL) as it is in a quoted or plain
scalar, and a reader folds it into a space, so `context.ok == "\\x85"` came back
`context.ok == " "`, another condition, that apply would then put live."""

from __future__ import annotations

import datetime

import pytest

from gatehouse.declarative.diff import diff
from gatehouse.declarative.model import Grant, MemberSpec, State, TenantSpec
from gatehouse.declarative.schema import dumps, loads

ODD = [
    'context.ok == "\x85"',
    'context.ok == "a\x85b" || context.ok == "\x85\x85"',
    'context.ok == "\u2028\u2029"',
    'context.ok == "\x1b[2K\x9b\u202e\u200b\ufeff"',
    'context.ok == "x" //\n|| true\n',
    'context.ok == "x"\r\n|| true',
    'context.s == "\\"quoted\\" \'single\' 日本 😀"',
    '  context.ok == true  ',
]
LATEST = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone.utc)


def one_grant(condition: str, expires_at: datetime.datetime | None) -> State:
    # A state file's condition passes AssignRole's check, which refuses raw control,
    # format and separator characters (engine/conditions.py): those stay in the settings.
    if not all(c.isprintable() or c in "\n\t\r" for c in condition):
        condition_in_grant = 'context.ok == "\\u0085"'  # the same character, as an escape
    else:
        condition_in_grant = condition
    grant = Grant("viewer", "emea", condition_in_grant, expires_at)
    member = MemberSpec("user/a", frozenset({grant}))
    settings = {condition: condition, "nested": {"k\x85": "v\x85"}}
    return State(tenants={"acme": TenantSpec("acme", settings=settings, members={"user/a": member})})


@pytest.mark.parametrize("expires_at", [None, LATEST])
@pytest.mark.parametrize("condition", ODD)
def test_an_odd_condition_and_setting_survive_export_then_apply(
    condition: str, expires_at: datetime.datetime | None
) -> None:
    state = one_grant(condition, expires_at)
    back = loads(dumps(state))
    assert back == state
    assert diff(back, state) == []
