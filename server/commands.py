"""`gatehouse <group> <action>`: every AdminService action and the hot path from a shell,
built on the light client (gatehouse_client). README "CLI reference" lists them all.

    gatehouse tenant create acme --name Acme          gatehouse check acme user:alice invoice.read --scope emea/de
    gatehouse role create acme accountant -p 'invoice.*'
    gatehouse member add acme user:alice              gatehouse grant acme user:alice accountant --scope emea
    gatehouse scope move acme --from emea/de --to europe/de

Connection: `--server` (host:port or unix:/path; $GATEHOUSE_SERVER, default
127.0.0.1:50051), `--tls`/`--tls-ca-file`/`--tls-cert-file`/`--tls-key-file`, the API
key from `--key-file` or $GATEHOUSE_KEY. Tenants by slug or id. Every mutation carries an
idempotency key (a fresh one, or `--idempotency-key`). Output: `-o table|json|yaml`.

Exit status (EXIT_CODES): 0 done (`check`: allowed), 1 `check`: denied; errors: 2 usage
or INVALID_ARGUMENT/OUT_OF_RANGE, 3 NOT_FOUND, 4 ALREADY_EXISTS/FAILED_PRECONDITION/ABORTED,
5 UNAUTHENTICATED/PERMISSION_DENIED, 6 UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED/
CANCELLED, 7 anything else; `check` exits 2 on any error (as `zed permission check` does).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import grpc
from google.protobuf.message import Message

from gatehouse.declarative.model import parse_instant
from gatehouse.server.cli_output import FORMATS, emit, emit_error, fields, plain, table
from gatehouse_client import Client, Decision, GatehouseError, as_subject, is_tenant_id
from gatehouse_client.calls import DEFAULT_SERVER, SERVER_ENV
from gatehouse_client.v1 import admin_pb2, common_pb2


EXIT_OK, EXIT_DENIED, EXIT_USAGE = 0, 1, 2
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.OUT_OF_RANGE: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.ALREADY_EXISTS: 4,
    grpc.StatusCode.FAILED_PRECONDITION: 4,
    grpc.StatusCode.ABORTED: 4,
    grpc.StatusCode.UNAUTHENTICATED: 5,
    grpc.StatusCode.PERMISSION_DENIED: 5,
    grpc.StatusCode.UNAVAILABLE: 6,
    grpc.StatusCode.DEADLINE_EXCEEDED: 6,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 6,
    grpc.StatusCode.CANCELLED: 6,
}
EXIT_OTHER = 7

GROUPS = (
    "tenant", "plan", "role", "member", "grant", "revoke", "scope", "key", "audit", "config", "check",
    "permissions", "subjects", "memberships",
)

Handler = Callable[[Client, argparse.Namespace], Any]


class UsageError(Exception):
    """A flag's value the CLI cannot use (exit 2, before anything is sent)."""


# --- the shared flags -------------------------------------------------------------------


def _connection_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection")
    group.add_argument("--server", default=None, metavar="ADDRESS",
                       help=f"host:port or unix:/path [env {SERVER_ENV}, default {DEFAULT_SERVER}]")
    group.add_argument("--key-file", default=None, metavar="PATH",
                       help="file holding the API key [default: env GATEHOUSE_KEY]")
    group.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs (or --tls-ca-file)")
    group.add_argument("--tls-ca-file", default=None, metavar="PEM", help="CA bundle to trust the server's certificate by (implies --tls)")
    group.add_argument("--tls-cert-file", default=None, metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--tls-key-file", default=None, metavar="PEM", help="its private key")
    group.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="deadline of each attempt (default 5)")
    group.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE, with backoff (default 3)")
    group.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format (default table)")
    return flags


def _mutation_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--idempotency-key", default=None, metavar="KEY",
                       help="the same key within 24 h replays the first answer (default: a fresh key per call)")
    return flags


CONNECTION = _connection_flags()
MUTATION = _mutation_flags()


