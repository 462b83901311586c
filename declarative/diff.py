"""From live state to the state a file asks for: the ordered steps (one admin call each),
and the same steps applied to a `State` in memory (what the server will end up holding).

    steps = diff(live, desired, prune=False)   # [] when live already matches
    apply_steps(live, steps)                   # == desired on every managed field

Rules:
- A field the file leaves out (None) is not managed, with or without `prune` (`roles: []`
  manages the roles as none; no `roles:` leaves them be). Without `prune`, nothing absent from
  the file is removed: settings keys, flag and quota overrides, plan features, quotas and
  rate limits, custom roles, members and role grants the file does not name stay as they
  are; the file's values are laid over them. With `prune`, each field the file sets ends
  up exactly as written: roles and members of its tenants that it does not name are
  removed. Tenants and plans are never removed (there is no plan deletion, and a tenant
  leaves through `status: deleted`, which needs no prune).
- Order, per call the server checks: plans first (a tenant may move onto a new plan);
  per tenant: create, lifecycle (unless the goal is `deleted`), name/plan/region, config,
  roles created or changed, members added, roles granted, then what goes away: grants
  revoked, members removed, roles deleted. Granting before revoking keeps the last-owner
  guard satisfied when ownership moves; deleting roles last lets their grants go first.
- A tenant whose goal is `deleted` gets only its lifecycle steps (archive, delete).
- A grant is identified by (subject, role, scope), as the server's assignments are. One the
  file names with another condition or expiry than the live one is changed (ChangeGrant:
  one AssignRole with `on_existing` REPLACE, which gives the held grant its new terms in
  one write, or refused, leaves it as it was); without prune too, since the file names
  that grant. Changes run after the new grants and before the revokes. A grant whose
  expiry is not ahead of `now` is refused (AssignRole would refuse it): the file must drop
  it or move its expiry.
"""

from __future__ import annotations

import datetime
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Union

from gatehouse.declarative.model import (
    Grant,
    MemberSpec,
    PlanSpec,
    RoleSpec,
    State,
    TenantSpec,
    by_key,
    rfc3339,
    sorted_grants,
    subject_text,
)
from gatehouse.engine.lifecycle import TRANSITIONS, Action
from gatehouse.engine.model import TenantStatus
from gatehouse.merge_patch import merge_patch

# The roles every tenant is seeded with (DESIGN "Roles"): fixed, never in the file.
SYSTEM_ROLES = frozenset({"owner", "admin", "member", "viewer"})


class PlanError(ValueError):
    """The file asks for something no sequence of admin calls can reach; `where` is file:line."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


# --- steps: one admin call each ---


@dataclass(frozen=True, slots=True)
class UpsertPlan:
    plan: PlanSpec
    before: PlanSpec | None = None


@dataclass(frozen=True, slots=True)
class CreateTenant:
    """CreateTenant: slug, name, plan, region, settings; the tenant starts as draft."""

    tenant: TenantSpec


@dataclass(frozen=True, slots=True)
class Transition:
    slug: str
    action: Action
    before: TenantStatus
    after: TenantStatus


@dataclass(frozen=True, slots=True)
class UpdateTenant:
    """UpdateTenant: only the fields that change (None = unchanged)."""

    slug: str
    name: str | None = None
    plan: str | None = None
    region: str | None = None
    before: TenantSpec | None = None


@dataclass(frozen=True, slots=True)
class PatchConfig:
    """PatchTenantConfig: a settings merge-patch (RFC 7396) and override sets and clears."""

    slug: str
    settings_patch: Mapping[str, Any] | None = None
    set_flags: Mapping[str, bool] = field(default_factory=dict)
    clear_flags: tuple[str, ...] = ()
    set_quotas: Mapping[str, int] = field(default_factory=dict)
    clear_quotas: tuple[str, ...] = ()
    before: TenantSpec | None = None


@dataclass(frozen=True, slots=True)
class CreateRole:
    slug: str
    role: RoleSpec


@dataclass(frozen=True, slots=True)
class UpdateRole:
    slug: str
    role: RoleSpec
    before: RoleSpec


@dataclass(frozen=True, slots=True)
class DeleteRole:
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class AddMember:
    slug: str
    subject: str


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """RemoveMember; the member's role grants go with it."""

    slug: str
    subject: str


