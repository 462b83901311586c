"""AssignRole REPLACE, plain AssignRole and RevokeRole storming one (subject, role, scope)
from several clients of two sidecars at once: every successful write is one revision
(none lost, none twice), one `ok` audit row and one outbox event; the grant left is the
last write's terms; and both sidecars (CheckAccess, ListSubjectPermissions,
LookupSubjects) answer by those terms at that revision. And the last-owner rule holds
against two concurrent REPLACEs that would each leave one lasting owner."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, AsyncIterator

import asyncpg
import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import admin_pb2, lookup_pb2
from tests.client import Client, make_client, struct, user
from tests.server.status import details
from tests.server.test_admin_replace_grant import REPLACE, accountant_tenant, assign, at, check, held, revision_of
from tests.store.store_helpers import superuser_dsn

Terms = tuple[str, int | None]  # (condition, expires_at seconds)
CONDITIONS = ("", "context.ok == true", "context.ok == false")


@pytest.fixture
async def third(sidecar: Sidecar, operator_token: str) -> AsyncIterator[Client]:
    """Another channel to the first sidecar: calls that do not share `client`'s connection."""
    c = make_client(sidecar.addresses[0], operator_token)
    yield c
    await c.channel.close()


async def one_write(
    by: Client, tenant_id: str, kind: str, condition: str, expires: int | None
) -> tuple[int, Terms | None] | None:
    """(revision, terms left: None = revoked) of a write that succeeded; None when it was
    refused as the state at its turn called for (ALREADY_EXISTS, NOT_FOUND)."""
    try:
        if kind == "revoke":
            revoked = await by.admin.RevokeRole(
                admin_pb2.RevokeRoleRequest(tenant_id=tenant_id, subject=user("alice"), role="accountant", scope="emea"),
                metadata=by.auth,
            )
            return int(revoked.revision), None
        fields: dict[str, Any] = {"condition": condition}
        if expires is not None:
            fields["expires_at"] = at(expires)
        if kind == "replace":
            fields["on_existing"] = REPLACE
        made = await by.admin.AssignRole(assign(tenant_id, "alice", "accountant", "emea", **fields), metadata=by.auth)
        return int(made.revision), (condition, expires)
    except grpc.aio.AioRpcError as exc:
        expected = grpc.StatusCode.NOT_FOUND if kind == "revoke" else grpc.StatusCode.ALREADY_EXISTS
        assert exc.code() == expected, (kind, exc.code(), exc.details())
        return None


def allowed_by(terms: Terms | None, ok: bool) -> bool:
    if terms is None:
        return False
    return terms[0] in ("", f"context.ok == {'true' if ok else 'false'}")


async def test_a_storm_of_replace_assign_and_revoke_leaves_one_consistent_history(
    client: Client, second: Client, third: Client, unique: str, database_url: str
) -> None:
    tenant = await accountant_tenant(client, f"storm-{unique}")
    before = await revision_of(client, tenant.id)
    rng = random.Random(unique)
    later = int(time.time()) + 3600
    plans = [
        (rng.choice((client, second, third)), rng.choice(("replace", "replace", "assign", "revoke")),
         rng.choice(CONDITIONS), rng.choice((None, later + rng.randrange(1000))))
        for _ in range(60)
    ]  # fmt: skip
    # At most 24 in flight: under each sidecar's admission limit for admin calls (32).
    gate = asyncio.Semaphore(24)

    async def gated(by: Client, kind: str, condition: str, expires: int | None) -> tuple[int, Terms | None] | None:
        async with gate:
            return await one_write(by, tenant.id, kind, condition, expires)

    outcomes = await asyncio.gather(*(gated(*plan) for plan in plans))
    done = sorted(o for o in outcomes if o is not None)
    assert len(done) >= 10, "too few writes succeeded to tell anything"
    revisions = [r for r, _ in done]
    # One revision per successful write: no gap, none twice, and nothing else wrote.
    assert revisions == list(range(before + 1, before + 1 + len(done)))
    last, final = done[-1]
    assert await revision_of(client, tenant.id) == last
    expected = {} if final is None else {("accountant", "emea"): final}
    assert await held(client, tenant.id, "alice") == expected

    audit = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id, page_size=1000), metadata=client.auth
    )
    ok = [e for e in audit.events if e.outcome == "ok" and e.action in ("role.assign", "role.revoke")]
    assert len(ok) == len(done) + 1  # and the setup's own assign
    conn = await asyncpg.connect(superuser_dsn(database_url))
    try:
        events = await conn.fetch(
            "SELECT revision FROM outbox WHERE tenant_id = $1 AND revision > $2 ORDER BY revision", tenant.id, before
        )
    finally:
        await conn.close()
    assert [int(e["revision"]) for e in events] == revisions

    for by in (client, second):
        for ok_value in (True, False):
            answer = await by.access.CheckAccess(check(tenant.id, "alice", ok_value, min_revision=last))
            assert answer.revision >= last
            assert answer.allowed == allowed_by(final, ok_value), (by is client, ok_value, final)
        listed = await by.lookup.ListSubjectPermissions(
            lookup_pb2.ListSubjectPermissionsRequest(tenant_id=tenant.id, subject=user("alice"), min_revision=last)
        )
        grants = {
            (g.role, g.scope): (g.condition, g.expires_at.seconds if g.HasField("expires_at") else None)
            for g in listed.grants
        }
        assert grants == expected
        looked = await by.lookup.LookupSubjects(
            lookup_pb2.LookupSubjectsRequest(
                tenant_id=tenant.id, permission="invoice.read", scope="emea/de", min_revision=last,
                context=struct({"ok": True}),
            )
        )  # fmt: skip
        assert ("alice" in {s.subject.id for s in looked.subjects}) == allowed_by(final, True)


async def test_two_concurrent_replaces_cannot_leave_no_lasting_owner(client: Client, second: Client, unique: str) -> None:
    """olga and oscar are the only lasting owners; each is given an expiry at once, from
    two sidecars. At most one may succeed (LAST_OWNER for the other): at least one
    lasting owner remains."""
    for round_ in range(4):
        tenant = await client.tenant(f"owners-{round_}-{unique}")
        await client.grant(tenant.id, user("olga"), "owner", "")
        await client.grant(tenant.id, user("oscar"), "owner", "")
        expires = at(time.time() + 3600)
        calls = [
            by.admin.AssignRole(assign(tenant.id, who, "owner", "", expires_at=expires, on_existing=REPLACE), metadata=by.auth)
            for by, who in ((client, "olga"), (second, "oscar"))
        ]  # fmt: skip
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) >= 1, "both owners were given an expiry: no lasting owner is left"
        for failure in failures:
            assert isinstance(failure, grpc.aio.AioRpcError) and failure.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert details(failure)[0].reason == "GATEHOUSE_LAST_OWNER"
        lasting = [
            who for who in ("olga", "oscar")
            if (await held(client, tenant.id, who)).get(("owner", "")) == ("", None)
        ]  # fmt: skip
        assert len(lasting) == 1
