"""Tenants, their lifecycle and config, plans and their fan-out, and paged listings."""

from __future__ import annotations

import asyncpg
import pytest

from gatehouse.engine.lifecycle import TRANSITIONS, Action
from gatehouse.engine.model import Plan, PlanFeature, SubjectRef, TenantStatus
from gatehouse.errors import (
    AlreadyExists,
    ConfirmationRequired,
    IllegalTransition,
    InvalidArgument,
    TenantNotFound,
)
from gatehouse.store.api import DEFAULT_PLAN, Actor, ConfigPatch
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory, written

# How to bring a fresh (draft) tenant into each state.
PATH_TO: dict[TenantStatus, tuple[Action, ...]] = {
    TenantStatus.DRAFT: (),
    TenantStatus.ACTIVE: (Action.ACTIVATE,),
    TenantStatus.SUSPENDED: (Action.ACTIVATE, Action.SUSPEND),
    TenantStatus.ARCHIVED: (Action.ACTIVATE, Action.ARCHIVE),
    TenantStatus.DELETED: (Action.DELETE,),
}


# --- create / get ------------------------------------------------------------------------------


async def test_create_and_get(store: PostgresStore, actor: Actor, unique: str) -> None:
    created = await store.create_tenant(
        actor, slug=f"acme-{unique}", name="Acme", plan="", region="eu-west", settings={"theme": {"color": "blue"}}
    )
    assert (created.slug, created.status, created.plan, created.region, created.revision) == (
        f"acme-{unique}",
        TenantStatus.DRAFT,
        DEFAULT_PLAN,
        "eu-west",
        1,
    )
    assert created.settings == {"theme": {"color": "blue"}}
    assert isinstance(created.created_at, float) and created.created_at == created.updated_at
    assert await store.get_tenant(created.id) == created
    # One spelling per tenant (the caches key it): every other spelling Postgres would
    # accept is no tenant at all, on every read and write of the store.
    hexdigits = created.id.replace("-", "")
    for spelling in (created.id.upper(), hexdigits, "{" + created.id + "}", f"urn:uuid:{created.id}"):
        with pytest.raises(TenantNotFound):
            await store.get_tenant(spelling)
        assert await store.load_tenant(spelling) is None
        with pytest.raises(TenantNotFound):
            await store.add_member(actor, spelling, SubjectRef("user", "x"))


async def test_create_rejects_a_taken_slug_a_bad_slug_and_an_unknown_plan(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, unique: str
) -> None:
    await store.create_tenant(actor, slug=f"taken-{unique}", name="A", plan="", region="", settings={})
    with pytest.raises(AlreadyExists):
        await store.create_tenant(actor, slug=f"taken-{unique}", name="B", plan="", region="", settings={})
    with pytest.raises(InvalidArgument) as raised:
        await store.create_tenant(actor, slug=f"Bad_{unique}", name="B", plan="", region="", settings={})
    assert raised.value.violations[0].field == "slug"
    with pytest.raises(InvalidArgument) as raised:
        await store.create_tenant(
            actor, slug=f"other-{unique}", name="B", plan=f"nope-{unique}", region="", settings={}
        )
    assert raised.value.violations[0].field == "plan"
    assert await superuser.fetchval("SELECT count(*) FROM tenants WHERE slug LIKE $1", f"%{unique}") == 1


async def test_unknown_tenants_are_not_found(store: PostgresStore) -> None:
    for missing in ("00000000-0000-0000-0000-000000000000", "acme", "", "'; DROP TABLE tenants; --"):
        with pytest.raises(TenantNotFound):
            await store.get_tenant(missing)
        with pytest.raises(TenantNotFound):
            await store.list_roles(missing)
        with pytest.raises(TenantNotFound):
            await store.list_members(missing, page_size=10, page_token="")
        with pytest.raises(TenantNotFound):
            await store.list_role_assignments(missing, subject=None, page_size=10, page_token="")


async def test_update_tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory, unique: str) -> None:
    tenant = await make_tenant()
    await store.upsert_plan(actor, Plan(name=f"pro-{unique}"))
    updated = await store.update_tenant(
        actor, tenant.id, expected_revision=1, name="New name", plan=f"pro-{unique}", region=None
    )
    assert (updated.name, updated.plan, updated.region, updated.revision) == ("New name", f"pro-{unique}", "eu", 2)
    with pytest.raises(InvalidArgument):
        await store.update_tenant(actor, tenant.id, expected_revision=0, name=None, plan="nope", region=None)
    assert (await store.get_tenant(tenant.id)).revision == 2


