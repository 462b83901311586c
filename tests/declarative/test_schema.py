"""The state file (gatehouse.declarative.schema): what it reads, every problem named by
file, line and field, and what export writes reads back to no difference."""

from __future__ import annotations

import datetime
import textwrap

import pytest
from hypothesis import given, settings

from gatehouse.declarative.diff import diff
from gatehouse.declarative.model import FeatureSpec, Grant, State
from gatehouse.declarative.plan_text import NO_CHANGES, render
from gatehouse.declarative.schema import StateFileError, dumps, loads
from gatehouse.engine.model import TenantStatus
from tests.declarative.test_diff import states

GOOD = """\
apiVersion: gatehouse/v1
kind: Plan
name: pro
features:
  reports: {default_enabled: true, gates: ["report.*"]}
quotas: {seats: 50}
---
apiVersion: gatehouse/v1
kind: Tenant
slug: acme
name: Acme
plan: pro
status: active
settings: {theme: dark, nested: {a: [1, 2]}}
flag_overrides: {reports: false}
roles:
  - name: billing-admin
    permissions: ["invoice.read", "invoice.*"]
members:
  - subject: user/alice
    roles:
      - role: owner
      - role: billing-admin
        scope: emea/de
  - subject: service:ci
"""


def test_a_good_file_reads_into_the_state() -> None:
    state = loads(GOOD, "state.yaml")
    assert state.plans["pro"].features == {"reports": FeatureSpec(True, ("report.*",))}
    acme = state.tenants["acme"]
    assert acme.status is TenantStatus.ACTIVE and acme.plan == "pro" and acme.region is None
    assert acme.settings == {"theme": "dark", "nested": {"a": [1, 2]}}
    assert acme.roles["billing-admin"].permissions == ("invoice.*", "invoice.read")  # order carries no meaning
    assert acme.members["user/alice"].grants == {Grant("owner"), Grant("billing-admin", "emea/de")}
    assert acme.members["service/ci"].grants == frozenset()
    assert acme.where == "state.yaml:8"


def problems(text: str) -> list[str]:
    with pytest.raises(StateFileError) as caught:
        loads(textwrap.dedent(text), "state.yaml")
    return [str(p) for p in caught.value.problems]


def test_every_problem_is_named_by_file_line_and_field_in_line_order() -> None:
    assert problems(
        """\
        apiVersion: gatehouse/v1
        kind: Tenant
        slug: Acme
        name: Acme
        colour: red
        settings: {a: null, when: 2024-01-01}
        roles:
          - name: r
            permissions: ["Invoice.read"]
        members:
          - subject: user/alice
            roles:
              - role: owner
                scope: /bad/
          - subject: api_key/0123456789abcdef
          - subject: alice
        ---
        apiVersion: gatehouse/v2
        kind: Tenant
        """
    ) == [
        "state.yaml:3: Tenant Acme: slug: must match ^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
        "state.yaml:5: Tenant Acme: colour: unknown field (known: apiVersion, flag_overrides, id, kind, members, "
        "name, plan, quota_overrides, region, roles, settings, slug, status)",
        "state.yaml:6: Tenant Acme: settings.when: a date is not a JSON value: quote it",
        "state.yaml:9: Tenant Acme: roles[0].permissions[0]: must be dot-separated segments of [a-z0-9_-]+ or *",
        "state.yaml:14: Tenant Acme: members[0].roles[0].scope: must be empty or /-separated segments of "
        "[A-Za-z0-9._:@-] (no empty, . or .. segment, no leading or trailing /)",
        "state.yaml:15: Tenant Acme: members[1].subject: API keys are not members in the file: manage them with `gatehouse key`",
        "state.yaml:16: Tenant Acme: members[2].subject: must be type:id, e.g. user:alice",
        "state.yaml:18: document 2: apiVersion: must be gatehouse/v1 (got 'gatehouse/v2')",
    ]


