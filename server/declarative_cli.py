"""`gatehouse apply -f state.yaml [--dry-run] [--prune]` and `gatehouse export [--tenant T]`.

Both talk to a running Gatehouse through the light client (gatehouse_client), as the
caller's key: every write is an AdminService call, so the caller's permissions, the
escalation guard and the last-owner guard apply exactly as they do to any other call.
Nothing here touches Postgres.

apply: read the file (every problem named file:line:field, nothing written), read the
live state of the plans and tenants the file names, print the plan (`+ ~ -`), and unless
`--dry-run` run its steps in order. Concurrent changes are detected, not overwritten:
every tenant's revision is read with its state (and the read repeated if the tenant moved
meanwhile), and every write to the tenant sends the revision apply last saw as
`expected_revision`, so the server refuses it (ABORTED, GATEHOUSE_REVISION_CONFLICT) if
anyone else wrote in between; apply stops there and says so. (Plans are platform-wide and
carry no revision: UpsertPlan is the one write that is not checked.) A second apply of
the same file finds no difference and makes no call that writes. A grant whose condition
or expiry changes is one call, AssignRole with `on_existing` REPLACE: the grant has its new
terms or, refused (the escalation guard, the last-owner guard, a concurrent change), is
left exactly as it was.

Exit status, as every client command's (server/commands.py): 0 done (or nothing to do);
2 the file is invalid or asks for what cannot be reached (nothing written); 4 a concurrent
change (ABORTED); a call that failed otherwise, its code's status (5 PERMISSION_DENIED ...).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TextIO

import grpc
from google.protobuf import json_format, timestamp_pb2

from gatehouse.declarative import plan_text, schema
from gatehouse.declarative.diff import (
    SYSTEM_ROLES,
    AddMember,
    AssignRole,
    ChangeGrant,
    CreateRole,
    CreateTenant,
    DeleteRole,
    PatchConfig,
    PlanError,
    RemoveMember,
    RevokeRole,
    Step,
    Transition,
    UpdateRole,
    UpdateTenant,
    UpsertPlan,
    diff,
)
from gatehouse.declarative.model import (
    FeatureSpec,
    Grant,
    MemberSpec,
    PlanSpec,
    RoleSpec,
    State,
    TenantSpec,
    split_subject,
    subject_key,
)
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import KEY_SUBJECT_TYPE, TenantStatus
from gatehouse.server.cli_output import emit_error
from gatehouse.server.commands import EXIT_CODES, EXIT_OK, EXIT_OTHER, EXIT_USAGE
from gatehouse_client import Client, GatehouseError
from gatehouse_client.v1 import admin_pb2, common_pb2

# The exit statuses of every client command (server/commands.py): 2 for what is wrong
# with the input (the file, here), 4 for ABORTED (a concurrent change), and so on.
EXIT_INVALID = EXIT_USAGE
EXIT_CONFLICT = EXIT_CODES[grpc.StatusCode.ABORTED]

APPLY_REASON = "gatehouse apply"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
PAGE = 500
READ_ATTEMPTS = 3


class ConcurrentChange(Exception):
    """A tenant kept changing while apply read it."""


# --- the command line ---


def add_commands(commands: Any) -> None:
    """Add `apply` and `export` to the `gatehouse` subcommands (server/cli.py)."""
    apply = commands.add_parser(
        "apply",
        help="make the live state match a state file (prints the plan first)",
        description="Make the live state match a gatehouse/v1 state file, through the admin API as your key.",
        epilog="example: GATEHOUSE_KEY=gh_... gatehouse apply -f state.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("-f", "--file", required=True, help="the state file (YAML, apiVersion: gatehouse/v1)")
    apply.add_argument("--dry-run", action="store_true", help="print the plan and stop: write nothing")
    apply.add_argument(
        "--prune", action="store_true",
        help="also remove what the file leaves out: roles, members and grants of its tenants, settings keys, "
        "flag and quota overrides, plan features (without it nothing absent from the file is deleted)",
    )  # fmt: skip
    connection_arguments(apply)
    export = commands.add_parser(
        "export",
        help="write the live state as a state file",
        description="Write the live state in the gatehouse/v1 schema: one tenant, or every tenant and plan (operator key).",
        epilog="example: gatehouse export --tenant acme > acme.yaml",
    )
    export.add_argument("--tenant", default=None, help="slug or id of one tenant (a tenant key: its tenant's id)")
    export.add_argument("-f", "--file", default="-", help="file to write ('-' = stdout, the default)")
    connection_arguments(export)


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags of every client command (server/commands.py), by the same names."""
    group = parser.add_argument_group("connection")
    group.add_argument("--server", default=None, metavar="ADDRESS",
                       help="host:port or unix:/path [env GATEHOUSE_SERVER, default 127.0.0.1:50051]")  # fmt: skip
    group.add_argument("--key-file", default=None, metavar="PATH", help="file holding the API key [default: env GATEHOUSE_KEY]")
    group.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs (or --tls-ca-file)")
    group.add_argument("--tls-ca-file", default=None, metavar="PEM", help="CA bundle to trust the server's certificate by (implies --tls)")
    group.add_argument("--tls-cert-file", default=None, metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--tls-key-file", default=None, metavar="PEM", help="its private key")
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each attempt (default 10)")
    group.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE, with backoff (default 3)")


def client_from(args: argparse.Namespace) -> Client:
    key = None
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as handle:
            key = handle.read().strip()
    return Client(
        args.server, key=key, tls=args.tls, ca_file=args.tls_ca_file, cert_file=args.tls_cert_file,
        key_file=args.tls_key_file, timeout=args.timeout, retries=args.retries,
    )  # fmt: skip


def run(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    *,
    connect: Callable[[argparse.Namespace], Client] = client_from,
) -> int:
    """`gatehouse apply` or `gatehouse export`; the exit status."""
    prog = f"gatehouse {args.command}"
    try:
        if args.command == "apply":
            desired = schema.load(args.file)
            with connect(args) as client:
                return apply(client, desired, dry_run=args.dry_run, prune=args.prune, out=out)
        with connect(args) as client:
            text = schema.dumps(export(client, args.tenant))
        if args.file == "-":
            out.write(text)
        else:
            with open(args.file, "w", encoding="utf-8") as handle:
                handle.write(text)
        return EXIT_OK
    # StateFileError and PlanError are ValueErrors: caught before the catch-all below.
    except schema.StateFileError as error:
        print(f"{prog}: the file is not valid, nothing was written:", file=err)
        for problem in error.problems:
            print(f"  {problem}", file=err)
        return EXIT_INVALID
    except PlanError as error:
        print(f"{prog}: error: {error} (nothing was written)", file=err)
        return EXIT_INVALID
    except (OSError, ValueError) as error:  # the file or --key-file unreadable, a bad --server
        print(f"{prog}: error: {error}", file=err)
        return EXIT_INVALID
    except ConcurrentChange as error:
        print(f"{prog}: concurrent change: {error}; run apply again to see the new plan", file=err)
        return EXIT_CONFLICT
    except GatehouseError as error:
        if error.code is grpc.StatusCode.ABORTED and error.reason == "GATEHOUSE_REVISION_CONFLICT":
            print(f"{prog}: concurrent change: {error}; run apply again to see the new plan", file=err)
            return EXIT_CONFLICT
        emit_error(error, "table", err)
        return EXIT_CODES.get(error.code, EXIT_OTHER)


# --- reading the live state ---


@dataclass
class Live:
    """The live state apply compares with, and per tenant slug its id and the revision the
    state was read at (advanced as apply's own writes land)."""

    state: State
    ids: dict[str, str] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    system_roles: set[str] = field(default_factory=lambda: set(SYSTEM_ROLES))


def _pages(call: Callable[..., Any], items: str, **fields: Any) -> Iterator[Any]:
    token = ""
    while True:
        page = call(page_size=PAGE, page_token=token, **fields)
        yield from getattr(page, items)
        token = page.next_page_token
        if not token:
            return


def status_of(value: int) -> TenantStatus:
    name = common_pb2.TenantStatus.Name(value)  # TENANT_STATUS_ACTIVE
    return TenantStatus(name.removeprefix("TENANT_STATUS_").lower())


def instant(message: timestamp_pb2.Timestamp) -> datetime.datetime:
    """A Timestamp as `Grant.expires_at` holds it: UTC, to the nearest microsecond (what
    the server stores; its reply may be a nanosecond off, through float seconds)."""
    micros = (message.ToNanoseconds() + 500) // 1000
    return EPOCH + datetime.timedelta(microseconds=micros)


def timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromNanoseconds((value - EPOCH) // datetime.timedelta(microseconds=1) * 1000)
    return message


def plan_spec(plan: admin_pb2.Plan) -> PlanSpec:
    return PlanSpec(
        plan.name,
        {name: FeatureSpec(f.default_enabled, tuple(sorted(f.gates))) for name, f in plan.features.items()},
        dict(plan.quotas),
        dict(plan.rate_limits),
    )


def read_plans(client: Client) -> dict[str, PlanSpec]:
    return {plan.name: plan_spec(plan) for plan in client.admin.list_plans().plans}


def read_tenant(client: Client, tenant_id: str, live: Live) -> TenantSpec:
    """One tenant's state at one revision: re-read while it moves under the reads."""
    for _ in range(READ_ATTEMPTS):
        tenant = client.admin.get_tenant(tenant_id=tenant_id)
        roles = client.admin.list_roles(tenant_id=tenant_id)
        members = [m.subject for m in _pages(client.admin.list_members, "members", tenant_id=tenant_id)]
        assignments = list(_pages(client.admin.list_role_assignments, "assignments", tenant_id=tenant_id))
        again = client.admin.get_tenant(tenant_id=tenant_id)
        if again.revision != tenant.revision:
            continue
        live.system_roles.update(r.name for r in roles.roles if r.system)
        grants: dict[str, set[Grant]] = {}
        for subject in members:
            if subject.type != KEY_SUBJECT_TYPE:  # keys are managed with `gatehouse key`
                grants[subject_key(subject.type, subject.id)] = set()
        now = datetime.datetime.now(datetime.timezone.utc)
        for assignment in assignments:
            key = subject_key(assignment.subject.type, assignment.subject.id)
            expires_at = instant(assignment.expires_at) if assignment.HasField("expires_at") else None
            if key not in grants or (expires_at is not None and expires_at <= now):
                # An expired grant not swept yet grants nothing: it is not live state
                # (AssignRole grants it anew; the relay deletes it).
                continue
            grants[key].add(Grant(assignment.role, assignment.scope, assignment.condition, expires_at))
        spec = TenantSpec(
            slug=tenant.slug,
            id=tenant.id,
            name=tenant.name,
            plan=tenant.plan,
            region=tenant.region,
            status=status_of(tenant.status),
            settings=schema.plain(json_format.MessageToDict(tenant.settings)),
            flag_overrides=dict(tenant.flag_overrides),
            quota_overrides=dict(tenant.quota_overrides),
            roles={
                r.name: RoleSpec(r.name, tuple(sorted(r.permissions)), r.description)
                for r in roles.roles
                if not r.system
            },
            members={key: MemberSpec(key, frozenset(held)) for key, held in grants.items()},
        )
        live.ids[spec.slug] = tenant.id
        live.revisions[spec.slug] = tenant.revision
        return spec
    raise ConcurrentChange(f"tenant {tenant_id} kept changing while it was read ({READ_ATTEMPTS} tries)")


def tenant_index(client: Client) -> dict[str, admin_pb2.Tenant] | None:
    """Every tenant by slug; None when the key may not list tenants (a tenant key)."""
    try:
        return {t.slug: t for t in _pages(client.admin.list_tenants, "tenants")}
    except GatehouseError as error:
        if error.code is grpc.StatusCode.PERMISSION_DENIED:
            return None
        raise


def read_live(client: Client, desired: State) -> Live:
    """The live state of what `desired` names: its plans, and its tenants found by slug
    (or, for a tenant key, which may not list tenants, by the file's `id`)."""
    live = Live(State())
    plans = read_plans(client) if desired.plans else {}
    tenants: dict[str, TenantSpec] = {}
    index = tenant_index(client) if desired.tenants else {}
    for slug, want in sorted(desired.tenants.items()):
        if index is None:
            if want.id is None:
                raise PlanError(want.where, f"tenant {slug}: this key may not list tenants; give the tenant's id (export writes it)")
            found: admin_pb2.Tenant | None = client.admin.get_tenant(tenant_id=want.id)
            if found is not None and found.slug != slug:
                raise PlanError(want.where, f"tenant {slug}: id {want.id} is the tenant {found.slug}")
        else:
            found = index.get(slug)
            if found is not None and want.id is not None and found.id != want.id:
                raise PlanError(want.where, f"tenant {slug}: the file says id {want.id}, the live tenant is {found.id}")
        if found is None:
            continue
        if status_of(found.status) is TenantStatus.DELETED:
            if want.status is not TenantStatus.DELETED:
                raise PlanError(want.where, f"tenant {slug} is deleted (terminal); its slug cannot be used again")
            tenants[slug] = TenantSpec(slug=slug, id=found.id, status=TenantStatus.DELETED)
            continue
        tenants[slug] = read_tenant(client, found.id, live)
    live.state = State(plans=plans, tenants=tenants)
    return live


# --- apply ---


def apply(client: Client, desired: State, *, dry_run: bool, prune: bool, out: TextIO) -> int:
    live = read_live(client, desired)
    now = datetime.datetime.now(datetime.timezone.utc)
    steps = diff(live.state, desired, prune=prune, system_roles=live.system_roles, now=now)
    out.write(plan_text.render(steps))
    if dry_run or not steps:
        if steps:
            out.write("Dry run: nothing was written.\n")
        return EXIT_OK
    out.write("\n")
    for number, step in enumerate(steps, start=1):
        mark = plan_text.symbol(step)
        head, _ = plan_text.describe(step)
        revision = execute(client, live, step)
        at = f" (revision {revision})" if revision is not None else ""
        out.write(f"[{number}/{len(steps)}] {mark} {head}{at}\n")
        out.flush()
    out.write(f"Apply complete: {len(steps)} change{'s' if len(steps) != 1 else ''}.\n")
    return EXIT_OK


def execute(client: Client, live: Live, step: Step) -> int | None:
    """Make the call `step` stands for; the tenant's new revision (None for a plan).

    Requests are built as messages (not keyword fields): a field called `name` is one."""
    admin = client.admin
    if isinstance(step, UpsertPlan):
        plan = step.plan
        features = {
            n: admin_pb2.PlanFeature(default_enabled=f.default_enabled, gates=list(f.gates)) for n, f in plan.features.items()
        }
        message = admin_pb2.Plan(name=plan.name, features=features, quotas=dict(plan.quotas), rate_limits=dict(plan.rate_limits))
        admin.upsert_plan(admin_pb2.UpsertPlanRequest(plan=message))
        # Every tenant on the plan moved one revision (UpsertPlan's contract).
        for slug, tenant in live.state.tenants.items():
            if tenant.plan == plan.name and slug in live.revisions:
                live.revisions[slug] += 1
        return None
    if isinstance(step, CreateTenant):
        t = step.tenant
        request = admin_pb2.CreateTenantRequest(slug=t.slug, name=t.name or "", plan=t.plan or "", region=t.region or "")
        request.settings.update(dict(t.settings or {}))
        created = admin.create_tenant(request)
        live.ids[t.slug] = created.id
        live.revisions[t.slug] = created.revision
        return int(created.revision)
    slug = step.slug
    tenant_id, seen = live.ids[slug], live.revisions[slug]
    checked: Any
    if isinstance(step, Transition):
        call = getattr(admin, f"{step.action.value}_tenant")
        checked = call(
            admin_pb2.TenantTransitionRequest(
                tenant_id=tenant_id, reason=APPLY_REASON, expected_revision=seen, confirm=step.action is Action.DELETE
            )
        )
    elif isinstance(step, UpdateTenant):
        changed = {k: getattr(step, k) for k in ("name", "plan", "region") if getattr(step, k) is not None}
        checked = admin.update_tenant(admin_pb2.UpdateTenantRequest(tenant_id=tenant_id, expected_revision=seen, **changed))
    elif isinstance(step, PatchConfig):
        patch = admin_pb2.PatchTenantConfigRequest(
            tenant_id=tenant_id, expected_revision=seen,
            set_flag_overrides=dict(step.set_flags), clear_flag_overrides=list(step.clear_flags),
            set_quota_overrides=dict(step.set_quotas), clear_quota_overrides=list(step.clear_quotas),
        )  # fmt: skip
        if step.settings_patch:
            patch.settings_patch.update(dict(step.settings_patch))
        checked = admin.patch_tenant_config(patch)
    elif isinstance(step, UpdateRole):
        role = step.role
        checked = admin.update_role(
            admin_pb2.UpdateRoleRequest(
                tenant_id=tenant_id, name=role.name, permissions=list(role.permissions),
                description=role.description or "", expected_revision=seen,
            )  # fmt: skip
        )
    elif isinstance(step, CreateRole):
        role = step.role
        checked = admin.create_role(
            admin_pb2.CreateRoleRequest(
                tenant_id=tenant_id, name=role.name, permissions=list(role.permissions),
                description=role.description or "", expected_revision=seen,
            )  # fmt: skip
        )
    elif isinstance(step, DeleteRole):
        checked = admin.delete_role(admin_pb2.DeleteRoleRequest(tenant_id=tenant_id, name=step.name, expected_revision=seen))
    elif isinstance(step, AddMember):
        checked = admin.add_member(
            admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=_subject(step.subject), expected_revision=seen)
        )
    elif isinstance(step, RemoveMember):
        checked = admin.remove_member(
            admin_pb2.RemoveMemberRequest(tenant_id=tenant_id, subject=_subject(step.subject), expected_revision=seen)
        )
    elif isinstance(step, (AssignRole, RevokeRole, ChangeGrant)):
        fields: dict[str, Any] = {"tenant_id": tenant_id, "subject": _subject(step.subject), "role": step.grant.role,
                                  "scope": step.grant.scope, "expected_revision": seen}  # fmt: skip
        if isinstance(step, RevokeRole):
            checked = admin.revoke_role(admin_pb2.RevokeRoleRequest(**fields))
        else:
            grant = step.grant
            assign = admin_pb2.AssignRoleRequest(condition=grant.condition, **fields)
            if isinstance(step, ChangeGrant):
                # The held grant's terms change in one write: refused, it stays as it was.
                assign.on_existing = admin_pb2.EXISTING_GRANT_POLICY_REPLACE
            if grant.expires_at is not None:
                assign.expires_at.CopyFrom(timestamp(grant.expires_at))
            checked = admin.assign_role(assign)
    else:  # pragma: no cover - every step type is handled above
        raise TypeError(f"not a step: {step!r}")
    live.revisions[slug] = int(checked.revision)
    return int(checked.revision)


def _subject(key: str) -> common_pb2.Subject:
    type_, id_ = split_subject(key)
    return common_pb2.Subject(type=type_, id=id_)


# --- export ---


def export(client: Client, tenant: str | None) -> State:
    """The live state: one tenant (slug or id) with no plans, or every tenant that is not
    deleted and every plan (a key that may list them: an operator). Grants keep their
    condition and expiry; one already expired (not yet swept) grants nothing and is left out."""
    live = Live(State())
    if tenant is not None:
        found = client.admin.resolve_tenant(tenant)
        spec = read_tenant(client, found.id, live)
        return State(tenants={spec.slug: spec})
    index = tenant_index(client)
    if index is None:
        raise PlanError("", "this key may not list tenants: export one with --tenant <its id>")
    tenants = {
        slug: read_tenant(client, t.id, live)
        for slug, t in sorted(index.items())
        if status_of(t.status) is not TenantStatus.DELETED
    }
    return State(plans=read_plans(client), tenants=tenants)
