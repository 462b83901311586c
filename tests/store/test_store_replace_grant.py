"""AssignRole with `replace` (on_existing REPLACE) in the store: a grant held already
takes the request's terms in ONE transaction (one revision, one audit row, one outbox
event), and a refusal (the default, the last-owner rule, a stale revision) writes
nothing at all."""

from __future__ import annotations

import time

import asyncpg
import pytest

from gatehouse.engine.model import SubjectRef, TenantRecord
from gatehouse.errors import AlreadyExists, LastOwner, RevisionConflict
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory, Written, written

BOB = SubjectRef("user", "bob")
CAROL = SubjectRef("user", "carol")
LATER = 3600.0


@pytest.fixture
async def tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory) -> TenantRecord:
    """bob: owner at the root (the only one), editor at eu with a condition; carol: a member."""
    created = await make_tenant("repl")
    await store.create_role(actor, created.id, name="editor", permissions=("doc.*",), description="")
    for subject in (BOB, CAROL):
        await store.add_member(actor, created.id, subject)
    await store.assign_role(actor, created.id, BOB, role="owner", scope="")
    await store.assign_role(actor, created.id, BOB, role="editor", scope="eu", condition="context.ok == true")
    return await store.get_tenant(created.id)


async def terms(
    superuser: asyncpg.Connection, tenant_id: str, subject: SubjectRef
) -> dict[tuple[str, str], tuple[str, float | None, object]]:
    """(role, scope) -> (condition, expires_at as unix seconds or None, created_at) of every row."""
    rows = await superuser.fetch(
        "SELECT role, scope, condition, extract(epoch FROM expires_at)::float8 AS expires_at, created_at"
        " FROM role_assignments WHERE tenant_id = $1::uuid AND subject_type = $2 AND subject_id = $3",
        tenant_id, subject.type, subject.id,
    )  # fmt: skip
    return {(r["role"], r["scope"]): (r["condition"], r["expires_at"], r["created_at"]) for r in rows}


def unchanged(before: Written, after: Written) -> bool:
    counts = [(w.revision, len(w.audit), len(w.outbox)) for w in (before, after)]
    return counts[0] == counts[1]