def test_duplicates_are_problems_not_silently_the_last_one() -> None:
    assert problems(
        """\
        apiVersion: gatehouse/v1
        kind: Tenant
        slug: acme
        name: A
        name: B
        members:
          - subject: user/a
          - subject: user:a
        """
    ) == [
        "state.yaml:5: Tenant acme: name: duplicate key (first at line 4)",
        "state.yaml:8: Tenant acme: members[1].subject: user:a is also listed at state.yaml:7",
    ]
    twice = "apiVersion: gatehouse/v1\nkind: Tenant\nslug: acme\n"
    assert problems(f"{twice}---\n{twice}") == [
        "state.yaml:5: Tenant acme: slug: tenant acme is also defined at state.yaml:1"
    ]


def test_types_are_checked() -> None:
    assert problems(
        """\
        apiVersion: gatehouse/v1
        kind: Plan
        name: pro
        features: {reports: {default_enabled: "yes please"}}
        quotas: {seats: 1.5, big: 99999999999999999999}
        rate_limits: [1]
        """
    ) == [
        "state.yaml:4: Plan pro: features.reports.default_enabled: must be true or false",
        "state.yaml:5: Plan pro: quotas.seats: must be an integer",
        "state.yaml:5: Plan pro: quotas.big: must fit in 64 bits",
        "state.yaml:6: Plan pro: rate_limits: must be a mapping",
    ]


def test_not_yaml_names_the_line() -> None:
    assert problems("apiVersion: gatehouse/v1\nkind: [Tenant\n") [0].startswith("state.yaml:3: not YAML:")


def test_empty_documents_are_skipped() -> None:
    assert loads("---\n---\n", "s.yaml") == State()


def test_what_export_writes_reads_back_to_the_same_state() -> None:
    state = loads(GOOD, "state.yaml")
    again = loads(dumps(state), "export.yaml")
    assert again == state
    assert render(diff(state, again, prune=True)) == NO_CHANGES + "\n"


@settings(max_examples=200, deadline=None)
@given(states())
def test_export_then_apply_is_no_change(state: State) -> None:
    assert diff(state, loads(dumps(state)), prune=True) == []


def test_the_plan_reads_like_terraform() -> None:
    live = loads(GOOD, "live.yaml")
    want = loads(
        GOOD.replace("theme: dark", "theme: light")
        .replace("flag_overrides: {reports: false}", "flag_overrides: {reports: true}")
        .replace('  - subject: service:ci\n', "  - subject: user/bob\n    roles: [{role: viewer}]\n")
        .replace("quotas: {seats: 50}", "quotas: {seats: 60}"),
        "state.yaml",
    )
    assert render(diff(live, want, prune=True)) == textwrap.dedent(
        """\
        ~ plan pro
            quotas.seats: 50 -> 60
        ~ tenant acme config
            settings.theme: "dark" -> "light"
            flag_overrides.reports: false -> true
        + member acme user:bob
        + grant acme user:bob: viewer at the tenant root
        - member acme service:ci (with its role grants)

        Plan: 2 to add, 2 to change, 1 to remove.
        """
    )


TERMS = """\
apiVersion: gatehouse/v1
kind: Tenant
slug: acme
members:
  - subject: user:bob
    roles:
      - role: viewer
        scope: us
        condition: resource.attributes.owner == subject.id
        expires_at: 2031-05-01T14:00:00+02:00
      - role: viewer
        scope: eu
        expires_at: "2031-05-01T12:00:00.250Z"
      - role: viewer
"""