def _fact_flags(p: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    """The JSON-object flags conditions read (check, permissions, subjects)."""
    helps = {
        "--resource-attributes": "the resource's attributes for conditions, a JSON object, e.g. '{\"owner\": \"alice\"}'",
        "--subject-attributes": "the subject's attributes for conditions, a JSON object, e.g. '{\"level\": 3}'",
        "--context": "anything else conditions read, a JSON object, e.g. '{\"ip\": \"10.1.2.3\"}'",
    }
    for flag in flags:
        p.add_argument(flag, metavar="JSON", help=helps[flag])


def _command(
    parent: Any, name: str, summary: str, example: str, handler: Handler, *, mutation: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[CONNECTION, MUTATION] if mutation else [CONNECTION],
    )
    parser.set_defaults(handler=handler, mutation=mutation)
    return parser


def _group(commands: Any, name: str, summary: str, example: str) -> Any:
    parser = commands.add_parser(
        name, help=summary, description=summary, epilog="example:\n" + textwrap.indent(example.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


# --- values -----------------------------------------------------------------------------


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{flag}: not JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: must be a JSON object")
    return value


def _pairs(items: Iterable[str], flag: str) -> Iterator[tuple[str, str]]:
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE")
        yield key, value


def _on_off(value: str, flag: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise UsageError(f"{flag}: {value!r} is not on or off")


def _integer(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{flag}: {value!r} is not an integer") from None


def _time(value: str | None, flag: str) -> datetime.datetime | None:
    """A time flag, read as state files read times (`parse_instant`: RFC 3339 with its zone)."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as error:
        raise UsageError(f"{flag}: {value!r}: {error}") from None


def _subject(value: str) -> common_pb2.Subject:
    try:
        return as_subject(value)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _tenant_id(client: Client, slug_or_id: str) -> str:
    """The id of the tenant named by slug or id (an id is taken as it is). A slug is looked
    up with ListTenants, which only operator keys may call."""
    if is_tenant_id(slug_or_id):
        return slug_or_id
    try:
        return client.admin.resolve_tenant(slug_or_id).id
    except GatehouseError as error:
        if error.code == grpc.StatusCode.PERMISSION_DENIED:
            raise UsageError(f"tenant {slug_or_id!r}: this key may not look tenants up by slug "
                             f"({error.reason}); give the tenant's id") from None
        raise


def _all_pages(call: Callable[..., Any], items: str, **request: Any) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        page = call(page_token=token, **request)
        found.extend(getattr(page, items))
        token = page.next_page_token
        if not token:
            return found


def _mutate(args: argparse.Namespace) -> dict[str, Any]:
    return {"idempotency_key": args.idempotency_key}


# --- printing ---------------------------------------------------------------------------

TENANT_COLUMNS = ("id", "slug", "name", "status", "plan", "region", "revision")


# What a write answers: the thing written (printed field by field in a table) and the
# tenant revision it made.
WRAPPED = ("role", "member", "assignment", "key", "plan")


def _one(message: Message, args: argparse.Namespace, note: str = "") -> None:
    data = plain(message)
    flat = dict(data)
    for name in WRAPPED:
        if isinstance(flat.get(name), dict):
            flat = {**flat.pop(name), **flat}
    emit(data, args.output, fields(flat) + note)


def _many(messages: Iterable[Message], args: argparse.Namespace, columns: Iterable[str]) -> None:
    rows = [plain(message) for message in messages]
    emit(rows, args.output, table(rows, list(columns)))


# --- tenant -----------------------------------------------------------------------------


def tenant_create(client: Client, args: argparse.Namespace) -> None:
    settings = _json_object(args.settings, "--settings") if args.settings else None
    _one(client.admin.create_tenant(slug=args.slug, name=args.name or args.slug, plan=args.plan or "",
                                    region=args.region or "", settings=settings, **_mutate(args)), args)


def tenant_get(client: Client, args: argparse.Namespace) -> None:
    _one(client.admin.resolve_tenant(args.tenant), args)


def tenant_list(client: Client, args: argparse.Namespace) -> None:
    status = common_pb2.TenantStatus.Value(f"TENANT_STATUS_{args.status.upper()}") if args.status else 0
    tenants = _all_pages(client.admin.list_tenants, "tenants", page_size=500, status=status, plan=args.plan or "",
                         region=args.region or "")
    _many(tenants, args, TENANT_COLUMNS)


def tenant_update(client: Client, args: argparse.Namespace) -> None:
    changes = {name: getattr(args, name) for name in ("name", "plan", "region") if getattr(args, name) is not None}
    if not changes:
        raise UsageError("nothing to change: give --name, --plan or --region")
    _one(client.admin.update_tenant(tenant_id=_tenant_id(client, args.tenant), expected_revision=args.expected_revision,
                                    **changes, **_mutate(args)), args)


def _transition(method: str) -> Handler:
    def run(client: Client, args: argparse.Namespace) -> None:
        call = getattr(client.admin, method)
        _one(call(tenant_id=_tenant_id(client, args.tenant), reason=args.reason, expected_revision=args.expected_revision,
                  confirm=getattr(args, "confirm", False), **_mutate(args)), args)

    return run


# --- plan -------------------------------------------------------------------------------


def plan_upsert(client: Client, args: argparse.Namespace) -> None:
    plan = admin_pb2.Plan(name=args.name)
    for name, value in _pairs(args.feature, "--feature"):
        enabled, _, gates = value.partition(":")
        plan.features[name].CopyFrom(admin_pb2.PlanFeature(
            default_enabled=_on_off(enabled, "--feature"), gates=[g for g in gates.split(",") if g]))
    for name, value in _pairs(args.quota, "--quota"):
        plan.quotas[name] = _integer(value, "--quota")
    for name, value in _pairs(args.rate_limit, "--rate-limit"):
        plan.rate_limits[name] = _integer(value, "--rate-limit")
    answer = client.admin.upsert_plan(plan=plan, **_mutate(args))
    _one(answer, args)


def plan_list(client: Client, args: argparse.Namespace) -> None:
    _many(client.admin.list_plans().plans, args, ("name", "features", "quotas", "rate_limits"))


# --- role, member, grant ----------------------------------------------------------------

ROLE_COLUMNS = ("name", "permissions", "description", "system")


def role_create(client: Client, args: argparse.Namespace) -> None:
    _one(client.admin.create_role(tenant_id=_tenant_id(client, args.tenant), name=args.name,
                                  permissions=args.permission, description=args.description or "", **_mutate(args)), args)


def role_update(client: Client, args: argparse.Namespace) -> None:
    _one(client.admin.update_role(tenant_id=_tenant_id(client, args.tenant), name=args.name,
                                  permissions=args.permission, description=args.description or "",
                                  expected_revision=args.expected_revision, **_mutate(args)), args)


def role_delete(client: Client, args: argparse.Namespace) -> None:
    _one(client.admin.delete_role(tenant_id=_tenant_id(client, args.tenant), name=args.name, **_mutate(args)), args)


def role_list(client: Client, args: argparse.Namespace) -> None:
    _many(client.admin.list_roles(tenant_id=_tenant_id(client, args.tenant)).roles, args, ROLE_COLUMNS)


def role_assignments(client: Client, args: argparse.Namespace) -> None:
    subject = _subject(args.subject) if args.subject else None
    request = {"tenant_id": _tenant_id(client, args.tenant), "page_size": 500, "subject": subject}
    _many(_all_pages(client.admin.list_role_assignments, "assignments", **request), args,
          ("subject", "role", "scope", "created_at", "expires_at", "condition"))


def member_add(client: Client, args: argparse.Namespace) -> None:
    subject = _subject(args.subject)
    _one(client.admin.add_member(tenant_id=_tenant_id(client, args.tenant), subject=subject, **_mutate(args)), args)


def member_remove(client: Client, args: argparse.Namespace) -> None:
    subject = _subject(args.subject)
    _one(client.admin.remove_member(tenant_id=_tenant_id(client, args.tenant), subject=subject, **_mutate(args)), args)


def member_list(client: Client, args: argparse.Namespace) -> None:
    members = _all_pages(client.admin.list_members, "members", tenant_id=_tenant_id(client, args.tenant), page_size=500)
    _many(members, args, ("subject", "created_at"))


# `gatehouse grant --replace`: a grant held already takes this call's terms (else ALREADY_EXISTS).
EXISTING_GRANT = {False: admin_pb2.EXISTING_GRANT_POLICY_REFUSE, True: admin_pb2.EXISTING_GRANT_POLICY_REPLACE}


def grant(client: Client, args: argparse.Namespace) -> None:
    subject = _subject(args.subject)
    _one(client.admin.assign_role(tenant_id=_tenant_id(client, args.tenant), subject=subject, role=args.role,
                                  scope=args.scope, expires_at=_time(args.expires_at, "--expires-at"),
                                  condition=args.condition, on_existing=EXISTING_GRANT[args.replace],
                                  **_mutate(args)), args)


def revoke(client: Client, args: argparse.Namespace) -> None:
    subject = _subject(args.subject)
    _one(client.admin.revoke_role(tenant_id=_tenant_id(client, args.tenant), subject=subject, role=args.role,
                                  scope=args.scope, **_mutate(args)), args)


# --- scope ------------------------------------------------------------------------------

CONFLICT_POLICIES = {"fail": admin_pb2.MOVE_CONFLICT_POLICY_FAIL, "keep-existing": admin_pb2.MOVE_CONFLICT_POLICY_KEEP_EXISTING}


def scope_move(client: Client, args: argparse.Namespace) -> None:
    _one(client.admin.move_scope(tenant_id=_tenant_id(client, args.tenant), from_scope=args.from_scope,
                                 to_scope=args.to_scope, on_conflict=CONFLICT_POLICIES[args.on_conflict],
                                 expected_revision=args.expected_revision, **_mutate(args)), args)


# --- key, audit -------------------------------------------------------------------------


def _role_grants(values: Iterable[str]) -> list[admin_pb2.RoleGrant]:
    grants = []
    for value in values:
        role, _, scope = value.partition("@")
        if not role:
            raise UsageError(f"--role {value!r}: expected ROLE or ROLE@SCOPE")
        grants.append(admin_pb2.RoleGrant(role=role, scope=scope))
    return grants


def key_create(client: Client, args: argparse.Namespace) -> None:
    tenant_id = _tenant_id(client, args.tenant) if args.tenant else ""
    answer = client.admin.create_api_key(
        tenant_id=tenant_id, name=args.name, permissions=args.permission, roles=_role_grants(args.role),
        expires_at=_time(args.expires_at, "--expires-at"), **_mutate(args),
    )
    if args.secret_file:
        path = Path(args.secret_file)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(answer.secret + "\n")
        answer.secret = ""  # written there, not printed
        _one(answer, args, f"\n(secret written to {path})")
        return
    _one(answer, args, "\n(the secret is shown this once)" if answer.secret else "")


def key_list(client: Client, args: argparse.Namespace) -> None:
    tenant_id = _tenant_id(client, args.tenant) if args.tenant else ""
    keys = _all_pages(client.admin.list_api_keys, "keys", tenant_id=tenant_id, page_size=500)
    _many(keys, args, ("id", "name", "permissions", "roles", "expires_at", "revoked_at"))


def key_revoke(client: Client, args: argparse.Namespace) -> None:
    tenant_id = _tenant_id(client, args.tenant) if args.tenant else ""
    _one(client.admin.revoke_api_key(tenant_id=tenant_id, key_id=args.key_id, **_mutate(args)), args)


def audit_list(client: Client, args: argparse.Namespace) -> None:
    request = {
        "tenant_id": _tenant_id(client, args.tenant) if args.tenant else "",
        "actor": args.actor or "", "action": args.action or "",
        "since": _time(args.since, "--since"), "until": _time(args.until, "--until"),
    }
    events: list[Any] = []
    token = ""
    while len(events) < args.limit:
        page = client.admin.list_audit_events(page_size=min(500, args.limit - len(events)), page_token=token, **request)
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            break
    _many(events[: args.limit], args, ("id", "time", "actor", "action", "target", "outcome", "reason"))


# --- config -----------------------------------------------------------------------------


def config_get(client: Client, args: argparse.Namespace) -> None:
    _one(client.config(_tenant_id(client, args.tenant), min_revision=args.min_revision), args)


def config_patch(client: Client, args: argparse.Namespace) -> None:
    patch = _json_object(args.settings, "--settings") if args.settings else {}
    for name, value in _pairs(args.set, "--set"):
        try:
            patch[name] = json.loads(value)
        except json.JSONDecodeError:
            patch[name] = value  # a bare word is a string
    flags = {name: _on_off(value, "--flag") for name, value in _pairs(args.flag, "--flag")}
    quotas = {name: _integer(value, "--quota") for name, value in _pairs(args.quota, "--quota")}
    if not (patch or flags or quotas or args.clear_flag or args.clear_quota):
        raise UsageError("nothing to change: give --set, --settings, --flag, --clear-flag, --quota or --clear-quota")
    _one(client.admin.patch_tenant_config(
        tenant_id=_tenant_id(client, args.tenant), expected_revision=args.expected_revision,
        settings_patch=patch or None, set_flag_overrides=flags, clear_flag_overrides=args.clear_flag,
        set_quota_overrides=quotas, clear_quota_overrides=args.clear_quota, **_mutate(args),
    ), args)


def config_watch(client: Client, args: argparse.Namespace) -> None:
    """Resumes as `Client.watch_config` does (a sidecar restart, a lost connection,
    `GATEHOUSE_STALE`): each reconnect is one line on stderr, stdout gets only the
    documents, each revision once."""
    reconnects = logging.StreamHandler(sys.stderr)
    reconnects.setFormatter(logging.Formatter("%(message)s"))
    reconnects.addFilter(lambda record: "reconnect" in record.getMessage())
    logger = logging.getLogger("gatehouse_client")
    previous = logger.level
    logger.addHandler(reconnects)
    logger.setLevel(logging.INFO)
    try:
        seen = 0
        for config in client.watch_config(_tenant_id(client, args.tenant)):
            data = plain(config)
            if args.output == "table":
                print(f"revision {config.revision}: {json.dumps(data, sort_keys=True)}", flush=True)
            else:
                emit(data, args.output, "")
                sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                return
    finally:
        logger.removeHandler(reconnects)
        logger.setLevel(previous)


# --- check ------------------------------------------------------------------------------

EXPLAIN = {
    "ALLOWED": "role {granted_by_role!r} held at scope {granted_at_scope!r} grants it",
    "NO_GRANT": "the subject is a member, but no role it holds at this scope or above grants the permission",
    "NOT_A_MEMBER": "the subject is not a member of the tenant",
    "TENANT_NOT_FOUND": "no such tenant",
    "TENANT_SUSPENDED": "the tenant is suspended",
    "TENANT_INACTIVE": "the tenant is not active (draft, archived or deleted)",
    "FEATURE_DISABLED": "feature {feature!r} of the tenant's plan gates this permission and is off",
    "KEY_REVOKED": "the API key (the subject) is revoked",
    "CONDITIONAL": "a role would grant it if its condition held, but the condition needs {missing_attributes}",
}


def check(client: Client, args: argparse.Namespace) -> int:
    resource_type, _, resource_id = (args.resource or "").partition(":")
    subject = _subject(args.subject)
    decision = client.check(
        _tenant_id(client, args.tenant), subject, args.permission, scope=args.scope,
        resource_type=resource_type, resource_id=resource_id, min_revision=args.min_revision,
        resource_attributes=_facts(args.resource_attributes, "--resource-attributes"),
        subject_attributes=_facts(args.subject_attributes, "--subject-attributes"),
        context=_facts(args.context, "--context"),
    )
    data = {"allowed": decision.allowed, "reason": decision.reason, "revision": decision.revision,
            "granted_by_role": decision.granted_by_role, "granted_at_scope": decision.granted_at_scope,
            "feature": decision.feature}
    if decision.missing_attributes:
        data["missing_attributes"] = list(decision.missing_attributes)
    if args.explain:
        data["explanation"] = _explain(decision)
    text = "allowed" if decision.allowed else f"denied ({decision.reason})"
    if args.explain:
        text = fields(data)
    emit(data, args.output, text)
    return EXIT_OK if decision.allowed else EXIT_DENIED


# --- lookups (LookupService) --------------------------------------------------------------


def _facts(value: str | None, flag: str) -> dict[str, Any] | None:
    """A JSON-object flag for conditions (--resource-attributes, ...); None when not given."""
    return None if value is None else _json_object(value, flag)


def permissions(client: Client, args: argparse.Namespace) -> None:
    answer = client.permissions(
        _tenant_id(client, args.tenant), _subject(args.subject), scope=args.scope, permissions=args.permission,
        min_revision=args.min_revision,
        resource_attributes=_facts(args.resource_attributes, "--resource-attributes"),
        subject_attributes=_facts(args.subject_attributes, "--subject-attributes"),
        context=_facts(args.context, "--context"),
    )
    data = plain(answer)
    decisions = [{"permission": d["permission"], **d["decision"]} for d in data["decisions"]]
    text = [
        fields(data, ("revision", "member", "limited_to")), "",
        table(data["grants"], ("role", "scope", "permissions", "condition", "expires_at")),
    ]
    if decisions:
        text += ["", table(decisions, (
            "permission", "allowed", "reason", "granted_by_role", "granted_at_scope", "feature", "missing_attributes",
        ))]
    emit(data, args.output, "\n".join(text))


def subjects(client: Client, args: argparse.Namespace) -> None:
    answer = client.lookup_subjects(
        _tenant_id(client, args.tenant), args.permission, scope=args.scope, page_size=1000,
        min_revision=args.min_revision,
        resource_attributes=_facts(args.resource_attributes, "--resource-attributes"),
        context=_facts(args.context, "--context"),
    )
    data = plain(answer)
    data.pop("next_page_token", None)
    text = table(data.get("subjects", []) + data.get("conditional_subjects", []), (
        "subject", "granted_by_role", "granted_at_scope", "conditional", "missing_attributes", "conditions",
    ))
    if answer.denied_for_all:
        text = f"(none: {data['denied_for_all']}{' ' + answer.feature if answer.feature else ''})"
    emit(data, args.output, f"{text}\n(at tenant revision {answer.revision})")


def memberships(client: Client, args: argparse.Namespace) -> None:
    found = client.tenants_for_subject(_subject(args.subject), page_size=1000)  # every page
    _many(found, args, ("tenant_id", "tenant_slug", "tenant_status", "revision"))


def _explain(decision: Decision) -> str:
    template = EXPLAIN.get(decision.reason, decision.reason)
    return f"{template.format(**vars(decision))} (at tenant revision {decision.revision})"


# --- the parser -------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Add the admin groups and `check` to `gatehouse`'s subcommands."""
    tenants = _group(commands, "tenant", "tenants and their lifecycle",
                     "gatehouse tenant create acme --name Acme && gatehouse tenant activate acme --reason launch")
    p = _command(tenants, "create", "create a tenant (status DRAFT)", "gatehouse tenant create acme --name 'Acme Corp' --plan pro --region eu",
                 tenant_create, mutation=True)
    p.add_argument("slug", help="unique across the platform: 3-63 of a-z 0-9 -")
    p.add_argument("--name", help="display name (default: the slug)")
    p.add_argument("--plan")
    p.add_argument("--region")
    p.add_argument("--settings", metavar="JSON", help="initial settings, a JSON object")
    p = _command(tenants, "get", "one tenant, by slug or id", "gatehouse tenant get acme -o yaml", tenant_get)
    p.add_argument("tenant", help="slug or id")
    p = _command(tenants, "list", "every tenant the key may see", "gatehouse tenant list --status active", tenant_list)
    p.add_argument("--status", choices=("draft", "active", "suspended", "archived", "deleted"))
    p.add_argument("--plan")
    p.add_argument("--region")
    p = _command(tenants, "update", "change a tenant's name, plan or region", "gatehouse tenant update acme --plan enterprise",
                 tenant_update, mutation=True)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--name")
    p.add_argument("--plan")
    p.add_argument("--region")
    p.add_argument("--expected-revision", type=int, default=0, help="ABORTED unless the tenant is at this revision")
    for action, method, summary in (
        ("activate", "activate_tenant", "DRAFT or ARCHIVED -> ACTIVE"),
        ("suspend", "suspend_tenant", "ACTIVE -> SUSPENDED (every check denied)"),
        ("resume", "resume_tenant", "SUSPENDED -> ACTIVE"),
        ("archive", "archive_tenant", "ACTIVE or SUSPENDED -> ARCHIVED"),
        ("restore", "restore_tenant", "ARCHIVED -> ACTIVE"),
        ("delete", "delete_tenant", "DRAFT or ARCHIVED -> DELETED, for ever (needs --confirm)"),
    ):
        example = f"gatehouse tenant {action} acme --reason 'ticket 42'" + (" --confirm" if action == "delete" else "")
        p = _command(tenants, action, summary, example, _transition(method), mutation=True)
        p.add_argument("tenant", help="slug or id")
        p.add_argument("--reason", default="", help="why (stored with who and when)")
        p.add_argument("--expected-revision", type=int, default=0, help="ABORTED unless the tenant is at this revision")
        if action == "delete":
            p.add_argument("--confirm", action="store_true", help="yes, delete it (terminal)")

    plans = _group(commands, "plan", "plans: features, quotas and rate limits (platform-wide)", "gatehouse plan list")
    p = _command(plans, "upsert", "create or replace a plan",
                 "gatehouse plan upsert pro --feature reports=on:report.* --quota seats=50 --rate-limit checks=1000",
                 plan_upsert, mutation=True)
    p.add_argument("name")
    p.add_argument("--feature", action="append", default=[], metavar="NAME=on|off[:GATE,...]",
                   help="a feature, on or off by default, and the permission patterns it gates (repeatable)")
    p.add_argument("--quota", action="append", default=[], metavar="NAME=N", help="repeatable")
    p.add_argument("--rate-limit", action="append", default=[], metavar="NAME=N", help="repeatable")
    _command(plans, "list", "every plan", "gatehouse plan list -o yaml", plan_list)

    roles = _group(commands, "role", "a tenant's roles (owner, admin, member, viewer are built in)",
                   "gatehouse role create acme accountant -p 'invoice.*'")
    for action, handler, summary in (("create", role_create, "a new role"),
                                     ("update", role_update, "replace a role's permissions")):
        p = _command(roles, action, summary, f"gatehouse role {action} acme accountant -p 'invoice.*' -p report.read",
                     handler, mutation=True)
        p.add_argument("tenant", help="slug or id")
        p.add_argument("name")
        p.add_argument("-p", "--permission", action="append", required=True, help="a permission pattern (repeatable)")
        p.add_argument("--description")
        if action == "update":
            p.add_argument("--expected-revision", type=int, default=0)
    p = _command(roles, "delete", "delete a role no one holds", "gatehouse role delete acme accountant", role_delete,
                 mutation=True)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("name")
    p = _command(roles, "list", "a tenant's roles", "gatehouse role list acme", role_list)
    p.add_argument("tenant", help="slug or id")
    p = _command(roles, "assignments", "who holds which role where", "gatehouse role assignments acme --subject user:alice",
                 role_assignments)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--subject", help="only this subject's (TYPE:ID)")

    members = _group(commands, "member", "a tenant's members", "gatehouse member add acme user:alice")
    for action, handler, summary in (("add", member_add, "make a subject a member"),
                                     ("remove", member_remove, "remove a member (and its roles)")):
        p = _command(members, action, summary, f"gatehouse member {action} acme user:alice", handler, mutation=True)
        p.add_argument("tenant", help="slug or id")
        p.add_argument("subject", help="TYPE:ID, e.g. user:alice")
    p = _command(members, "list", "a tenant's members", "gatehouse member list acme -o json", member_list)
    p.add_argument("tenant", help="slug or id")

    for name, handler, summary in (("grant", grant, "give a member a role at a scope"),
                                   ("revoke", revoke, "take a role at a scope back")):
        p = _command(commands, name, summary, f"gatehouse {name} acme user:alice accountant --scope emea/de", handler,
                     mutation=True)
        p.add_argument("tenant", help="slug or id")
        p.add_argument("subject", help="TYPE:ID, e.g. user:alice")
        p.add_argument("role")
        p.add_argument("--scope", default="", help="org-unit path, e.g. emea/de ('' = the whole tenant)")
        if name == "grant":
            p.add_argument("--expires-at", metavar="TIME",
                           help="the grant ends then (RFC 3339 with its zone, e.g. 2027-01-01T00:00:00Z; default: never)")
            p.add_argument("--condition", default="", metavar="CEL",
                           help="the grant applies only when this holds, e.g. 'resource.attributes.owner == subject.id'")
            p.add_argument("--replace", action="store_true",
                           help="held already: give it these terms (no --condition: none; no --expires-at: never), "
                                "in one write; default: refuse (ALREADY_EXISTS)")

    scopes = _group(commands, "scope", "org units (scopes) and the grants at and below them",
                    "gatehouse scope move acme --from emea/de --to europe/de")
    p = _command(scopes, "move",
                 "move every grant at or below --from to the same place below --to (--from becomes --to)",
                 "gatehouse scope move acme --from org/eu/sales --to org/emea/sales   # org/eu/sales/x -> org/emea/sales/x",
                 scope_move, mutation=True)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--from", dest="from_scope", required=True, metavar="SCOPE", help="the subtree to move (not the root)")
    p.add_argument("--to", dest="to_scope", required=True, metavar="SCOPE",
                   help="its whole new path, outside it ('' = the tenant root)")
    p.add_argument("--on-conflict", choices=sorted(CONFLICT_POLICIES), default="fail",
                   help="a subject holding the role at the new scope already: fail (default), or keep that grant")
    p.add_argument("--expected-revision", type=int, default=0, help="ABORTED unless the tenant is at this revision")

    keys = _group(commands, "key", "API keys (a tenant's, or operator keys)",
                  "gatehouse key create --tenant acme --name ci -p 'invoice.*' --role accountant@emea")
    p = _command(keys, "create", "a new key; its secret is shown once",
                 "gatehouse key create --name me -p '*' --secret-file ~/.gatehouse-key   # an operator key", key_create,
                 mutation=True)
    p.add_argument("--tenant", help="slug or id (none: an operator key)")
    p.add_argument("--name", required=True)
    p.add_argument("-p", "--permission", action="append", required=True, help="pattern limiting the key ('*': none)")
    p.add_argument("--role", action="append", default=[], metavar="ROLE[@SCOPE]", help="a role the key holds (repeatable)")
    p.add_argument("--expires-at", metavar="TIME", help="RFC 3339 with its zone, e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--secret-file", metavar="PATH", help="write the secret to this file (mode 0600) instead of printing it")
    p = _command(keys, "list", "a tenant's keys, or the operator keys", "gatehouse key list --tenant acme", key_list)
    p.add_argument("--tenant", help="slug or id (none: the operator keys)")
    p = _command(keys, "revoke", "revoke a key", "gatehouse key revoke 0123456789abcdef --tenant acme", key_revoke,
                 mutation=True)
    p.add_argument("key_id", help="the key's 16 hex digits (gh_<id>_...)")
    p.add_argument("--tenant", help="slug or id (none: an operator key)")

    audits = _group(commands, "audit", "the audit trail", "gatehouse audit list --tenant acme --since 2026-12-01")
    p = _command(audits, "list", "audit events, newest first", "gatehouse audit list --tenant acme --action tenant.activate",
                 audit_list)
    p.add_argument("--tenant", help="slug or id")
    p.add_argument("--actor", help="e.g. api_key/0123456789abcdef")
    p.add_argument("--action", help="e.g. tenant.create, role.assign")
    p.add_argument("--since", metavar="TIME", help="ISO 8601")
    p.add_argument("--until", metavar="TIME", help="ISO 8601")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    configs = _group(commands, "config", "a tenant's effective configuration", "gatehouse config get acme -o yaml")
    p = _command(configs, "get", "plan defaults merged with the tenant's overrides", "gatehouse config get acme", config_get)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--min-revision", type=int, default=None, help="never older than this tenant revision")
    p = _command(configs, "patch", "change settings (JSON merge patch), flag and quota overrides",
                 "gatehouse config patch acme --set theme=dark --flag reports=on --quota seats=20", config_patch,
                 mutation=True)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="one setting (repeatable; null removes it)")
    p.add_argument("--settings", metavar="JSON", help="a JSON merge patch (RFC 7396) of the settings")
    p.add_argument("--flag", action="append", default=[], metavar="NAME=on|off", help="override a feature flag")
    p.add_argument("--clear-flag", action="append", default=[], metavar="NAME", help="drop a flag override")
    p.add_argument("--quota", action="append", default=[], metavar="NAME=N", help="override a quota")
    p.add_argument("--clear-quota", action="append", default=[], metavar="NAME", help="drop a quota override")
    p.add_argument("--expected-revision", type=int, default=0)
    p = _command(configs, "watch", "print the configuration, then every change (Ctrl-C stops)",
                 "gatehouse config watch acme -o json", config_watch)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("--count", type=int, default=0, help="stop after this many (default: never)")

    p = _command(commands, "check", "may SUBJECT do PERMISSION? exit 0 allowed, 1 denied, 2 error",
                 "gatehouse check acme user:alice invoice.read --scope emea/de --explain", check)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("subject", help="TYPE:ID, e.g. user:alice")
    p.add_argument("permission", help="e.g. invoice.read")
    p.add_argument("--scope", default="", help="the resource's org-unit path ('' = tenant root)")
    p.add_argument("--resource", metavar="TYPE:ID", help="the resource acted on")
    p.add_argument("--min-revision", type=int, default=None, help="never answer from older data")
    _fact_flags(p, ("--resource-attributes", "--subject-attributes", "--context"))
    p.add_argument("--explain", action="store_true", help="say why: the reason, the granting role and scope, the revision")

    p = _command(commands, "permissions", "what SUBJECT holds in the tenant and, for each -p, what check answers",
                 "gatehouse permissions acme user:alice --scope emea/de -p invoice.read -p invoice.approve", permissions)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("subject", help="TYPE:ID, e.g. user:alice")
    p.add_argument("--scope", default=None, help="only the grants covering this org-unit path; decide -p there")
    p.add_argument("-p", "--permission", action="append", default=[], help="a permission to decide (repeatable)")
    p.add_argument("--min-revision", type=int, default=None, help="never answer from older data")
    _fact_flags(p, ("--resource-attributes", "--subject-attributes", "--context"))
    p = _command(commands, "subjects", "every subject allowed PERMISSION at --scope, and those allowed only "
                 "under a condition (all pages, one revision)",
                 "gatehouse subjects acme invoice.read --scope emea/de --resource-attributes '{\"owner\": \"alice\"}'",
                 subjects)
    p.add_argument("tenant", help="slug or id")
    p.add_argument("permission", help="e.g. invoice.read")
    p.add_argument("--scope", default="", help="the org-unit path ('' = tenant root)")
    p.add_argument("--min-revision", type=int, default=None, help="never answer from older data")
    _fact_flags(p, ("--resource-attributes", "--context"))
    p = _command(commands, "memberships", "the tenants SUBJECT is a member of (an operator key, or the subject's own)",
                 "gatehouse memberships user:alice", memberships)
    p.add_argument("subject", help="TYPE:ID, e.g. user:alice")


def run(args: argparse.Namespace) -> int:
    """Run the command `args` names; its exit status (see the module docstring)."""
    try:
        key = Path(args.key_file).read_text().strip() if args.key_file else None
    except OSError as error:
        return _usage(f"--key-file: {error.strerror}: {args.key_file}")
    try:
        client = Client(
            args.server, key=key, tls=args.tls,
            ca_file=args.tls_ca_file, cert_file=args.tls_cert_file, key_file=args.tls_key_file,
            timeout=args.timeout, retries=args.retries,
        )
    except (ValueError, OSError) as error:
        return _usage(str(error))
    try:
        with client:
            status = args.handler(client, args)
        return int(status or EXIT_OK)
    except UsageError as error:
        return _usage(str(error))
    except (ValueError, OverflowError) as error:
        # a value protobuf cannot carry, refused before any call: text that is not UTF-8
        # (an argument in another encoding), a number too large for its field
        return _usage(f"a value cannot be sent: {error}")
    except GatehouseError as error:
        emit_error(error, args.output)
        if args.command == "check":
            return EXIT_USAGE
        return EXIT_CODES.get(error.code, EXIT_OTHER)
    except KeyboardInterrupt:
        return 130


def _usage(message: str) -> int:
    print(f"gatehouse: error: {message}", file=sys.stderr)
    return EXIT_USAGE