@dataclass(frozen=True, slots=True)
class AssignRole:
    slug: str
    subject: str
    grant: Grant


@dataclass(frozen=True, slots=True)
class RevokeRole:
    slug: str
    subject: str
    grant: Grant


@dataclass(frozen=True, slots=True)
class ChangeGrant:
    """The grant `before` (live) given other terms (`grant`: same role and scope, another
    condition or expiry): one AssignRole with the new terms and `on_existing` REPLACE
    (one write: the grant is never missing in between)."""

    slug: str
    subject: str
    grant: Grant
    before: Grant


Step = Union[
    UpsertPlan, CreateTenant, Transition, UpdateTenant, PatchConfig, CreateRole, UpdateRole, DeleteRole,
    AddMember, RemoveMember, AssignRole, RevokeRole, ChangeGrant,
]  # fmt: skip


# --- the difference ---


def diff(
    live: State,
    desired: State,
    *,
    prune: bool = False,
    system_roles: Iterable[str] = SYSTEM_ROLES,
    now: datetime.datetime | None = None,
) -> list[Step]:
    """The steps that take `live` to `desired`, in the order they must run; PlanError when
    the file asks for what cannot be reached (a system role in the file, a grant of an
    undefined role, a lifecycle move the table has no path for, a new tenant without a name,
    and, given `now` (an aware datetime: the time of the apply), a grant that expires at
    or before it)."""
    fixed = frozenset(system_roles)
    if now is not None:
        _refuse_expired(desired, now)
    steps: list[Step] = []
    for name in sorted(desired.plans):
        want, have = desired.plans[name], live.plans.get(name)
        target = want if prune or have is None else _overlay_plan(have, want)
        if have is None or target != have:
            steps.append(UpsertPlan(replace(target, where=want.where), have))
    for slug in sorted(desired.tenants):
        steps.extend(_tenant_steps(live.tenants.get(slug), desired.tenants[slug], prune=prune, fixed=fixed))
    return steps


def _refuse_expired(desired: State, now: datetime.datetime) -> None:
    """PlanError for the first grant (in file order) whose expiry is not ahead of `now`:
    AssignRole refuses it, and a grant that has expired grants nothing to keep."""
    for slug in sorted(desired.tenants):
        want = desired.tenants[slug]
        if want.status is TenantStatus.DELETED:
            continue
        for member in sorted((want.members or {}).values(), key=lambda m: m.subject):
            for grant in sorted_grants(member.grants):
                if grant.expires_at is not None and grant.expires_at <= now:
                    raise PlanError(
                        grant.where or member.where,
                        f"tenant {slug}: {subject_text(member.subject)}: {_grant_text(grant)}: expires_at "
                        f"{rfc3339(grant.expires_at)} is not ahead of now ({rfc3339(now)}); drop the grant "
                        "or give it a later expiry",
                    )


def _grant_text(grant: Grant) -> str:
    return f"{grant.role} at {grant.scope}" if grant.scope else f"{grant.role} at the tenant root"


def _overlay_plan(have: PlanSpec, want: PlanSpec) -> PlanSpec:
    return replace(
        want,
        features={**have.features, **want.features},
        quotas={**have.quotas, **want.quotas},
        rate_limits={**have.rate_limits, **want.rate_limits},
    )


