"""`gatehouse apply` and `gatehouse export` as a subprocess against a real server (real
Postgres and Redis): the plan, --dry-run, --prune, file errors, refusals for a tenant key,
concurrent changes, idempotency (no audit row, no revision on a second apply) and the
export -> apply round trip."""

from __future__ import annotations

import argparse
import datetime
import io
import secrets
import textwrap
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gatehouse.declarative import schema
from gatehouse.server import declarative_cli
from gatehouse_client import Client, GatehouseError
from gatehouse_client.v1 import admin_pb2
from tests.declarative.conftest import Gatehouse


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def state_file(tmp_path: Path, slug: str, plan: str, *, extra: str = "", name: str = "state.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: gatehouse/v1
            kind: Plan
            name: {plan}
            features:
              reports: {{default_enabled: false, gates: ["report.*"]}}
            quotas: {{seats: 10}}
            ---
            apiVersion: gatehouse/v1
            kind: Tenant
            slug: {slug}
            name: Acme
            plan: {plan}
            region: eu
            status: active
            settings: {{theme: dark, limits: {{exports: 3}}}}
            flag_overrides: {{reports: true}}
            quota_overrides: {{seats: 25}}
            roles:
              - name: accountant
                permissions: ["invoice.*"]
                description: Books and invoices
            members:
              - subject: user:alice
                roles:
                  - role: owner
              - subject: user:bob
                roles:
                  - role: accountant
                    scope: emea/de
            """
        )
        + extra
    )
    return path


def tenant_of(client: Client, slug: str) -> Any:
    return client.admin.resolve_tenant(slug)


def writes(client: Client, tenant_id: str) -> int:
    """The tenant's audit rows of writes (reads are audited too: `*.get`, `*.list`)."""
    events = client.admin.list_audit_events(tenant_id=tenant_id, page_size=1000).events
    return sum(1 for e in events if not e.action.endswith((".get", ".list")))


def test_apply_creates_everything_then_a_second_apply_changes_nothing(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)

    first = gatehouse.cli("apply", "-f", str(path))
    assert first.returncode == 0, first.stderr
    assert f"+ plan {plan}\n" in first.stdout
    assert f"+ tenant {slug}\n" in first.stdout
    assert f"~ tenant {slug}: activate (draft -> active)" in first.stdout
    assert f"+ role {slug}/accountant" in first.stdout
    assert f"+ grant {slug} user:bob: accountant at emea/de" in first.stdout
    assert "Plan: " in first.stdout and "Apply complete:" in first.stdout

    tenant = tenant_of(operator, slug)
    assert tenant.name == "Acme" and tenant.plan == plan and tenant.region == "eu"
    assert dict(tenant.flag_overrides) == {"reports": True} and dict(tenant.quota_overrides) == {"seats": 25}
    assignments = operator.admin.list_role_assignments(tenant_id=tenant.id).assignments
    assert sorted((a.subject.id, a.role, a.scope) for a in assignments) == [
        ("alice", "owner", ""), ("bob", "accountant", "emea/de")
    ]
    audit = writes(operator, tenant.id)
    assert audit >= 8  # create, activate, config, role, 2 members, 2 grants

    second = gatehouse.cli("apply", "-f", str(path))
    assert second.returncode == 0, second.stderr
    assert second.stdout == "No changes: the live state matches the file.\n"
    assert tenant_of(operator, slug).revision == tenant.revision
    assert writes(operator, tenant.id) == audit


def test_a_change_is_planned_then_applied_then_no_change(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    assert gatehouse.cli("apply", "-f", str(path)).returncode == 0
    path.write_text(
        path.read_text()
        .replace("theme: dark", "theme: light")
        .replace("seats: 25", "seats: 30")
        .replace("status: active", "status: suspended")
        .replace('permissions: ["invoice.*"]', 'permissions: ["invoice.read", "invoice.list"]')
    )

    planned = gatehouse.cli("apply", "-f", str(path), "--dry-run")
    before = tenant_of(operator, slug)
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout == textwrap.dedent(
        f"""\
        ~ tenant {slug}: suspend (active -> suspended)
        ~ tenant {slug} config
            settings.theme: "dark" -> "light"
            quota_overrides.seats: 25 -> 30
        ~ role {slug}/accountant
            permissions: ["invoice.*"] -> ["invoice.list", "invoice.read"]

        Plan: 0 to add, 3 to change, 0 to remove.
        Dry run: nothing was written.
        """
    )

    applied = gatehouse.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    after = tenant_of(operator, slug)
    assert after.revision == before.revision + 3
    assert after.settings["theme"] == "light" and after.quota_overrides["seats"] == 30
    assert gatehouse.cli("apply", "-f", str(path)).stdout.startswith("No changes")


def test_dry_run_writes_nothing(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    result = gatehouse.cli("apply", "-f", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"+ tenant {slug}" in result.stdout and result.stdout.endswith("Dry run: nothing was written.\n")
    with pytest.raises(GatehouseError) as caught:
        tenant_of(operator, slug)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert plan not in {p.name for p in operator.admin.list_plans().plans}


def test_nothing_absent_from_the_file_is_removed_without_prune(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    assert gatehouse.cli("apply", "-f", str(path)).returncode == 0
    tenant = tenant_of(operator, slug)
    operator.admin.add_member(tenant_id=tenant.id, subject="user:carol")
    operator.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="viewer", scope="us")
    # (a request message: the client's keyword form cannot take a field called `name`)
    operator.admin.create_role(admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="auditor", permissions=["audit.read"]))
    operator.admin.patch_tenant_config(tenant_id=tenant.id, settings_patch={"extra": 1}, set_flag_overrides={"beta": True})

    kept = gatehouse.cli("apply", "-f", str(path))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("No changes")

    pruned = gatehouse.cli("apply", "-f", str(path), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    for line in (
        f"- grant {slug} user:alice: viewer at us",
        f"- member {slug} user:carol (with its role grants)",
        f"- role {slug}/auditor",
        "    - settings.extra (was 1)",
        "    - flag_overrides.beta (was true)",
    ):
        assert line in pruned.stdout
    after = tenant_of(operator, slug)
    assert "extra" not in after.settings and "beta" not in after.flag_overrides
    assert {m.subject.id for m in operator.admin.list_members(tenant_id=tenant.id).members} == {"alice", "bob"}
    assert gatehouse.cli("apply", "-f", str(path), "--prune").stdout.startswith("No changes")


def test_an_invalid_file_names_file_line_and_field_and_writes_nothing(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    path.write_text(path.read_text().replace("scope: emea/de", "scope: emea//de").replace("status: active", "status: live"))
    result = gatehouse.cli("apply", "-f", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:14: Tenant {slug}: status: must be one of draft, active, suspended, archived, deleted" in result.stderr
    assert f"{path}:29: Tenant {slug}: members[1].roles[0].scope: must be empty or /-separated" in result.stderr
    with pytest.raises(GatehouseError):
        tenant_of(operator, slug)


def test_a_plan_no_calls_can_reach_is_refused_before_any_write(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    path.write_text(path.read_text().replace("  - role: owner", "  - role: ghost"))
    result = gatehouse.cli("apply", "-f", str(path))
    assert result.returncode == 2
    assert f"{path}:23: tenant {slug}: user:alice is granted ghost, which is neither a system role" in result.stderr
    assert plan not in {p.name for p in operator.admin.list_plans().plans}


def tenant_key(operator: Client, tenant_id: str, roles: list[tuple[str, str]], permissions: list[str]) -> str:
    created = operator.admin.create_api_key(
        admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant_id, name="apply", permissions=permissions,
            roles=[admin_pb2.RoleGrant(role=role, scope=scope) for role, scope in roles],
        )  # fmt: skip
    )
    return str(created.secret)


def tenant_only(path: Path, tenant_id: str) -> Path:
    """The file's Tenant document alone (a tenant key cannot upsert plans), with the id
    (a tenant key cannot list tenants to find the slug)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Tenant"]
    docs[0] = {**docs[0], "id": tenant_id}
    out = path.with_name("tenant.yaml")
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def test_a_tenant_key_is_held_to_its_permissions_and_the_guards(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    assert gatehouse.cli("apply", "-f", str(path)).returncode == 0
    tenant = tenant_of(operator, slug)
    own = tenant_only(path, tenant.id)

    # A key that may only read: the plan is shown, the first write is refused.
    viewer = tenant_key(operator, tenant.id, [("viewer", "")], ["*"])
    own.write_text(own.read_text().replace("user:bob", "user:dora"))
    refused = gatehouse.cli("apply", "-f", str(own), key=viewer)
    assert refused.returncode == 5  # PERMISSION_DENIED, as every client command
    assert f"+ member {slug} user:dora" in refused.stdout
    assert "PERMISSION_DENIED" in refused.stderr
    assert "dora" not in {m.subject.id for m in operator.admin.list_members(tenant_id=tenant.id).members}

    # An admin (not owner) may add members, but not hand out owner (the owner guard) ...
    admin = tenant_key(operator, tenant.id, [("admin", "")], ["*"])
    own.write_text(own.read_text().replace("user:dora", "user:bob").replace("- subject: user:bob\n", "- subject: user:erin\n  roles: [{role: owner}]\n- subject: user:bob\n"))
    guarded = gatehouse.cli("apply", "-f", str(own), key=admin)
    assert guarded.returncode == 4  # FAILED_PRECONDITION, as every client command
    assert "GATEHOUSE_OWNER_REQUIRED" in guarded.stderr

    # ... nor create a role beyond its own limit (the escalation guard).
    limited = tenant_key(operator, tenant.id, [("admin", "")], ["gatehouse.*"])
    escalating = tenant_only(path, tenant.id)
    escalating.write_text(escalating.read_text().replace("roles:\n- name: accountant", "roles:\n- name: payroll\n  permissions: [salary.read]\n- name: accountant"))
    escalated = gatehouse.cli("apply", "-f", str(escalating), key=limited)
    assert escalated.returncode == 4  # FAILED_PRECONDITION, as every client command
    assert "GATEHOUSE_ESCALATION" in escalated.stderr
    assert "payroll" not in {r.name for r in operator.admin.list_roles(tenant_id=tenant.id).roles}

    # And it may not touch plans at all.
    platform = gatehouse.cli("apply", "-f", str(path), key=admin)
    assert platform.returncode == 5 and "PERMISSION_DENIED" in platform.stderr


class RacingClient:
    """The light client, but just before apply's first write of a tenant someone else
    writes to it (as a second operator would, between apply's read and its write)."""

    def __init__(self, client: Client, race: Any) -> None:
        self._client = client
        self._race = race
        self.admin = self

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._client.admin, name)
        if name.startswith(("get_", "list_", "resolve_")) or self._race is None:
            return call
        race, self._race = self._race, None
        race()
        return call

    def __enter__(self) -> RacingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("change", ["name: Acme", "subject: user:bob"])
def test_a_concurrent_change_is_detected_and_reported(gatehouse: Gatehouse, operator: Client, tmp_path: Path, change: str) -> None:
    """Between apply's read and its first write someone else writes: the write carries
    the revision apply read as expected_revision, so the server refuses it."""
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    assert gatehouse.cli("apply", "-f", str(path)).returncode == 0
    tenant = tenant_of(operator, slug)
    replacement = {"name: Acme": "name: Acme Two", "subject: user:bob": "subject: user:frank"}[change]
    path.write_text(path.read_text().replace(change, replacement))

    def race() -> None:
        operator.admin.patch_tenant_config(tenant_id=tenant.id, settings_patch={"raced": True})

    args = argparse.Namespace(command="apply", file=str(path), dry_run=False, prune=False)
    out, err = io.StringIO(), io.StringIO()
    status = declarative_cli.run(args, out, err, connect=lambda _: RacingClient(operator, race))  # type: ignore[arg-type,return-value]
    assert status == declarative_cli.EXIT_CONFLICT, err.getvalue()
    assert "concurrent change: ABORTED GATEHOUSE_REVISION_CONFLICT" in err.getvalue()
    assert "run apply again" in err.getvalue()
    after = tenant_of(operator, slug)
    assert after.settings["raced"] is True  # the other write stands
    assert after.name == "Acme"  # and apply's was not made
    assert "frank" not in {m.subject.id for m in operator.admin.list_members(tenant_id=tenant.id).members}


def test_export_then_apply_is_no_change(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> None:
    slug, plan = unique("acme"), unique("pro")
    path = state_file(tmp_path, slug, plan)
    assert gatehouse.cli("apply", "-f", str(path)).returncode == 0
    tenant = tenant_of(operator, slug)
    operator.admin.patch_tenant_config(tenant_id=tenant.id, settings_patch={"n": 2.5, "list": [1, "x", None]})

    one = gatehouse.cli("export", "--tenant", slug)
    assert one.returncode == 0, one.stderr
    exported = schema.loads(one.stdout, "export.yaml")
    assert exported.tenants[slug].id == tenant.id and exported.tenants[slug].settings == {
        "theme": "dark", "limits": {"exports": 3}, "n": 2.5, "list": [1, "x", None]
    }  # fmt: skip
    (tmp_path / "export.yaml").write_text(one.stdout)
    again = gatehouse.cli("apply", "-f", str(tmp_path / "export.yaml"), "--prune")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("No changes")

    everything = gatehouse.cli("export", "-f", str(tmp_path / "all.yaml"))
    assert everything.returncode == 0, everything.stderr
    whole = schema.load(tmp_path / "all.yaml")
    assert slug in whole.tenants and plan in whole.plans
    assert gatehouse.cli("apply", "-f", str(tmp_path / "all.yaml"), "--prune").stdout.startswith("No changes")

    # A tenant key exports its own tenant by id, and applying that is no change either.
    key = tenant_key(operator, tenant.id, [("viewer", "")], ["*"])
    own = gatehouse.cli("export", "--tenant", tenant.id, key=key)
    assert own.returncode == 0, own.stderr
    (tmp_path / "own.yaml").write_text(own.stdout)
    assert gatehouse.cli("apply", "-f", str(tmp_path / "own.yaml"), key=key).stdout.startswith("No changes")


def assignments_of(client: Client, tenant_id: str) -> list[tuple[str, str, str, str, int | None]]:
    """(subject id, role, scope, condition, expiry in microseconds) of every assignment."""
    return sorted(
        (a.subject.id, a.role, a.scope, a.condition, a.expires_at.ToMicroseconds() if a.HasField("expires_at") else None)
        for a in client.admin.list_role_assignments(tenant_id=tenant_id).assignments
    )


def with_terms(gatehouse: Gatehouse, operator: Client, tmp_path: Path) -> tuple[str, str, Any, datetime.datetime]:
    """A tenant (the state file's) whose bob also holds a conditional grant and an expiring one
    (to the microsecond) and whose alice holds one with both: (slug, plan, tenant, the expiry)."""
    slug, plan = unique("terms"), unique("pro")
    assert gatehouse.cli("apply", "-f", str(state_file(tmp_path, slug, plan))).returncode == 0
    tenant = tenant_of(operator, slug)
    later = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=123457) + datetime.timedelta(days=1)
    operator.admin.assign_role(tenant_id=tenant.id, subject="user:bob", role="accountant", scope="apac",
                               condition="resource.attributes.owner == subject.id")  # fmt: skip
    operator.admin.assign_role(tenant_id=tenant.id, subject="user:bob", role="accountant", scope="us", expires_at=later)
    operator.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="viewer", scope="eu",
                               expires_at=later, condition="context.ok == true")  # fmt: skip
    return slug, plan, tenant, later


def test_export_then_apply_elsewhere_reproduces_conditional_and_expiring_grants(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path
) -> None:
    slug, _plan, tenant, later = with_terms(gatehouse, operator, tmp_path)
    exported = gatehouse.cli("export", "--tenant", slug)
    assert exported.returncode == 0 and exported.stderr == "", exported
    stamp = later.replace(tzinfo=None).isoformat() + "Z"
    assert f"expires_at: '{stamp}'" in exported.stdout
    assert "condition: resource.attributes.owner == subject.id" in exported.stdout
    (tmp_path / "export.yaml").write_text(exported.stdout)
    again = gatehouse.cli("apply", "-f", str(tmp_path / "export.yaml"), "--prune")
    assert again.returncode == 0 and again.stdout.startswith("No changes"), again

    # The same file as another tenant: every grant, with its terms, exactly.
    copy = unique("copy")
    text = exported.stdout.replace(f"slug: {slug}\n", f"slug: {copy}\n").replace(f"id: {tenant.id}\n", "")
    (tmp_path / "copy.yaml").write_text(text)
    applied = gatehouse.cli("apply", "-f", str(tmp_path / "copy.yaml"))
    assert applied.returncode == 0, applied.stderr
    assert f"+ grant {copy} user:bob: accountant at apac\n" in applied.stdout
    assert f'    condition: "resource.attributes.owner == subject.id"\n' in applied.stdout
    assert f"    expires_at: {stamp}\n" in applied.stdout
    created = tenant_of(operator, copy)
    assert assignments_of(operator, created.id) == assignments_of(operator, tenant.id)
    assert (slug, "accountant", "us") in {(slug, a[1], a[2]) for a in assignments_of(operator, created.id)}
    second = gatehouse.cli("export", "--tenant", copy)
    assert second.returncode == 0 and second.stderr == "", second
    assert second.stdout.replace(f"id: {created.id}\n", "") == text


def test_a_changed_condition_or_expiry_is_planned_then_applied(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path
) -> None:
    slug, _plan, tenant, later = with_terms(gatehouse, operator, tmp_path)
    path = tmp_path / "export.yaml"
    path.write_text(gatehouse.cli("export", "--tenant", slug).stdout)
    stamp = later.replace(tzinfo=None).isoformat() + "Z"
    further = (later + datetime.timedelta(days=2)).replace(microsecond=0)
    text = (
        path.read_text()
        .replace("owner == subject.id", "owner != subject.id")
        .replace(f"expires_at: '{stamp}'", f"expires_at: '{further.isoformat()}'", 1)  # +00:00: same instant as Z
    )
    path.write_text(text)
    before = tenant_of(operator, slug).revision

    planned = gatehouse.cli("apply", "-f", str(path), "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout == textwrap.dedent(
        f"""\
        ~ grant {slug} user:alice: viewer at eu
            expires_at: {stamp} -> {further.replace(tzinfo=None).isoformat()}Z
        ~ grant {slug} user:bob: accountant at apac
            condition: "resource.attributes.owner == subject.id" -> "resource.attributes.owner != subject.id"

        Plan: 0 to add, 2 to change, 0 to remove.
        Dry run: nothing was written.
        """
    )
    assert tenant_of(operator, slug).revision == before

    applied = gatehouse.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert "Apply complete: 2 changes." in applied.stdout
    held = {(a[0], a[1], a[2]): a[3:] for a in assignments_of(operator, tenant.id)}
    assert held[("alice", "viewer", "eu")] == ("context.ok == true", int(further.timestamp()) * 1_000_000)
    assert held[("bob", "accountant", "apac")] == ("resource.attributes.owner != subject.id", None)
    assert held[("bob", "accountant", "us")] == ("", (later - declarative_cli.EPOCH) // datetime.timedelta(microseconds=1))
    assert gatehouse.cli("apply", "-f", str(path), "--prune").stdout.startswith("No changes")

    # Back to a plain grant: the file names the grant, so its terms are managed, prune or not.
    path.write_text(text.replace("    condition: resource.attributes.owner != subject.id\n", ""))
    plain = gatehouse.cli("apply", "-f", str(path))
    assert plain.returncode == 0, plain.stderr
    assert '    condition: "resource.attributes.owner != subject.id" -> ""\n' in plain.stdout
    held = {(a[0], a[1], a[2]): a[3:] for a in assignments_of(operator, tenant.id)}
    assert held[("bob", "accountant", "apac")] == ("", None)


def test_a_changed_grant_the_key_may_not_hand_out_is_refused_and_left_as_it_was(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path
) -> None:
    """A change is one AssignRole (on_existing REPLACE): a key that may not hand the role out
    (the escalation guard) is refused, and the grant keeps its old terms; it is never left
    revoked, as when a change was RevokeRole then AssignRole."""
    slug, _plan, tenant, _later = with_terms(gatehouse, operator, tmp_path)
    path = tmp_path / "export.yaml"
    path.write_text(gatehouse.cli("export", "--tenant", slug).stdout.replace("owner == subject.id", "owner != subject.id"))
    limited = tenant_key(operator, tenant.id, [("admin", "")], ["gatehouse.*"])
    before, revision = assignments_of(operator, tenant.id), tenant_of(operator, slug).revision
    result = gatehouse.cli("apply", "-f", str(path), key=limited)
    assert result.returncode == 4 and "GATEHOUSE_ESCALATION" in result.stderr, result
    assert "revoked" not in result.stdout and "Apply complete" not in result.stdout
    assert assignments_of(operator, tenant.id) == before
    assert tenant_of(operator, slug).revision == revision
    held = {a[:3]: a[3] for a in before}
    assert held[("bob", "accountant", "apac")] == "resource.attributes.owner == subject.id"
    # The operator's apply gives it the file's terms, in one write.
    applied = gatehouse.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied
    assert tenant_of(operator, slug).revision == revision + 1
    held = {a[:3]: a[3] for a in assignments_of(operator, tenant.id)}
    assert held[("bob", "accountant", "apac")] == "resource.attributes.owner != subject.id"


def test_giving_the_last_lasting_owner_a_condition_is_refused_and_changes_nothing(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path
) -> None:
    slug, plan = unique("lastown"), unique("pro")
    assert gatehouse.cli("apply", "-f", str(state_file(tmp_path, slug, plan))).returncode == 0
    tenant = tenant_of(operator, slug)
    owners = [a for a in assignments_of(operator, tenant.id) if a[1] == "owner" and a[2] == ""]
    assert len(owners) == 1, owners
    owner = owners[0][0]
    path = tmp_path / "export.yaml"
    exported = gatehouse.cli("export", "--tenant", slug).stdout
    lines = exported.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.strip() == "- role: owner")
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at + 1, f"{indent}  condition: context.ok == true\n")
    path.write_text("".join(lines))
    before, revision = assignments_of(operator, tenant.id), tenant.revision
    result = gatehouse.cli("apply", "-f", str(path))
    assert result.returncode == 4 and "GATEHOUSE_LAST_OWNER" in result.stderr, (owner, result)
    assert assignments_of(operator, tenant.id) == before
    assert tenant_of(operator, slug).revision == revision


@pytest.mark.parametrize(
    "terms, expected",
    [
        ("condition: resource.attributes.owner ==", "members[1].roles[1].condition: is not a usable condition"),
        ("condition: resource.attributes.size + 1", "members[1].roles[1].condition: is not a usable condition"),
        ("expires_at: 2031-05-01T12:00:00", "members[1].roles[1].expires_at: must be an RFC 3339 time with its zone"),
        ("expires_at: 2020-01-01T00:00:00Z", "user:bob: accountant at us: expires_at 2020-01-01T00:00:00Z is not ahead"),
    ],
)
def test_a_bad_or_expired_grant_in_the_file_names_its_field_and_nothing_is_written(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path, terms: str, expected: str
) -> None:
    slug, plan = unique("badterms"), unique("pro")
    extra_grant = f"      - role: accountant\n        scope: us\n        {terms}\n"
    path = state_file(tmp_path, slug, plan)
    path.write_text(path.read_text() + extra_grant)
    result = gatehouse.cli("apply", "-f", str(path))
    assert result.returncode == 2, result
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert "nothing was written" in result.stderr
    with pytest.raises(GatehouseError):
        tenant_of(operator, slug)
    # On a live tenant too: its revision does not move.
    assert gatehouse.cli("apply", "-f", str(state_file(tmp_path, slug, plan, name="plain.yaml"))).returncode == 0
    revision = tenant_of(operator, slug).revision
    again = gatehouse.cli("apply", "-f", str(path))
    assert again.returncode == 2 and expected in again.stderr, again
    assert tenant_of(operator, slug).revision == revision


HOSTILE_SETTINGS = {
    # YAML tags safe_load has no type for: refused naming the line, not a traceback
    "python tag": ("  n: !!python/name:os.system x\n", ":7: Tenant {slug}: not a plain YAML value"),
    "merge key": ("  base: &b {x: 1}\n  d:\n    <<: *b\n", ":9: Tenant {slug}: not a plain YAML value"),
    # aliases: a recursive one, and a billion laughs (10**9 values once expanded)
    "recursive alias": ("  a: &a [*a]\n", "nests deeper than 32 levels"),
    "alias bomb": (
        "  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"  {n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
        "settings hold more than 100000 values",
    ),
    # numbers a Struct (doubles) cannot hold: too large for a double, or not exactly
    "huge integer": ("  n: 1" + "0" * 400 + "\n", "settings.n: an integer beyond +-2**53"),
    "inexact integer": ("  n: 123456789012345678901234567890\n", "settings.n: an integer beyond +-2**53"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SETTINGS))
def test_hostile_yaml_is_a_problem_of_the_file_never_a_traceback(
    gatehouse: Gatehouse, operator: Client, tmp_path: Path, case: str
) -> None:
    slug = unique("hostile")
    text, expected = HOSTILE_SETTINGS[case]
    path = tmp_path / "state.yaml"
    path.write_text(f"apiVersion: gatehouse/v1\nkind: Tenant\nslug: {slug}\nname: Acme\nsettings:\n  theme: dark\n{text}")
    result = gatehouse.cli("apply", "-f", str(path))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert expected.format(slug=slug) in result.stderr
    with pytest.raises(GatehouseError):
        tenant_of(operator, slug)
