"""`gatehouse <group> <action>` run as a subprocess against a real `gatehouse serve`:
every command group, output formats, exit codes, errors, slug-or-id, idempotency keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from gatehouse.server import cli
from gatehouse.server.commands import GROUPS
from tests.certs import Pki
from tests.processes import sidecar_env, start_server
from tests.served import Served


class Run:
    """One finished `gatehouse ...`: exit status, stdout, stderr."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.status, self.out, self.err = done.returncode, done.stdout, done.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.status}\nstdout: {self.out}\nstderr: {self.err}"


def gatehouse(served: Served | None, *args: str, key: str | None = None, server: str | None = None,
              env: dict[str, str] | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if k not in ("GATEHOUSE_KEY", "GATEHOUSE_SERVER")}
    if served is not None:
        environment["GATEHOUSE_SERVER"] = server or served.address
        environment["GATEHOUSE_KEY"] = served.key if key is None else key
    done = subprocess.run([sys.executable, "-m", "gatehouse.server.cli", *args], env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=60)
    return Run(done)


def ok(run: Run) -> Run:
    assert run.status == 0, run
    return run


# --- help ---------------------------------------------------------------------------------


def _leaves(parser: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, child in action.choices.items():
                found += _leaves(child, (*path, name))
    return found or [path]


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="gatehouse")
    cli.commands_module.add_commands(parser.add_subparsers(dest="command"))
    commands = _leaves(parser)
    assert len(commands) == 34, commands
    assert {command[0] for command in commands} == set(GROUPS)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([*command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "example:\n  gatehouse " in text and "--server" in text, command


# --- tenants ------------------------------------------------------------------------------


def test_a_tenants_lifecycle_by_slug_and_by_id(served: Served, unique: str) -> None:
    slug = f"cli-{unique}"
    created = ok(gatehouse(served, "tenant", "create", slug, "--name", "CLI Co", "--settings", '{"theme": "light"}',
                           "-o", "json")).json()
    assert (created["slug"], created["status"], created["settings"]) == (slug, "DRAFT", {"theme": "light"})
    tenant_id = created["id"]

    table = ok(gatehouse(served, "tenant", "get", slug)).out
    assert f"id:" in table and tenant_id in table and "DRAFT" in table
    assert yaml.safe_load(ok(gatehouse(served, "tenant", "get", tenant_id, "-o", "yaml")).out)["slug"] == slug

    for action, status in (("activate", "ACTIVE"), ("suspend", "SUSPENDED"), ("resume", "ACTIVE"),
                           ("archive", "ARCHIVED"), ("restore", "ACTIVE")):
        target = slug if action in ("activate", "resume", "restore") else tenant_id
        answer = ok(gatehouse(served, "tenant", action, target, "--reason", f"test {action}", "-o", "json")).json()
        assert (answer["status"], answer["status_reason"]) == (status, f"test {action}")

    updated = ok(gatehouse(served, "tenant", "update", slug, "--name", "CLI Corp", "--region", "eu", "-o", "json")).json()
    assert (updated["name"], updated["region"]) == ("CLI Corp", "eu")
    stale = gatehouse(served, "tenant", "update", slug, "--name", "x", "--expected-revision", "1")
    assert stale.status == 4 and "ABORTED" in stale.err

    listed = ok(gatehouse(served, "tenant", "list", "--status", "active", "-o", "json")).json()
    assert slug in [tenant["slug"] for tenant in listed]
    table = ok(gatehouse(served, "tenant", "list")).out.splitlines()
    assert table[0].split() == ["ID", "SLUG", "NAME", "STATUS", "PLAN", "REGION", "REVISION"]
    assert any(slug in line and "ACTIVE" in line for line in table[1:])

    ok(gatehouse(served, "tenant", "archive", slug))
    unconfirmed = gatehouse(served, "tenant", "delete", slug)
    assert unconfirmed.status == 4 and "GATEHOUSE_CONFIRMATION_REQUIRED" in unconfirmed.err
    assert ok(gatehouse(served, "tenant", "delete", slug, "--confirm", "-o", "json")).json()["status"] == "DELETED"


# --- roles, members, grants, check --------------------------------------------------------


def test_roles_members_grants_and_check(served: Served, unique: str) -> None:
    slug = f"perm-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug))
    role = ok(gatehouse(served, "role", "create", slug, "accountant", "-p", "invoice.read", "--description", "books",
                        "-o", "json")).json()
    assert role["role"]["permissions"] == ["invoice.read"] and role["revision"] > 0
    ok(gatehouse(served, "role", "update", slug, "accountant", "-p", "invoice.*", "-p", "report.read"))
    roles = ok(gatehouse(served, "role", "list", slug, "-o", "json")).json()
    assert {r["name"]: r["permissions"] for r in roles}["accountant"] == ["invoice.*", "report.read"]

    ok(gatehouse(served, "member", "add", slug, "user:alice"))
    assert [m["subject"] for m in ok(gatehouse(served, "member", "list", slug, "-o", "json")).json()] == ["user:alice"]
    ok(gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "emea/de"))
    ok(gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "apac/jp",
                 "--expires-at", "2999-01-01T00:00:00Z"))
    assignments = ok(gatehouse(served, "role", "assignments", slug, "--subject", "user:alice", "-o", "json")).json()
    assert [(a["role"], a["scope"], a.get("expires_at")) for a in assignments] == [
        ("accountant", "apac/jp", "2999-01-01T00:00:00Z"), ("accountant", "emea/de", "")
    ]
    past = gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "us",
                     "--expires-at", "2001-01-01T00:00:00Z")
    assert past.status == 2 and "INVALID_ARGUMENT" in past.err and "expires_at" in past.err
    # Read as state files read times (RFC 3339 with its zone): refused before any call.
    for bad in ("2099-01-01", "2099-01-01T00:00:00", "2099-01-01T00:00:00+00:60"):
        refused = gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "us", "--expires-at", bad)
        assert refused.status == 2 and "--expires-at" in refused.err and "RFC 3339" in refused.err, (bad, refused.err)
    ok(gatehouse(served, "revoke", slug, "user:alice", "accountant", "--scope", "apac/jp"))
    # A conditional grant (issue 18): decided from the attributes the check carries.
    ok(gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "us",
                 "--condition", "resource.attributes.owner == subject.id"))
    mine = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "us",
                     "--resource-attributes", '{"owner": "alice"}')
    assert (mine.status, mine.out.strip()) == (0, "allowed")
    unsaid = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "us", "--explain", "-o", "json")
    assert unsaid.status == 1 and unsaid.json()["missing_attributes"] == ["resource.attributes.owner"]
    assert "resource.attributes.owner" in unsaid.json()["explanation"]
    bad = gatehouse(served, "grant", slug, "user:alice", "accountant", "--scope", "eu", "--condition", "1 +")
    assert bad.status == 2 and "condition" in bad.err and "column" in bad.err
    not_json = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--context", "[1]")
    assert not_json.status == 2 and "--context" in not_json.err
    ok(gatehouse(served, "revoke", slug, "user:alice", "accountant", "--scope", "us"))

    allowed = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "emea/de/berlin")
    assert (allowed.status, allowed.out.strip()) == (0, "allowed")
    denied = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "apac")
    assert (denied.status, denied.out.strip()) == (1, "denied (NO_GRANT)")
    explained = gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "emea/de", "--explain",
                          "--resource", "invoice:42", "-o", "json")
    assert explained.status == 0
    why = explained.json()
    assert (why["granted_by_role"], why["granted_at_scope"]) == ("accountant", "emea/de")
    assert "'accountant'" in why["explanation"]
    stranger = gatehouse(served, "check", slug, "user:eve", "invoice.read", "--explain")
    assert stranger.status == 1 and "not a member" in stranger.out
    broken = gatehouse(served, "check", slug, "user:alice", "")
    assert broken.status == 2 and "INVALID_ARGUMENT" in broken.err and "permission" in broken.err

    in_use = gatehouse(served, "role", "delete", slug, "accountant")
    assert in_use.status == 4 and "GATEHOUSE_ROLE_IN_USE" in in_use.err
    ok(gatehouse(served, "revoke", slug, "user:alice", "accountant", "--scope", "emea/de"))
    assert gatehouse(served, "check", slug, "user:alice", "invoice.read", "--scope", "emea/de").status == 1
    ok(gatehouse(served, "role", "delete", slug, "accountant"))
    ok(gatehouse(served, "member", "remove", slug, "user:alice"))
    assert ok(gatehouse(served, "member", "list", slug)).out.strip() == "(none)"