def _tenant_steps(have: TenantSpec | None, want: TenantSpec, *, prune: bool, fixed: frozenset[str]) -> list[Step]:
    slug = want.slug
    for role in (want.roles or {}).values():
        if role.name in fixed:
            raise PlanError(role.where, f"tenant {slug}: {role.name} is a system role and fixed; leave it out of roles")
    steps: list[Step] = []
    if have is None:
        if want.status is TenantStatus.DELETED:
            return []  # nothing to delete
        if want.name is None:
            raise PlanError(want.where, f"tenant {slug}: name is required to create the tenant")
        steps.append(CreateTenant(want))
        have = TenantSpec(
            slug=slug, name=want.name, plan=want.plan or "", region=want.region or "", status=TenantStatus.DRAFT,
            settings=want.settings or {}, flag_overrides={}, quota_overrides={}, roles={}, members={},
        )  # fmt: skip
        created = True
    else:
        created = False
    # What the file leaves out (None) is not managed: it is wanted as it is live.
    want = replace(
        want,
        flag_overrides=have.flag_overrides if want.flag_overrides is None else want.flag_overrides,
        quota_overrides=have.quota_overrides if want.quota_overrides is None else want.quota_overrides,
        roles=have.roles if want.roles is None else want.roles,
        members=have.members if want.members is None else want.members,
    )
    status = have.status or TenantStatus.DRAFT
    if want.status is TenantStatus.DELETED:
        return steps + [Transition(slug, a, b, c) for a, b, c in _path(status, TenantStatus.DELETED, want)]
    steps.extend(
        Transition(slug, a, b, c) for a, b, c in (_path(status, want.status, want) if want.status else [])
    )
    if not created:
        changed = {
            name: getattr(want, name)
            for name in ("name", "plan", "region")
            if getattr(want, name) is not None and getattr(want, name) != getattr(have, name)
        }
        if changed:
            steps.append(UpdateTenant(slug, before=have, **changed))
    config = _config_patch(have, want, prune=prune, created=created)
    if config is not None:
        steps.append(config)
    steps.extend(_role_steps(have, want, prune=prune, fixed=fixed))
    steps.extend(_member_steps(have, want, prune=prune))
    return steps


def _path(start: TenantStatus, goal: TenantStatus, want: TenantSpec) -> list[tuple[Action, TenantStatus, TenantStatus]]:
    """The shortest walk through the lifecycle table from `start` to `goal`."""
    if start is goal:
        return []
    previous: dict[TenantStatus, tuple[Action, TenantStatus]] = {}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for (source, action), (_guard, target) in sorted(TRANSITIONS.items(), key=lambda item: item[0][1].value):
            if source is state and target not in previous and target is not start:
                previous[target] = (action, state)
                queue.append(target)
    if goal not in previous:
        raise PlanError(want.where, f"tenant {want.slug}: no lifecycle path from {start.value} to {goal.value}")
    walk: list[tuple[Action, TenantStatus, TenantStatus]] = []
    state = goal
    while state is not start:
        action, source = previous[state]
        walk.append((action, source, state))
        state = source
    return walk[::-1]


def _config_patch(have: TenantSpec, want: TenantSpec, *, prune: bool, created: bool) -> PatchConfig | None:
    settings_patch = None
    if want.settings is not None and not created:
        live = dict(have.settings or {})
        target = dict(want.settings) if prune else merge(live, want.settings)
        try:
            settings_patch = merge_patch_between(live, target) or None
        except ValueError as error:
            raise PlanError(want.where, f"tenant {want.slug}: {error}") from None
    have_flags, want_flags = have.flag_overrides or {}, want.flag_overrides or {}
    have_quotas, want_quotas = have.quota_overrides or {}, want.quota_overrides or {}
    set_flags = {k: v for k, v in want_flags.items() if not json_equal(have_flags.get(k), v)}
    set_quotas = {k: v for k, v in want_quotas.items() if not json_equal(have_quotas.get(k), v)}
    clear_flags = tuple(sorted(have_flags.keys() - want_flags.keys())) if prune else ()
    clear_quotas = tuple(sorted(have_quotas.keys() - want_quotas.keys())) if prune else ()
    if not (settings_patch or set_flags or set_quotas or clear_flags or clear_quotas):
        return None
    return PatchConfig(want.slug, settings_patch, set_flags, clear_flags, set_quotas, clear_quotas, before=have)


