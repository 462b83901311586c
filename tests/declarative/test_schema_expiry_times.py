"""A state file's `expires_at` is RFC 3339 with its zone, read exactly: an offset's minute
is 00-59 and its hour 00-23 (`+00:60` was read as an hour ahead, `2027-01-31T18:00:00+00:60`
as 17:00Z); odd but valid spellings read to the instant they name; every refusal is a
problem naming the field, never a crash."""

from __future__ import annotations

import datetime

import pytest

from gatehouse.declarative.schema import API_VERSION, StateFileError, loads

FILE = """apiVersion: {api}
kind: Tenant
slug: acme
members:
  - subject: user:a
    roles:
      - role: viewer
        expires_at: {value}
"""
UTC = datetime.timezone.utc


def expiry(value: str) -> datetime.datetime | None:
    state = loads(FILE.format(api=API_VERSION, value=value))
    members = state.tenants["acme"].members
    assert members is not None
    return next(iter(members["user/a"].grants)).expires_at


@pytest.mark.parametrize("value", [
    "2027-01-31T18:00:00+00:60", "2027-01-31T18:00:00-00:99", "2027-01-31T18:00:00+24:00",
    "2027-01-31T18:00:00+99:00", "2027-01-31T18:00:00", "2027-01-31T23:59:60Z", "0000-01-01T00:00:00Z",
    "2027-02-30T00:00:00Z", "2027-01-31T24:00:00Z", "1700000000", "2027-01-31", "'2027-01-31T18:00:00+0100'",
    "２０２７-01-31T18:00:00Z", "2027-01-31T18:00:00.1234567Z", "[2027-01-31T18:00:00Z]", "~", "''",
])  # fmt: skip
def test_a_time_that_is_not_rfc_3339_with_a_zone_is_a_problem_naming_the_field(value: str) -> None:
    with pytest.raises(StateFileError) as problem:
        expiry(value)
    assert "members[0].roles[0].expires_at" in str(problem.value)


@pytest.mark.parametrize("value, instant", [
    ("2027-01-31T18:00:00+23:59", datetime.datetime(2027, 1, 30, 18, 1, tzinfo=UTC)),
    ("2027-01-31T18:00:00-00:00", datetime.datetime(2027, 1, 31, 18, tzinfo=UTC)),
    ("2027-01-31t18:00:00z", datetime.datetime(2027, 1, 31, 18, tzinfo=UTC)),
    ('"2027-01-31T18:00:00.1234560Z"', datetime.datetime(2027, 1, 31, 18, 0, 0, 123456, tzinfo=UTC)),
    ("9999-12-31T23:59:59Z", datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
])  # fmt: skip
def test_a_valid_time_reads_to_the_instant_it_names(value: str, instant: datetime.datetime) -> None:
    assert expiry(value) == instant
