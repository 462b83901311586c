"""What the data puts in a plan or a CLI table is shown, never obeyed: a condition (the
API refuses raw control, format and separator characters in one now, but one stored
before that rule may hold them) or a
setting with a newline, an escape sequence, a C1 control (CSI U+009B), a bidi override
(U+202E, "Trojan Source") or a line separator (U+2028) is printed escaped, so it can
neither forge a plan line or a table row nor recolour, hide or reorder what a reviewer
reads."""

from __future__ import annotations

import pytest

from gatehouse.declarative.diff import ChangeGrant, PatchConfig
from gatehouse.declarative.model import Grant
from gatehouse.declarative.plan_text import render
from gatehouse.display_text import escape_unprintable
from gatehouse.engine.validate import require_condition
from gatehouse.errors import InvalidArgument
from gatehouse.server.cli_output import table

HOSTILE = [
    'context.ok == "\x1b[2K\x1b[1A"',  # erase the line, cursor up
    'context.ok == "\x9b2K\x9b1A"',  # the same as C1 CSI
    'context.ok == "x" // \u202e eurt == ko.txetnoc',  # bidi override
    'context.ok == "x" // \u2028|| true',  # a line separator
    'context.ok == "x" //\n|| true // a forged row\n',  # a newline
    'context.ok == "\u200b"',  # zero width
]


def unprintable(text: str) -> list[str]:
    return [c for line in text.split("\n") for c in line if not c.isprintable()]


@pytest.mark.parametrize("condition", HOSTILE)
def test_the_api_refuses_these_conditions_but_a_newline(condition: str) -> None:
    # What a reviewer reads must be what runs ("Trojan Source", CVE-2021-42574): only a
    # newline, a tab or a carriage return may stand raw in a condition's source.
    if all(c.isprintable() or c in "\n\t\r" for c in condition):
        assert require_condition("condition", condition) == condition
        return
    with pytest.raises(InvalidArgument) as refused:
        require_condition("condition", condition)
    assert refused.value.violations[0].field == "condition"
    assert "write it as an escape in a string literal" in refused.value.violations[0].description


@pytest.mark.parametrize("condition", HOSTILE)
def test_a_plan_shows_a_hostile_condition_escaped(condition: str) -> None:
    change = ChangeGrant("acme", "user/a", Grant("viewer", "emea", condition), Grant("viewer", "emea"))
    text = render([change])
    assert unprintable(text) == []
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1] == "Plan: 0 to add, 1 to change, 0 to remove.", text


def test_a_plan_shows_a_hostile_setting_escaped() -> None:
    patch = PatchConfig("acme", {"theme\u202e": "\x9b31mdark\u202e", "x\ny": 1})
    text = render([patch])
    assert unprintable(text) == [], text


@pytest.mark.parametrize("condition", HOSTILE)
def test_a_table_shows_a_hostile_condition_escaped_on_its_row(condition: str) -> None:
    text = table([{"role": "viewer", "condition": condition}], ("role", "condition"))
    assert unprintable(text) == []
    assert len(text.splitlines()) == 2, text


def test_printable_text_is_unchanged_and_escapes_are_readable() -> None:
    assert escape_unprintable('a == "é ü 日本" && b') == 'a == "é ü 日本" && b'
    assert escape_unprintable("a\nb\t\x1b\x9b\u202e\U000e0001") == "a\\nb\\t\\x1b\\x9b\\u202e\\U000e0001"
