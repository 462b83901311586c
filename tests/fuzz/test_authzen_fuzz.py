"""Random bodies to the AuthZEN endpoints: never a 500, always a JSON body, nothing logged
at ERROR. Random JSON, AuthZEN-shaped requests with random values in every place, and
random bytes."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import ErrorRecords
from tests.server.authzen_client import (  # noqa: F401  (fixtures)
    EVALUATION,
    EVALUATIONS,
    AuthZenClient,
    authzen_sidecar,
    http,
)

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES * 2,
    deadline=None,
    derandomize=os.environ.get("GATEHOUSE_FUZZ_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
ANSWERED = {200, 400, 412, 413}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "user", "alice", "doc.read", "a/b", "00000000-0000-0000-0000-00000000f00f", "execute_all"])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def entity(keys: list[str]) -> st.SearchStrategy[Any]:
    """An object with some of `keys`, each a plausible or random value; or any value."""
    plausible = st.fixed_dictionaries({}, optional={key: json_values for key in keys})
    return plausible | json_values


resource = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values,
        "id": json_values,
        "properties": st.fixed_dictionaries({}, optional={"tenant_id": json_values, "scope": json_values}) | json_values,
    },
)
evaluation = st.fixed_dictionaries(
    {},
    optional={
        "subject": entity(["type", "id", "properties"]),
        "action": entity(["name", "properties"]),
        "resource": resource | json_values,
        "context": st.fixed_dictionaries({}, optional={"min_revision": json_values}) | json_values,
    },
)
request = st.builds(
    lambda top, items, options: {**top, **({} if items is None else {"evaluations": items}), **options},
    evaluation,
    st.none() | st.lists(evaluation | json_values, max_size=5) | json_values,
    st.fixed_dictionaries({}, optional={"options": st.fixed_dictionaries({}, optional={"evaluations_semantic": json_values}) | json_values}),
)


async def verdict(http: AuthZenClient, error_log: ErrorRecords, endpoint: str, data: bytes, header: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Gatehouse-Tenant"] = header
    before = len(error_log.records)
    reply = await http.send("POST", endpoint, data, headers)  # asserts the body is JSON
    assert reply.status in ANSWERED, (reply.status, reply.body, data[:300])
    assert isinstance(reply.body, dict) and ("error" in reply.body) == (reply.status != 200), reply.body
    assert error_log.describe()[before:] == []


@FUZZ
@given(body=json_values, endpoint=st.sampled_from([EVALUATION, EVALUATIONS]))
async def test_random_json(http: AuthZenClient, error_log: ErrorRecords, body: Any, endpoint: str) -> None:
    await verdict(http, error_log, endpoint, json.dumps(body).encode(), None)


@FUZZ
@given(
    body=request,
    endpoint=st.sampled_from([EVALUATION, EVALUATIONS]),
    header=st.none() | st.sampled_from(["00000000-0000-0000-0000-00000000f00f", "acme", ""]),
)
async def test_authzen_shaped_requests(
    http: AuthZenClient, error_log: ErrorRecords, body: Any, endpoint: str, header: str | None
) -> None:
    await verdict(http, error_log, endpoint, json.dumps(body).encode(), header)


@FUZZ
@given(data=st.binary(max_size=300), endpoint=st.sampled_from([EVALUATION, EVALUATIONS]))
async def test_random_bytes(http: AuthZenClient, error_log: ErrorRecords, data: bytes, endpoint: str) -> None:
    await verdict(http, error_log, endpoint, data, None)