# --- lifecycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(TenantStatus))
@pytest.mark.parametrize("action", list(Action))
async def test_every_transition_follows_the_table(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, state: TenantStatus, action: Action
) -> None:
    tenant = await make_tenant()
    for step in PATH_TO[state]:
        tenant = await store.transition_tenant(
            actor, tenant.id, step, reason="setup", expected_revision=0, confirm=True
        )
    assert tenant.status is state
    allowed = (state, action) in TRANSITIONS
    if state is TenantStatus.DELETED:
        return  # covered by test_a_deleted_tenant_is_not_writable
    if not allowed:
        with pytest.raises(IllegalTransition):
            await store.transition_tenant(actor, tenant.id, action, reason="", expected_revision=0, confirm=True)
        return
    _, target = TRANSITIONS[(state, action)]
    if action is Action.DELETE:
        with pytest.raises(ConfirmationRequired):
            await store.transition_tenant(actor, tenant.id, action, reason="", expected_revision=0, confirm=False)
    after = await store.transition_tenant(
        actor, tenant.id, action, reason=f"because {action.value}", expected_revision=tenant.revision, confirm=True
    )
    assert (after.status, after.revision) == (target, tenant.revision + 1)
    assert (after.status_reason, after.status_changed_by) == (f"because {action.value}", actor.id)
    assert after.status_changed_at is not None and after.status_changed_at >= (tenant.status_changed_at or 0)