def test_grant_replace_gives_a_held_grant_new_terms(served: Served, unique: str) -> None:
    slug = f"repl-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug))
    ok(gatehouse(served, "member", "add", slug, "user:alice"))
    ok(gatehouse(served, "grant", slug, "user:alice", "viewer", "--scope", "eu", "--condition", "context.ok == true"))
    held = gatehouse(served, "grant", slug, "user:alice", "viewer", "--scope", "eu",
                     "--expires-at", "2999-01-01T00:00:00Z")
    assert held.status == 4 and "ALREADY_EXISTS" in held.err, held
    replaced = ok(gatehouse(served, "grant", slug, "user:alice", "viewer", "--scope", "eu",
                            "--expires-at", "2999-01-01T00:00:00Z", "--replace", "-o", "json")).json()
    assert int(replaced["revision"]) > 0
    assignments = ok(gatehouse(served, "role", "assignments", slug, "-o", "json")).json()
    assert [(a["role"], a["scope"], a.get("condition", ""), a.get("expires_at")) for a in assignments] == [
        ("viewer", "eu", "", "2999-01-01T00:00:00Z")
    ]


def test_scope_move(served: Served, unique: str) -> None:
    slug = f"move-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug))
    ok(gatehouse(served, "member", "add", slug, "user:alice"))
    ok(gatehouse(served, "grant", slug, "user:alice", "viewer", "--scope", "org/eu/sales/team1"))
    ok(gatehouse(served, "grant", slug, "user:alice", "admin", "--scope", "org/emea/sales/team1"))
    ok(gatehouse(served, "grant", slug, "user:alice", "admin", "--scope", "org/eu/sales/team1"))
    conflict = gatehouse(served, "scope", "move", slug, "--from", "org/eu/sales", "--to", "org/emea/sales")
    assert conflict.status == 4 and "GATEHOUSE_MOVE_CONFLICT" in conflict.err, conflict
    moved = ok(gatehouse(served, "scope", "move", slug, "--from", "org/eu/sales", "--to", "org/emea/sales",
                         "--on-conflict", "keep-existing", "-o", "json")).json()
    assert (int(moved["moved"]), int(moved["merged"])) == (1, 1) and int(moved["revision"]) > 0
    assert ok(gatehouse(served, "scope", "move", slug, "--from", "org/emea/sales", "--to", "org/sales")).out
    assignments = ok(gatehouse(served, "role", "assignments", slug, "-o", "json")).json()
    assert sorted((a["role"], a["scope"]) for a in assignments) == [("admin", "org/sales/team1"),
                                                                    ("viewer", "org/sales/team1")]
    nothing = gatehouse(served, "scope", "move", slug, "--from", "org/eu", "--to", "org/us")
    assert nothing.status == 3 and "GATEHOUSE_NOTHING_TO_MOVE" in nothing.err, nothing
    into_itself = gatehouse(served, "scope", "move", slug, "--from", "org", "--to", "org/x")
    assert into_itself.status == 2 and "to_scope" in into_itself.err, into_itself


