"""The steps of an apply, printed as a plan a reviewer reads before it runs (the way
`terraform plan` and `kubectl diff` do): one line per call, `+` adds, `~` changes,
`-` removes, each changed field indented under it as `old -> new`, then a count.

    + plan pro
        features.reports: {"default_enabled": true, "gates": ["report.*"]}
    ~ tenant acme: activate (draft -> active)
    ~ tenant acme config
        settings.theme: "light" -> "dark"
        - flag_overrides.reports (was false)
    + grant acme user:bob: billing-admin at emea/de
    ~ grant acme user:carol: viewer at us
        condition: "" -> "resource.attributes.owner == subject.id"
        expires_at: never -> 2027-01-31T18:00:00Z

    Plan: 2 to add, 3 to change, 0 to remove.

A grant's condition and expiry are shown under it when it has them (`+`, `-`) or when
they change (`~`).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from gatehouse.declarative.diff import (
    AddMember,
    AssignRole,
    ChangeGrant,
    CreateRole,
    CreateTenant,
    DeleteRole,
    PatchConfig,
    RemoveMember,
    RevokeRole,
    Step,
    Transition,
    UpdateRole,
    UpdateTenant,
    UpsertPlan,
    json_equal,
)
from gatehouse.declarative.model import FeatureSpec, Grant, PlanSpec, rfc3339, subject_text
from gatehouse.display_text import escape_unprintable
from gatehouse.engine.lifecycle import Action

NO_CHANGES = "No changes: the live state matches the file."
INDENT = "    "


def symbol(step: Step) -> str:
    """`+`, `~` or `-`: what the step does to the live state."""
    if isinstance(step, (CreateTenant, CreateRole, AddMember, AssignRole)):
        return "+"
    if isinstance(step, UpsertPlan):
        return "+" if step.before is None else "~"
    if isinstance(step, (DeleteRole, RemoveMember, RevokeRole)):
        return "-"
    if isinstance(step, Transition) and step.action is Action.DELETE:
        return "-"
    return "~"


def render(steps: Iterable[Step]) -> str:
    """The plan as text (ends with a newline): every step, then the counts."""
    lines: list[str] = []
    counts = {"+": 0, "~": 0, "-": 0}
    for step in steps:
        mark = symbol(step)
        counts[mark] += 1
        head, details = describe(step)
        # Each line escaped whole: a condition, a setting's key or value may hold a newline
        # (a forged line), a C1 control or a bidi override that JSON leaves as it is.
        lines.append(f"{mark} {escape_unprintable(head)}")
        lines.extend(f"{INDENT}{escape_unprintable(line)}" for line in details)
    if not lines:
        return NO_CHANGES + "\n"
    lines.append("")
    lines.append(f"Plan: {counts['+']} to add, {counts['~']} to change, {counts['-']} to remove.")
    return "\n".join(lines) + "\n"


def describe(step: Step) -> tuple[str, list[str]]:
    """(the step's line, the lines under it)."""
    if isinstance(step, UpsertPlan):
        return f"plan {step.plan.name}", _plan_lines(step.before, step.plan)
    if isinstance(step, CreateTenant):
        t = step.tenant
        fields = {"name": t.name, "plan": t.plan, "region": t.region}
        details = [f"{k}: {_value(v)}" for k, v in fields.items() if v]
        details += _changes("settings", {}, dict(t.settings or {}))
        return f"tenant {t.slug}", details
    if isinstance(step, Transition):
        return f"tenant {step.slug}: {step.action.value} ({step.before.value} -> {step.after.value})", []
    if isinstance(step, UpdateTenant):
        before = step.before
        details = [
            f"{k}: {_value(getattr(before, k) if before else None)} -> {_value(getattr(step, k))}"
            for k in ("name", "plan", "region")
            if getattr(step, k) is not None
        ]
        return f"tenant {step.slug}", details
    if isinstance(step, PatchConfig):
        return f"tenant {step.slug} config", _config_lines(step)
    if isinstance(step, CreateRole):
        details = [f"permissions: {_value(list(step.role.permissions))}"]
        if step.role.description:
            details.append(f"description: {_value(step.role.description)}")
        return f"role {step.slug}/{step.role.name}", details
    if isinstance(step, UpdateRole):
        details = []
        if step.before.permissions != step.role.permissions:
            details.append(f"permissions: {_value(list(step.before.permissions))} -> {_value(list(step.role.permissions))}")
        if step.before.description != step.role.description:
            details.append(f"description: {_value(step.before.description)} -> {_value(step.role.description)}")
        return f"role {step.slug}/{step.role.name}", details
    if isinstance(step, DeleteRole):
        return f"role {step.slug}/{step.name}", []
    if isinstance(step, AddMember):
        return f"member {step.slug} {subject_text(step.subject)}", []
    if isinstance(step, RemoveMember):
        return f"member {step.slug} {subject_text(step.subject)} (with its role grants)", []
    head = f"grant {step.slug} {subject_text(step.subject)}: {_grant(step.grant)}"
    if isinstance(step, ChangeGrant):
        return head, _term_changes(step.before, step.grant)
    return head, _terms(step.grant)


def _grant(grant: Grant) -> str:
    return f"{grant.role} at {grant.scope}" if grant.scope else f"{grant.role} at the tenant root"


def _terms(grant: Grant) -> list[str]:
    """A grant's condition and expiry, those it has."""
    lines = [f"condition: {_value(grant.condition)}"] if grant.condition else []
    if grant.expires_at is not None:
        lines.append(f"expires_at: {rfc3339(grant.expires_at)}")
    return lines


def _term_changes(before: Grant, after: Grant) -> list[str]:
    """`condition: old -> new`, `expires_at: old -> new` (`never`: for good), those that change."""
    lines = []
    if before.condition != after.condition:
        lines.append(f"condition: {_value(before.condition)} -> {_value(after.condition)}")
    if before.expires_at != after.expires_at:
        old, new = (rfc3339(t) if t is not None else "never" for t in (before.expires_at, after.expires_at))
        lines.append(f"expires_at: {old} -> {new}")
    return lines


def _plan_lines(before: PlanSpec | None, after: PlanSpec) -> list[str]:
    def features(plan: PlanSpec | None) -> dict[str, Any]:
        return {name: _feature(f) for name, f in plan.features.items()} if plan else {}

    return (
        _changes("features", features(before), features(after))
        + _changes("quotas", dict(before.quotas) if before else {}, dict(after.quotas))
        + _changes("rate_limits", dict(before.rate_limits) if before else {}, dict(after.rate_limits))
    )


def _feature(feature: FeatureSpec) -> dict[str, Any]:
    return {"default_enabled": feature.default_enabled, "gates": list(feature.gates)}


def _config_lines(step: PatchConfig) -> list[str]:
    before = step.before
    lines: list[str] = []
    if step.settings_patch:
        lines += _patch_lines("settings", dict(before.settings or {}) if before else {}, step.settings_patch)
    flags = dict(before.flag_overrides or {}) if before else {}
    quotas = dict(before.quota_overrides or {}) if before else {}
    lines += _changes("flag_overrides", flags, {**{k: v for k, v in flags.items() if k not in step.clear_flags}, **step.set_flags})
    lines += _changes("quota_overrides", quotas, {**{k: v for k, v in quotas.items() if k not in step.clear_quotas}, **step.set_quotas})
    return lines


def _patch_lines(path: str, before: Mapping[str, Any], patch: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in sorted(patch):
        value, inner = patch[key], f"{path}.{key}"
        if value is None:
            lines.append(f"- {inner} (was {_value(before.get(key))})")
        elif key not in before:
            lines.append(f"+ {inner}: {_value(value)}")
        elif isinstance(value, Mapping) and isinstance(before[key], Mapping):
            lines += _patch_lines(inner, before[key], value)
        else:
            lines.append(f"{inner}: {_value(before[key])} -> {_value(value)}")
    return lines


def _changes(path: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Key by key: `+ path.k: v`, `path.k: old -> new`, `- path.k (was v)`."""
    lines: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        inner = f"{path}.{key}"
        if key not in after:
            lines.append(f"- {inner} (was {_value(before[key])})")
        elif key not in before:
            lines.append(f"+ {inner}: {_value(after[key])}")
        elif not json_equal(before[key], after[key]):
            lines.append(f"{inner}: {_value(before[key])} -> {_value(after[key])}")
    return lines


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