async def test_a_refused_transition_writes_nothing(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    before = await written(superuser, tenant.id)
    with pytest.raises(ConfirmationRequired):
        await store.transition_tenant(actor, tenant.id, Action.DELETE, reason="", expected_revision=0, confirm=False)
    with pytest.raises(IllegalTransition):
        await store.transition_tenant(actor, tenant.id, Action.SUSPEND, reason="", expected_revision=0, confirm=False)
    assert await written(superuser, tenant.id) == before
    assert (await store.get_tenant(tenant.id)).status is TenantStatus.DRAFT


# --- config ------------------------------------------------------------------------------------


async def test_patch_tenant_config(store: PostgresStore, actor: Actor, unique: str) -> None:
    tenant = await store.create_tenant(
        actor,
        slug=f"cfg-{unique}",
        name="Cfg",
        plan="",
        region="",
        settings={"theme": {"color": "blue", "font": "serif"}, "locale": "de", "tags": [1, 2]},
    )
    patched = await store.patch_tenant_config(
        actor,
        tenant.id,
        ConfigPatch(
            settings_patch={"theme": {"font": None, "size": 12}, "locale": None, "tags": [3]},
            set_flags={"reports": True, "beta": False},
            set_quotas={"seats": 10},
        ),
        expected_revision=1,
    )
    assert patched.settings == {"theme": {"color": "blue", "size": 12}, "tags": [3]}
    assert patched.flag_overrides == {"reports": True, "beta": False}
    assert patched.quota_overrides == {"seats": 10}

    cleared = await store.patch_tenant_config(
        actor,
        tenant.id,
        ConfigPatch(clear_flags=["beta", "never-set"], clear_quotas=["seats"], set_quotas={"projects": 3}),
        expected_revision=2,
    )
    assert cleared.settings == patched.settings  # no settings patch: untouched
    assert cleared.flag_overrides == {"reports": True}
    assert cleared.quota_overrides == {"projects": 3}
    assert cleared.revision == 3


# --- plans -------------------------------------------------------------------------------------


async def test_upsert_plan_round_trips(store: PostgresStore, actor: Actor, unique: str) -> None:
    plan = Plan(
        name=f"team-{unique}",
        features={"reports": PlanFeature(True, ("report.*",)), "sso": PlanFeature(False)},
        quotas={"seats": 25},
        rate_limits={"check": 1000},
    )
    stored, affected = await store.upsert_plan(actor, plan)
    assert (stored, affected) == (plan, [])
    assert plan in await store.list_plans()
    changed = Plan(name=plan.name, features={"sso": PlanFeature(True, ("sso.*",))})
    assert await store.upsert_plan(actor, changed) == (changed, [])
    assert [p for p in await store.list_plans() if p.name == plan.name] == [changed]


async def test_plan_change_fans_out_to_every_tenant_on_the_plan_deleted_ones_too(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, make_tenant: TenantFactory, unique: str
) -> None:
    plan = f"fan-{unique}"
    await store.upsert_plan(actor, Plan(name=plan))
    on_plan = [await make_tenant(f"on{i}", plan=plan) for i in range(3)]
    deleted = await make_tenant("gone", plan=plan)
    deleted = await store.transition_tenant(
        actor, deleted.id, Action.DELETE, reason="", expected_revision=0, confirm=True
    )
    elsewhere = await make_tenant("elsewhere")
    audit_before = await superuser.fetchval("SELECT count(*) FROM audit_log WHERE target = $1", f"plan/{plan}")

    _, affected = await store.upsert_plan(
        actor, Plan(name=plan, features={"reports": PlanFeature(True, ("report.*",))})
    )

    # A deleted tenant's config is still served: its effective flags changed, so must its
    # revision (one revision, one config; found by the two-tenant simulation).
    assert sorted(affected) == sorted((t.id, t.revision + 1) for t in [*on_plan, deleted])
    for tenant in on_plan:
        seen = await written(superuser, tenant.id)
        assert seen.revision == tenant.revision + 1
        assert [(e["revision"], e["kind"], e["subject"]) for e in seen.outbox[-1:]] == [
            (tenant.revision + 1, "plan", None)
        ]
        snapshot = await store.load_tenant(tenant.id)
        assert snapshot is not None and snapshot.plan.features == {"reports": PlanFeature(True, ("report.*",))}
    assert (await written(superuser, deleted.id)).revision == deleted.revision + 1
    assert (await written(superuser, elsewhere.id)).revision == elsewhere.revision
    plan_audit = await superuser.fetch("SELECT tenant_id, actor FROM audit_log WHERE target = $1", f"plan/{plan}")
    assert len(plan_audit) == audit_before + 1
    assert (plan_audit[-1]["tenant_id"], plan_audit[-1]["actor"]) == (None, actor.id)


# --- listings ----------------------------------------------------------------------------------


async def test_list_tenants_pages_through_a_filter(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, unique: str
) -> None:
    region = f"region-{unique}"
    tenants = [await make_tenant(f"l{i}", region=region) for i in range(5)]
    await store.transition_tenant(actor, tenants[0].id, Action.ACTIVATE, reason="", expected_revision=0, confirm=False)

    slugs: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_tenants(page_size=2, page_token=token, status=None, plan="", region=region)
        slugs += [t.slug for t in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert slugs == sorted(t.slug for t in tenants)
    assert pages == 3

    active = await store.list_tenants(page_size=10, page_token="", status=TenantStatus.ACTIVE, plan="", region=region)
    assert [t.id for t in active.items] == [tenants[0].id]
    on_default = await store.list_tenants(page_size=10, page_token="", status=None, plan=DEFAULT_PLAN, region=region)
    assert len(on_default.items) == 5
    nothing = await store.list_tenants(page_size=10, page_token="", status=None, plan="nope", region=region)
    assert nothing.items == [] and nothing.next_page_token == ""


async def test_list_members_and_assignments_page(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    subjects = [SubjectRef("user", f"u{i}") for i in range(5)] + [SubjectRef("service", "billing")]
    for subject in subjects:
        await store.add_member(actor, tenant.id, subject)
        await store.assign_role(actor, tenant.id, subject, role="viewer", scope="")
    await store.assign_role(actor, tenant.id, subjects[0], role="admin", scope="emea")

    members = []
    token = ""
    while True:
        page = await store.list_members(tenant.id, page_size=4, page_token=token)
        members += [m.subject for m in page.items]
        if not (token := page.next_page_token):
            break
    assert members == sorted(subjects, key=lambda s: (s.type, s.id))

    first = await store.list_role_assignments(tenant.id, subject=None, page_size=5, page_token="")
    rest = await store.list_role_assignments(tenant.id, subject=None, page_size=5, page_token=first.next_page_token)
    assert len(first.items) + len(rest.items) == 7 and rest.next_page_token == ""
    mine = await store.list_role_assignments(tenant.id, subject=subjects[0], page_size=10, page_token="")
    assert [(a.role, a.scope) for a in mine.items] == [("admin", "emea"), ("viewer", "")]


async def test_audit_events_list_newest_first_with_filters(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    await store.add_member(actor, tenant.id, SubjectRef("user", "a"))
    await store.add_member(actor, tenant.id, SubjectRef("user", "b"))
    await store.record_audit(
        actor, tenant_id=tenant.id, action="role.assign", target="x", outcome="denied", reason="escalation"
    )

    page = await store.list_audit_events(
        tenant_id=tenant.id, actor="", action="", since=None, until=None, page_size=2, page_token=""
    )
    assert [e.action for e in page.items] == ["role.assign", "member.add"]
    assert (page.items[0].outcome, page.items[0].reason) == ("denied", "escalation")
    rest = await store.list_audit_events(
        tenant_id=tenant.id, actor="", action="", since=None, until=None, page_size=2, page_token=page.next_page_token
    )
    assert [e.action for e in rest.items] == ["member.add", "tenant.create"]

    adds = await store.list_audit_events(
        tenant_id=tenant.id, actor=actor.id, action="member.add", since=None, until=None, page_size=10, page_token=""
    )
    assert [e.target for e in adds.items] == ["member/user/b", "member/user/a"]
    window = await store.list_audit_events(
        tenant_id=tenant.id,
        actor="",
        action="",
        since=page.items[1].time,
        until=page.items[0].time,
        page_size=10,
        page_token="",
    )
    assert [e.action for e in window.items] == ["member.add"]
    everywhere = await store.list_audit_events(
        tenant_id="", actor=actor.id, action="", since=None, until=None, page_size=10, page_token=""
    )
    assert len(everywhere.items) == 4


async def test_record_audit_keeps_a_malformed_tenant_id_as_platform_wide(store: PostgresStore, actor: Actor) -> None:
    await store.record_audit(
        actor, tenant_id="not-a-uuid", action="tenant.get", target="t", outcome="error", reason="r"
    )
    await store.record_audit(actor, tenant_id=None, action="plan.upsert", target="p", outcome="denied", reason="r")
    page = await store.list_audit_events(
        tenant_id="", actor=actor.id, action="", since=None, until=None, page_size=10, page_token=""
    )
    assert [(e.tenant_id, e.action) for e in page.items] == [("", "plan.upsert"), ("", "tenant.get")]


@pytest.mark.parametrize("token", ["garbage", "WzFd", "eyJhIjoxfQ", "W10", "WyJhIiwxXQ"])
async def test_a_foreign_page_token_is_invalid_argument(
    store: PostgresStore, make_tenant: TenantFactory, token: str
) -> None:
    tenant = await make_tenant()
    with pytest.raises(InvalidArgument) as raised:
        await store.list_members(tenant.id, page_size=10, page_token=token)
    assert raised.value.violations[0].field == "page_token"


async def test_settings_are_capped_in_all_not_only_per_patch(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> None:
    """Found by the breaker session: 72 patches of 60 KB made a 4.3 MB config that no
    default client could read any more (GetTenantConfig: RESOURCE_EXHAUSTED)."""
    from gatehouse.errors import SettingsTooLarge
    from gatehouse.store.tenants import MAX_TENANT_SETTINGS_BYTES

    tenant = await make_tenant("big")
    chunk = "x" * 60_000
    revision = tenant.revision
    refused = None
    for i in range(10):
        try:
            record = await store.patch_tenant_config(
                actor, tenant.id, ConfigPatch(settings_patch={f"k{i}": chunk}), expected_revision=0
            )
            revision = record.revision
        except SettingsTooLarge as error:
            refused = error
            break
    assert refused is not None and refused.metadata["limit"] == str(MAX_TENANT_SETTINGS_BYTES)
    after = await store.get_tenant(tenant.id)
    assert after.revision == revision  # the refused patch changed nothing
    assert len(after.settings) == i
    shrunk = await store.patch_tenant_config(actor, tenant.id, ConfigPatch(settings_patch={"k0": None}), expected_revision=0)
    assert "k0" not in shrunk.settings