def test_lookups(served: Served, unique: str) -> None:
    slug = f"lookups-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug))
    ok(gatehouse(served, "role", "create", slug, "accountant", "-p", "invoice.*"))
    who = f"user:walker-{unique}"
    for subject, scope in ((who, "emea/de"), ("user:bo", "emea"), ("user:cy", "apac")):
        ok(gatehouse(served, "member", "add", slug, subject))
        ok(gatehouse(served, "grant", slug, subject, "accountant", "--scope", scope))

    found = ok(gatehouse(served, "subjects", slug, "invoice.read", "--scope", "emea/de/berlin", "-o", "json")).json()
    assert [s["subject"] for s in found["subjects"]] == ["user:bo", who] and found["revision"] > 0
    table = ok(gatehouse(served, "subjects", slug, "invoice.read", "--scope", "apac")).out
    assert "user:cy" in table and "user:bo" not in table and "at tenant revision" in table

    held = ok(gatehouse(served, "permissions", slug, who, "--scope", "emea/de/berlin", "-p", "invoice.read",
                        "-p", "report.read", "-o", "json")).json()
    assert [(g["role"], g["scope"]) for g in held["grants"]] == [("accountant", "emea/de")]
    assert [(d["permission"], d["decision"]["allowed"]) for d in held["decisions"]] == [
        ("invoice.read", True), ("report.read", False)]
    assert "NO_GRANT" in ok(gatehouse(served, "permissions", slug, who, "-p", "report.read")).out

    # Conditions and expiry: a conditional grant lists its subject as conditional until the
    # attribute is given; permissions show each grant's condition and expiry.
    owner = "resource.attributes.owner == subject.id"
    ok(gatehouse(served, "member", "add", slug, "user:di"))
    ok(gatehouse(served, "grant", slug, "user:di", "accountant", "--scope", "apac", "--condition", owner,
                 "--expires-at", "2099-01-01T00:00:00Z"))
    found = ok(gatehouse(served, "subjects", slug, "invoice.read", "--scope", "apac", "-o", "json")).json()
    assert [(s["subject"], s.get("conditional", False)) for s in found["subjects"]] == [("user:cy", False)]
    assert [(s["subject"], s["conditional"], s["missing_attributes"]) for s in found["conditional_subjects"]] == [
        ("user:di", True, ["resource.attributes.owner"])]
    assert found["conditional_subjects"][0]["conditions"] == [owner]
    table = ok(gatehouse(served, "subjects", slug, "invoice.read", "--scope", "apac")).out
    assert "CONDITIONAL" in table and "resource.attributes.owner" in table
    given = ok(gatehouse(served, "subjects", slug, "invoice.read", "--scope", "apac",
                         "--resource-attributes", '{"owner": "di"}', "-o", "json")).json()
    assert [(s["subject"], s.get("granted_by_role")) for s in given["subjects"]] == [
        ("user:cy", "accountant"), ("user:di", "accountant")]
    held = ok(gatehouse(served, "permissions", slug, "user:di", "-p", "invoice.read", "--scope", "apac",
                        "-o", "json")).json()
    assert [(g["condition"], g["expires_at"]) for g in held["grants"]] == [(owner, "2099-01-01T00:00:00Z")]
    assert held["decisions"][0]["decision"]["reason"] == "CONDITIONAL"
    text = ok(gatehouse(served, "permissions", slug, "user:di", "-p", "invoice.read", "--scope", "apac",
                        "--resource-attributes", '{"owner": "di"}')).out
    assert "2099-01-01T00:00:00Z" in text and "ALLOWED" in text

    tenants = ok(gatehouse(served, "memberships", who, "-o", "json")).json()
    assert [t["tenant_slug"] for t in tenants] == [slug]
    broken = gatehouse(served, "subjects", slug, "Invoice!")
    assert broken.status == 2 and "permission" in broken.err