def _role_steps(have: TenantSpec, want: TenantSpec, *, prune: bool, fixed: frozenset[str]) -> list[Step]:
    slug = want.slug
    steps: list[Step] = []
    have_roles, want_roles = have.roles or {}, want.roles or {}
    for name in sorted(want_roles):
        role, live = want_roles[name], have_roles.get(name)
        if live is None:
            steps.append(CreateRole(slug, replace(role, description=role.description or "")))
            continue
        target = role if role.description is not None else replace(role, description=live.description)
        if target != live:
            steps.append(UpdateRole(slug, target, live))
    # Every grant the file asks for must name a role that will exist.
    kept = set(have_roles) if not prune else set()
    defined = fixed | set(want_roles) | kept
    for member in (want.members or {}).values():
        for grant in sorted_grants(member.grants):
            if grant.role not in defined:
                raise PlanError(
                    member.where,
                    f"tenant {slug}: {subject_text(member.subject)} is granted {grant.role}, which is neither a system role "
                    "nor defined in roles" + ("" if prune else " nor live"),
                )
    return steps


def _member_steps(have: TenantSpec, want: TenantSpec, *, prune: bool) -> list[Step]:
    slug = want.slug
    adds: list[Step] = []
    grants: list[Step] = []
    changes: list[Step] = []
    revokes: list[Step] = []
    removals: list[Step] = []
    have_members, want_members = have.members or {}, want.members or {}
    for subject in sorted(want_members):
        live = have_members.get(subject)
        if live is None:
            adds.append(AddMember(slug, subject))
        held = by_key(live.grants if live is not None else ())
        wanted = by_key(want_members[subject].grants)
        for key, grant in wanted.items():
            if key not in held:
                grants.append(AssignRole(slug, subject, grant))
            elif grant != held[key]:
                changes.append(ChangeGrant(slug, subject, grant, held[key]))
        if prune:
            revokes.extend(RevokeRole(slug, subject, g) for key, g in held.items() if key not in wanted)
    if prune:
        removals.extend(RemoveMember(slug, s) for s in sorted(have_members.keys() - want_members.keys()))
        gone = (have.roles or {}).keys() - (want.roles or {}).keys()
        deletions: list[Step] = [DeleteRole(slug, name) for name in sorted(gone)]
    else:
        deletions = []
    return adds + grants + changes + revokes + removals + deletions