async def test_replacing_a_held_grant_is_one_revision_one_audit_row_one_event(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    before = await written(superuser, tenant.id)
    expires = round(time.time() + LATER, 3)

    record, revision = await store.assign_role(
        actor, tenant.id, BOB, role="editor", scope="eu", condition="context.ok == false", expires_at=expires,
        replace=True,
    )  # fmt: skip

    after = await written(superuser, tenant.id)
    assert revision == after.revision == tenant.revision + 1
    assert (record.condition, record.expires_at) == ("context.ok == false", expires)
    new_audit, new_events = after.audit[len(before.audit):], after.outbox[len(before.outbox):]
    assert [(r["action"], r["target"], r["outcome"]) for r in new_audit] == [
        ("role.assign", "user/bob#editor@eu", "ok")
    ]
    details = new_audit[0]["details"]
    assert details["condition"] == "context.ok == false"
    assert details["expires_at"] == pytest.approx(expires)
    assert details["replaced"] == {"condition": "context.ok == true", "expires_at": None}
    assert [(r["revision"], r["kind"], r["subject"]) for r in new_events] == [(revision, "assignment", "user/bob")]
    held = await terms(superuser, tenant.id, BOB)
    assert held[("editor", "eu")][:2] == ("context.ok == false", pytest.approx(expires))
    assert len(held) == 2  # no second row, nothing else touched

    # Replaced again with no terms: none (a plain grant, for good); its old terms in details.
    _, again = await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", replace=True)
    assert again == revision + 1
    assert (await terms(superuser, tenant.id, BOB))[("editor", "eu")][:2] == ("", None)
    last = (await written(superuser, tenant.id)).audit[-1]["details"]
    assert last["replaced"] == {"condition": "context.ok == false", "expires_at": pytest.approx(expires)}
    assert "condition" not in last and "expires_at" not in last


async def test_replace_with_nothing_held_just_assigns(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    record, revision = await store.assign_role(
        actor, tenant.id, CAROL, role="editor", scope="us", condition="context.ok == true", replace=True
    )
    assert revision == tenant.revision + 1 and record.condition == "context.ok == true"
    seen = await written(superuser, tenant.id)
    assert seen.audit[-1]["action"] == "role.assign" and "replaced" not in seen.audit[-1]["details"]
    assert (await terms(superuser, tenant.id, CAROL))[("editor", "us")][:2] == ("context.ok == true", None)


async def test_an_expired_grant_not_yet_swept_is_granted_anew_not_replaced(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    await superuser.execute(
        "UPDATE role_assignments SET expires_at = now() - interval '1 second'"
        " WHERE tenant_id = $1::uuid AND subject_id = 'bob' AND role = 'editor'",
        tenant.id,
    )
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", replace=True)
    assert "replaced" not in (await written(superuser, tenant.id)).audit[-1]["details"]
    assert (await terms(superuser, tenant.id, BOB))[("editor", "eu")][:2] == ("", None)


async def test_without_replace_a_held_grant_is_refused_and_nothing_is_written(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    before, held = await written(superuser, tenant.id), await terms(superuser, tenant.id, BOB)
    with pytest.raises(AlreadyExists):
        await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", condition="context.ok == false")
    assert unchanged(before, await written(superuser, tenant.id))
    assert await terms(superuser, tenant.id, BOB) == held


@pytest.mark.parametrize(
    "condition, expiring",
    [("context.ok == true", False), ("", True), ("context.ok", True)],
    ids=["condition", "expiry", "both"],
)
async def test_the_last_lasting_owner_keeps_lasting_terms(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord, condition: str,
    expiring: bool,
) -> None:
    """Giving the only lasting owner a condition or an expiry could leave the tenant with
    none: refused as revoking it is, and nothing is written."""
    expires_at = time.time() + LATER if expiring else None
    before, held = await written(superuser, tenant.id), await terms(superuser, tenant.id, BOB)
    with pytest.raises(LastOwner) as raised:
        await store.assign_role(
            actor, tenant.id, BOB, role="owner", scope="", condition=condition, expires_at=expires_at, replace=True
        )
    assert raised.value.reason == "GATEHOUSE_LAST_OWNER"
    assert unchanged(before, await written(superuser, tenant.id))
    assert await terms(superuser, tenant.id, BOB) == held

    # Lasting terms for the last owner are fine (no condition, no expiry: it stays lasting).
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="", replace=True)
    # With another lasting owner, the first may take a condition or an expiry.
    await store.assign_role(actor, tenant.id, CAROL, role="owner", scope="")
    await store.assign_role(
        actor, tenant.id, BOB, role="owner", scope="", condition=condition, expires_at=expires_at, replace=True
    )
    assert (await terms(superuser, tenant.id, BOB))[("owner", "")][0] == condition
    # ...and then the other one, now the only lasting owner, may not.
    with pytest.raises(LastOwner):
        await store.assign_role(
            actor, tenant.id, CAROL, role="owner", scope="", condition=condition, expires_at=expires_at, replace=True
        )


async def test_owner_below_the_root_takes_any_terms(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="eu")
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="eu", condition="context.ok", replace=True)
    assert (await terms(superuser, tenant.id, BOB))[("owner", "eu")][0] == "context.ok"


async def test_a_stale_expected_revision_refuses_a_replace_and_writes_nothing(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    before, held = await written(superuser, tenant.id), await terms(superuser, tenant.id, BOB)
    with pytest.raises(RevisionConflict):
        await store.assign_role(
            actor, tenant.id, BOB, role="editor", scope="eu", replace=True, expected_revision=tenant.revision - 1
        )
    assert unchanged(before, await written(superuser, tenant.id))
    assert await terms(superuser, tenant.id, BOB) == held
    _, revision = await store.assign_role(
        actor, tenant.id, BOB, role="editor", scope="eu", replace=True, expected_revision=tenant.revision
    )
    assert revision == tenant.revision + 1