def test_plans(served: Served, unique: str) -> None:
    plan = f"plan-{unique}"
    answer = ok(gatehouse(served, "plan", "upsert", plan, "--feature", "reports=off:report.*,export.*",
                          "--quota", "seats=5", "--rate-limit", "checks=100", "-o", "json")).json()
    assert answer["plan"]["features"]["reports"] == {"default_enabled": False, "gates": ["report.*", "export.*"]}
    assert answer["plan"]["quotas"] == {"seats": 5}
    listed = ok(gatehouse(served, "plan", "list", "-o", "yaml")).out
    assert {p["name"]: p for p in yaml.safe_load(listed)}[plan]["rate_limits"] == {"checks": 100}
    slug = f"planned-{unique}"
    ok(gatehouse(served, "tenant", "create", slug, "--plan", plan))
    ok(gatehouse(served, "tenant", "activate", slug))
    ok(gatehouse(served, "member", "add", slug, "user:bob"))
    ok(gatehouse(served, "grant", slug, "user:bob", "admin"))
    blocked = gatehouse(served, "check", slug, "user:bob", "report.read", "-o", "json")
    assert blocked.status == 1 and blocked.json()["feature"] == "reports"
    bad = gatehouse(served, "plan", "upsert", plan, "--quota", "seats=many")
    assert bad.status == 2 and "--quota" in bad.err


# --- keys, audit, config ------------------------------------------------------------------