def test_a_grant_carries_its_condition_and_expiry_and_export_writes_them_back() -> None:
    utc = datetime.timezone.utc
    state = loads(TERMS, "state.yaml")
    assert state.tenants["acme"].members["user/bob"].grants == {
        Grant("viewer", "us", "resource.attributes.owner == subject.id", datetime.datetime(2031, 5, 1, 12, tzinfo=utc)),
        Grant("viewer", "eu", "", datetime.datetime(2031, 5, 1, 12, 0, 0, 250_000, tzinfo=utc)),
        Grant("viewer"),
    }
    written = dumps(state)
    assert "expires_at: '2031-05-01T12:00:00Z'" in written  # one spelling: UTC
    assert "condition: resource.attributes.owner == subject.id" in written
    assert loads(written, "export.yaml") == state
    assert diff(state, loads(written, "export.yaml"), prune=True) == []


def test_a_bad_condition_or_expiry_is_a_problem_naming_the_field() -> None:
    assert problems(
        """\
        apiVersion: gatehouse/v1
        kind: Tenant
        slug: acme
        members:
          - subject: user:bob
            roles:
              - role: viewer
                condition: resource.attributes.owner ==
              - role: viewer
                scope: eu
                condition: 42
                expires_at: 2031-05-01T12:00:00
              - role: viewer
                scope: us
                condition: resource.attributes.size + 1
                expires_at: tomorrow
              - role: viewer
                scope: apac
                expires_at: 2031-02-30T12:00:00Z
              - role: viewer
                scope: emea
                expires_at: 2031-05-01T12:00:00.123456789Z
              - role: owner
              - role: owner
                condition: context.ok == true
        """
    ) == [
        "state.yaml:8: Tenant acme: members[0].roles[0].condition: is not a usable condition: "
        + problems_of_condition("resource.attributes.owner =="),
        "state.yaml:11: Tenant acme: members[0].roles[1].condition: must be a string",
        "state.yaml:12: Tenant acme: members[0].roles[1].expires_at: must be an RFC 3339 time with its zone, "
        "e.g. 2027-01-31T18:00:00Z or 2027-01-31T19:00:00+01:00",
        "state.yaml:15: Tenant acme: members[0].roles[2].condition: is not a usable condition: "
        + problems_of_condition("resource.attributes.size + 1"),
        "state.yaml:16: Tenant acme: members[0].roles[2].expires_at: must be an RFC 3339 time with its zone, "
        "e.g. 2027-01-31T18:00:00Z or 2027-01-31T19:00:00+01:00",
        "state.yaml:19: Tenant acme: members[0].roles[3].expires_at: '2031-02-30T12:00:00Z' is not a valid time "
        "(must be an RFC 3339 time with its zone, e.g. 2027-01-31T18:00:00Z or 2027-01-31T19:00:00+01:00)",
        "state.yaml:22: Tenant acme: members[0].roles[4].expires_at: to the microsecond at most "
        "(the server keeps microseconds)",
        "state.yaml:24: Tenant acme: members[0].roles[6]: lists this role at this scope twice",
    ]


def problems_of_condition(source: str) -> str:
    """The message AssignRole gives for `source` (engine.conditions, the same check)."""
    from gatehouse.engine.conditions import ConditionError, check_condition

    with pytest.raises(ConditionError) as caught:
        check_condition(source)
    return str(caught.value)


def test_the_plan_shows_a_grant_whose_terms_change_as_a_change() -> None:
    live = loads(TERMS, "live.yaml")
    want = loads(
        TERMS.replace("owner == subject.id", "owner != subject.id").replace("2031-05-01T12:00:00.250Z", "2031-06-01T00:00:00Z")
        + "        condition: context.ok == true\n",
        "state.yaml",
    )
    assert render(diff(live, want)) == textwrap.dedent(
        """\
        ~ grant acme user:bob: viewer at the tenant root
            condition: "" -> "context.ok == true"
        ~ grant acme user:bob: viewer at eu
            expires_at: 2031-05-01T12:00:00.250000Z -> 2031-06-01T00:00:00Z
        ~ grant acme user:bob: viewer at us
            condition: "resource.attributes.owner == subject.id" -> "resource.attributes.owner != subject.id"

        Plan: 0 to add, 3 to change, 0 to remove.
        """
    )