# --- settings as JSON ---


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: 3 == 3.0, but true != 1 (Python's == says otherwise)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_patch_between(source: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest RFC 7396 merge-patch turning `source` into `target` ({} = equal);
    ValueError for a null in `target` that `source` lacks (a merge-patch's null deletes)."""
    patch: dict[str, Any] = {key: None for key in source if key not in target}
    for key, value in target.items():
        if value is None and (key not in source or source[key] is not None):
            raise ValueError(f"settings.{key}: a null cannot be written through a merge-patch (it deletes the key)")
        if isinstance(value, Mapping) and isinstance(source.get(key), Mapping):
            inner = merge_patch_between(source[key], value)
            if inner:
                patch[key] = inner
        elif key not in source or not json_equal(source[key], value):
            if isinstance(value, Mapping):
                # Written whole, as a patch: its own nulls would delete, not store.
                merge_patch_between({}, value)
            patch[key] = value
    return patch


# --- the steps, applied in memory ---


def apply_steps(state: State, steps: Iterable[Step]) -> State:
    """What the server holds after `steps` run on `state` (ids aside: a new tenant's is None)."""
    plans = dict(state.plans)
    tenants = dict(state.tenants)
    for step in steps:
        if isinstance(step, UpsertPlan):
            plans[step.plan.name] = step.plan
            continue
        if isinstance(step, CreateTenant):
            t = step.tenant
            tenants[t.slug] = TenantSpec(
                slug=t.slug, name=t.name, plan=t.plan or "", region=t.region or "", status=TenantStatus.DRAFT,
                settings=dict(t.settings or {}), flag_overrides={}, quota_overrides={}, roles={}, members={},
            )  # fmt: skip
            continue
        tenant = tenants[step.slug]
        tenants[step.slug] = _apply_tenant_step(tenant, step)
    return State(plans=plans, tenants=tenants)


def _apply_tenant_step(t: TenantSpec, step: Step) -> TenantSpec:
    if isinstance(step, Transition):
        return replace(t, status=step.after)
    if isinstance(step, UpdateTenant):
        changed = {k: getattr(step, k) for k in ("name", "plan", "region") if getattr(step, k) is not None}
        return replace(t, **changed)
    if isinstance(step, PatchConfig):
        settings = merge_patch(t.settings or {}, step.settings_patch) if step.settings_patch else t.settings
        flags = {k: v for k, v in {**(t.flag_overrides or {}), **step.set_flags}.items() if k not in step.clear_flags}
        quotas = {k: v for k, v in {**(t.quota_overrides or {}), **step.set_quotas}.items() if k not in step.clear_quotas}
        return replace(t, settings=settings, flag_overrides=flags, quota_overrides=quotas)
    if isinstance(step, (CreateRole, UpdateRole)):
        return replace(t, roles={**(t.roles or {}), step.role.name: step.role})
    if isinstance(step, DeleteRole):
        return replace(t, roles={k: v for k, v in (t.roles or {}).items() if k != step.name})
    members = t.members or {}
    if isinstance(step, AddMember):
        return replace(t, members={**members, step.subject: MemberSpec(step.subject)})
    if isinstance(step, RemoveMember):
        return replace(t, members={k: v for k, v in members.items() if k != step.subject})
    if isinstance(step, (AssignRole, RevokeRole, ChangeGrant)):
        member = members[step.subject]
        held = by_key(member.grants)
        if isinstance(step, RevokeRole):
            held.pop(step.grant.key, None)
        else:
            held[step.grant.key] = step.grant
        return replace(t, members={**members, step.subject: replace(member, grants=frozenset(held.values()))})
    raise TypeError(f"not a tenant step: {step!r}")


def overlay(live: State, desired: State, *, prune: bool = False) -> State:
    """What applying `desired` must leave (ids aside): live, with the file laid over it;
    with `prune`, every field the file sets exactly as it sets it."""
    plans = dict(live.plans)
    for name, plan in desired.plans.items():
        plans[name] = _overlay_plan(plans[name], plan) if name in plans and not prune else plan
    tenants = dict(live.tenants)
    for slug, want in desired.tenants.items():
        have = tenants.get(slug) or TenantSpec(
            slug=slug, name=want.name, plan="", region="", status=TenantStatus.DRAFT, settings={},
            flag_overrides={}, quota_overrides={}, roles={}, members={},
        )  # fmt: skip
        members = {} if prune and want.members is not None else dict(have.members or {})
        for subject, member in (want.members or {}).items():
            held = by_key(members[subject].grants if subject in members else ())
            held.update(by_key(member.grants))  # a grant the file names has the file's terms
            members[subject] = MemberSpec(subject, frozenset(held.values()))
        live_roles = have.roles or {}
        roles = {} if prune and want.roles is not None else dict(live_roles)
        for name, role in (want.roles or {}).items():
            base = live_roles.get(name)
            description = role.description if role.description is not None else (base.description if base else "")
            roles[name] = replace(role, description=description)

        def laid(have_map: Mapping[str, Any] | None, want_map: Mapping[str, Any] | None) -> dict[str, Any]:
            if want_map is None:
                return dict(have_map or {})
            return dict(want_map) if prune else {**(have_map or {}), **want_map}

        settings = have.settings
        if want.settings is not None:
            settings = dict(want.settings) if prune else merge(have.settings or {}, want.settings)
        tenants[slug] = replace(
            have,
            name=want.name if want.name is not None else have.name,
            plan=want.plan if want.plan is not None else have.plan,
            region=want.region if want.region is not None else have.region,
            status=want.status if want.status is not None else have.status,
            settings=settings,
            flag_overrides=laid(have.flag_overrides, want.flag_overrides),
            quota_overrides=laid(have.quota_overrides, want.quota_overrides),
            roles=roles,
            members=members,
        )
    return State(plans=plans, tenants=tenants)