def test_keys_act_with_their_own_permissions(served: Served, unique: str, tmp_path: Path) -> None:
    slug = f"keys-{unique}"
    tenant_id = ok(gatehouse(served, "tenant", "create", slug, "-o", "json")).json()["id"]
    ok(gatehouse(served, "tenant", "activate", slug))
    secret_file = tmp_path / "tenant.key"
    created = ok(gatehouse(served, "key", "create", "--tenant", slug, "--name", "reader", "-p", "*",
                           "--role", "viewer", "--secret-file", str(secret_file), "-o", "json")).json()
    assert created["secret"] == "" and secret_file.read_text().startswith(f"gh_{created['key']['id']}_")
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    keys = ok(gatehouse(served, "key", "list", "--tenant", slug, "-o", "json")).json()
    assert [k["name"] for k in keys] == ["reader"]

    # The tenant key (from --key-file; GATEHOUSE_KEY unset) may read its tenant, not write
    # it; it names its tenant by id (looking a slug up is for operators).
    reader = ("--key-file", str(secret_file))
    assert ok(gatehouse(served, "role", "list", tenant_id, *reader, key="")).status == 0
    refused = gatehouse(served, "role", "create", tenant_id, "x", "-p", "a.b", *reader, key="")
    assert refused.status == 5 and "PERMISSION_DENIED" in refused.err
    by_slug = gatehouse(served, "role", "list", slug, *reader, key="")
    assert by_slug.status == 2 and "give the tenant's id" in by_slug.err

    ok(gatehouse(served, "key", "revoke", created["key"]["id"], "--tenant", slug))
    revoked = gatehouse(served, "role", "list", tenant_id, *reader, key="")
    assert revoked.status == 5 and "UNAUTHENTICATED" in revoked.err
    missing = gatehouse(served, "role", "list", slug, "--key-file", str(tmp_path / "nothing"))
    assert missing.status == 2 and "--key-file" in missing.err


def test_audit_list_filters(served: Served, unique: str) -> None:
    slug = f"audited-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug, "--reason", "go"))
    events = ok(gatehouse(served, "audit", "list", "--tenant", slug, "-o", "json")).json()
    assert {"tenant.create", "tenant.activate"} <= {e["action"] for e in events}
    only = ok(gatehouse(served, "audit", "list", "--tenant", slug, "--action", "tenant.activate", "-o", "json")).json()
    assert [e["action"] for e in only] == ["tenant.activate"] and only[0]["outcome"] == "ok"
    assert ok(gatehouse(served, "audit", "list", "--tenant", slug, "--since", "2999-01-01T00:00:00Z")).out.strip() == "(none)"
    assert len(ok(gatehouse(served, "audit", "list", "--limit", "1", "-o", "json")).json()) == 1
    assert gatehouse(served, "audit", "list", "--since", "yesterday").status == 2


async def test_config_get_patch_and_watch(served: Served, unique: str) -> None:
    slug = f"conf-{unique}"
    ok(gatehouse(served, "tenant", "create", slug))
    ok(gatehouse(served, "tenant", "activate", slug))
    environment = {**os.environ, "GATEHOUSE_SERVER": served.address, "GATEHOUSE_KEY": served.key}
    watch = subprocess.Popen([sys.executable, "-m", "gatehouse.server.cli", "config", "watch", slug, "--count", "2",
                              "-o", "json"], env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(watch.stdout.readline), 30)  # `{` of the first document
        patched = ok(gatehouse(served, "config", "patch", slug, "--set", "theme=dark", "--set", "limits={\"a\": 1}",
                               "--flag", "beta=on", "--quota", "seats=3", "-o", "json")).json()
        assert patched["settings"] == {"theme": "dark", "limits": {"a": 1}}
        # Through the same buffer as readline; ends when watch exits after its second.
        out = await asyncio.wait_for(asyncio.to_thread(watch.stdout.read), 30)
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()
    assert first.strip() == "{"
    assert out.count('"revision"') == 2 and '"theme": "dark"' in out
    config = ok(gatehouse(served, "config", "get", slug, "-o", "json")).json()
    assert (config["feature_flags"]["beta"], config["quotas"]["seats"]) == (True, 3)
    ok(gatehouse(served, "config", "patch", slug, "--clear-flag", "beta", "--set", "theme=null"))
    config = ok(gatehouse(served, "config", "get", slug, "-o", "yaml")).out
    assert "theme" not in config and "beta" not in config
    nothing = gatehouse(served, "config", "patch", slug)
    assert nothing.status == 2 and "nothing to change" in nothing.err


# --- errors, idempotency, transports ------------------------------------------------------


