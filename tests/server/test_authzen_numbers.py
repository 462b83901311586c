"""AuthZEN properties and context as condition attributes: numbers a double cannot hold exactly, and other hostile values."""

from __future__ import annotations

import pytest

from tests.client import Client
from tests.server.authzen_client import (  # noqa: F401  (fixtures)
    EVALUATION,
    AuthZenClient,
    admin,
    authzen_sidecar,
    http,
)
from tests.server.test_authzen import ALICE, conditional_library, tenant_header

SAME_UID = "subject.attributes.uid == resource.attributes.owner_uid"


@pytest.mark.parametrize("where", ["subject", "resource"])
async def test_integers_past_2_53_are_refused_not_rounded_into_equal(
    admin: Client, http: AuthZenClient, unique: str, where: str
) -> None:
    """Input: subject.properties.uid 9007199254740993 and resource.properties.owner_uid
    9007199254740992, two different integers in the caller's JSON, under the condition
    `subject.attributes.uid == resource.attributes.owner_uid`. Before: both became the
    double 9007199254740992.0 (a Struct's number), so the condition held: allowed for a
    resource owned by someone else. Now: 400 naming the value (a Struct cannot hold it
    exactly; pass it as a string), as 1e400 is refused."""
    tenant_id, revision = await conditional_library(admin, unique, SAME_UID)
    subject_uid, owner_uid = 2**53 + 1, 2**53
    body = {
        "subject": {**ALICE, "properties": {"uid": subject_uid}},
        "action": {"name": "doc.edit"},
        "resource": {"type": "doc", "id": "d1", "properties": {"owner_uid": owner_uid}},
        "context": {"min_revision": revision},
    }
    if where == "resource":  # the large one on the other side
        body["subject"]["properties"]["uid"], body["resource"]["properties"]["owner_uid"] = owner_uid, subject_uid
    reply = await http.post(EVALUATION, body, tenant_header(tenant_id))
    assert reply.status == 400, reply.body
    (violation,) = reply.body["error"]["violations"]
    field = "subject.properties['uid']" if where == "subject" else "resource.properties['owner_uid']"
    assert violation["field"] == field
    # Exactly representable integers still compare as numbers.
    body["subject"]["properties"]["uid"] = body["resource"]["properties"]["owner_uid"] = 2**53
    assert (await http.post(EVALUATION, body, tenant_header(tenant_id))).body["decision"] is True
