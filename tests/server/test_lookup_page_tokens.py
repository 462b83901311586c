"""ListTenantsForSubject page tokens and sizes, forged: each is refused naming page_token, or acts only as a starting point."""

from __future__ import annotations

import base64

import grpc
import pytest

from gatehouse.store.pages import encode_token
from gatehouse_client.v1 import lookup_pb2
from tests.client import Client, user

FORGED = [
    encode_token([1]),  # another shape
    encode_token(["a", "b"]),  # LookupSubjects-like, two keys
    encode_token([None]),
    encode_token(["a\x00b"]),  # NUL Postgres refuses as text
    base64.urlsafe_b64encode(b'["\\ud800"]').decode().rstrip("="),  # a lone surrogate
    encode_token(["abc"]) + "==",  # padding: another spelling
    encode_token(["abc"]) + "\n",
    "%%%%",
    "\u00e9t\u00e9",  # not base64
    "A" * 100_000,
    base64.urlsafe_b64encode(b'["abc"] ').decode().rstrip("="),  # JSON spacing
    base64.urlsafe_b64encode(b'["abc","abc"]'[:7] + b"]").decode(),
]


@pytest.mark.parametrize("token", FORGED)
async def test_forged_page_tokens_are_invalid_argument_naming_page_token(client: Client, unique: str, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.lookup.ListTenantsForSubject(
            lookup_pb2.ListTenantsForSubjectRequest(subject=user(f"forger-{unique}"), page_token=token),
            metadata=client.auth,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    assert "page_token" in (raised.value.details() or "")


@pytest.mark.parametrize("cursor", ["\u00e9t\u00e9", "zzzz", "\U0001f600", "x" * 5000, " ", "'; --"])
async def test_hand_made_cursors_are_only_a_start(client: Client, unique: str, cursor: str) -> None:
    """A well-formed token of any slug is just a place to start: never an error, never
    another subject's tenants."""
    who = user(f"cursor-{unique}")
    tenant = await client.tenant(f"cur-{unique}")
    await client.grant(tenant.id, who, "viewer", "")
    page = await client.lookup.ListTenantsForSubject(
        lookup_pb2.ListTenantsForSubjectRequest(subject=who, page_token=encode_token([cursor]), page_size=2**31 - 1),
        metadata=client.auth,
    )
    assert {m.tenant_id for m in page.memberships} <= {tenant.id}
    assert page.next_page_token == ""