def test_errors_name_status_reason_and_field_with_distinct_exit_codes(served: Served, unique: str) -> None:
    invalid = gatehouse(served, "tenant", "create", "Not A Slug")
    assert invalid.status == 2
    assert invalid.err.splitlines()[0].startswith("gatehouse: error: INVALID_ARGUMENT GATEHOUSE_INVALID_ARGUMENT:")
    assert "  field slug: must match" in invalid.err
    as_json = gatehouse(served, "tenant", "create", "Not A Slug", "-o", "json")
    assert json.loads(as_json.err)["error"]["field"] == "slug" and as_json.out == ""

    missing = gatehouse(served, "tenant", "get", f"no-such-{unique}")
    assert missing.status == 3 and "NOT_FOUND" in missing.err
    anonymous = gatehouse(served, "tenant", "list", key="")
    assert anonymous.status == 5 and "UNAUTHENTICATED" in anonymous.err
    down = gatehouse(served, "tenant", "list", "--retries", "0", server="127.0.0.1:9")
    assert down.status == 6 and "UNAVAILABLE" in down.err
    check_down = gatehouse(served, "check", "acme", "user:a", "x.read", "--retries", "0", server="127.0.0.1:9")
    assert check_down.status == 2
    usage = gatehouse(served, "member", "add", "acme", "alice")
    assert usage.status == 2 and "TYPE:ID" in usage.err
    assert gatehouse(served, "tenant", "frobnicate").status == 2


def test_a_value_protobuf_cannot_carry_is_a_usage_error_never_a_traceback(served: Served, unique: str) -> None:
    ok(gatehouse(served, "tenant", "create", f"odd-{unique}", "--name", "Odd"))
    runs = [
        gatehouse(served, "config", "patch", f"odd-{unique}", "--set", "k=\udcff"),  # an argument that is not UTF-8
        gatehouse(served, "config", "patch", f"odd-{unique}", "--quota", "seats=99999999999999999999999"),
        gatehouse(served, "check", f"odd-{unique}", "user:a", "x.read", "--min-revision", "99999999999999999999999"),
    ]
    for run in runs:
        assert run.status == 2 and "Traceback" not in run.err, run
        assert run.err.startswith("gatehouse: error: a value cannot be sent:"), run


async def test_every_mutation_carries_an_idempotency_key(served: Served, unique: str, run_id: str) -> None:
    slug = f"idem-{unique}"
    first = ok(gatehouse(served, "tenant", "create", slug, "--idempotency-key", f"create-{unique}", "-o", "json")).json()
    again = ok(gatehouse(served, "tenant", "create", slug, "--idempotency-key", f"create-{unique}", "-o", "json")).json()
    assert again["id"] == first["id"]  # replayed, not created twice

    # Without --idempotency-key: a fresh key per call, stored by the server.
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/gh_test_{run_id}")
    try:
        count = "SELECT count(*) FROM idempotency_keys WHERE method LIKE '%AddMember'"
        before = await admin.fetchval(count)
        ok(gatehouse(served, "member", "add", slug, "user:a"))
        ok(gatehouse(served, "member", "add", slug, "user:b"))
        assert await admin.fetchval(count) == before + 2
        assert await admin.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", f"create-{unique}") == 1
    finally:
        await admin.close()
    twice = gatehouse(served, "member", "add", slug, "user:a")
    assert twice.status == 4 and "ALREADY_EXISTS" in twice.err


def test_a_unix_socket_server(served: Served, unique: str) -> None:
    slug = f"unix-{unique}"
    ok(gatehouse(served, "tenant", "create", slug, server=served.unix))
    assert ok(gatehouse(served, "tenant", "get", slug, "--server", served.unix, "-o", "json")).json()["slug"] == slug


async def test_mutual_tls_flags(
    served: Served, pki: Pki, database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {
        **sidecar_env(database_url, redis_url, redis_prefix, "gh_op_unused-bootstrap-key-0000"),
        "GATEHOUSE_TLS_CERT_FILE": str(pki.server_cert_file), "GATEHOUSE_TLS_KEY_FILE": str(pki.server_key_file),
        "GATEHOUSE_TLS_CLIENT_CA_FILE": str(pki.ca_file),
    }
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in pki.client.cert_chain_pems))
    pki.client.private_key_pem.write_to_path(str(key))
    server = await start_server(env, "--workers", "1")
    try:
        tls = ("--tls-ca-file", str(pki.ca_file), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
        ok(gatehouse(served, "plan", "list", *tls, server=server.address))
        no_cert = gatehouse(served, "plan", "list", "--tls-ca-file", str(pki.ca_file), "--retries", "0",
                            server=server.address)
        assert no_cert.status == 6
        half = gatehouse(served, "plan", "list", "--tls-cert-file", str(cert), server=server.address)
        assert half.status == 2 and "go together" in half.err
    finally:
        await server.stop()
