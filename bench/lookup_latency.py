"""python -m bench.lookup_latency [--members 10000] [--calls 200] [--name NAME]

Lookup latency for one big tenant (issue 18): a tenant of `--members` members (the
bench dataset's roles, 1-3 assignments each over the org-unit tree) seeded into a
throwaway database, one `gatehouse serve` worker started on it, then, over gRPC from one
sequential client (client-observed latency, loopback):

* `list_subject_permissions`: ListSubjectPermissions of a random member, 6 permissions at a
  random scope (its tenant and subject entries warm after the first call of each);
* `lookup_after_member_write`: LookupSubjects right after a write that changed one subject
  (AddMember of a throwaway subject): the kept roster is brought forward by reading that
  subject alone, and its listing patched;
* `lookup_after_tenant_write`: LookupSubjects right after a tenant-wide write (a feature
  flag override set): the roster is read again whole from Postgres, compiled, and the
  listing decided;
* `lookup_warm_new_listing`: LookupSubjects on a warm roster for a (permission, scope)
  not asked before: every member decided, no Postgres;
* `lookup_warm_page`: a listing asked before: a bisect and a slice (first pages, and
  pages by token);
* `lookup_all_pages`: every page of one listing (report.read at emea/de/berlin) at page_size 100, end to end;
* `check_access`: CheckAccess of random members, for scale.

Also in-process (no gRPC): the roster read from Postgres, its compilation, and one
listing's decisions, each timed alone. Prints and writes bench/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from bench.dataset import LEAVES, SCOPES, BenchStorage, generate
from bench.scenarios import _operator_token
from bench.targets import gatehouse_target
from gatehouse.engine.lookup import compile_roster, listed_subjects
from gatehouse.store.postgres import connect
from gatehouse_client.v1 import (
    access_pb2,
    access_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    lookup_pb2,
    lookup_pb2_grpc,
)

RESULTS = Path(__file__).resolve().parent / "results"
PERMISSIONS = ["invoice.read", "invoice.update", "report.read", "ticket.create", "deploy.create", "log.read"]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"n": len(ordered), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": at(1.0)}


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


async def in_process(dsn: str, tenant_id: str, rounds: int = 5) -> dict[str, Any]:
    store = await connect(dsn, min_size=1, max_size=1)
    try:
        reads, compiles, listings = [], [], []
        snapshot = await store.load_roster(tenant_id)
        assert snapshot is not None
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        kept = compile_roster(snapshot)
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        del kept
        for _ in range(rounds):
            t0 = time.perf_counter()
            snapshot = await store.load_roster(tenant_id)
            t1 = time.perf_counter()
            assert snapshot is not None
            roster = compile_roster(snapshot)
            t2 = time.perf_counter()
            listing = listed_subjects(roster.policy, roster.members, "invoice.read", "emea/de/berlin", time.time())
            t3 = time.perf_counter()
            reads.append(t1 - t0)
            compiles.append(t2 - t1)
            listings.append(t3 - t2)
        return {
            "members": len(snapshot.members),
            "roster_compiled_mb": round(grown / 2**20, 1),
            "allowed_invoice_read_emea_de_berlin": sum(not listed.conditional for listed in listing.listed),
            "roster_read_postgres": summary(reads),
            "roster_compile": summary(compiles),
            "listing_decide_all": summary(listings),
        }
    finally:
        await store.close()


async def main(members: int, calls: int, extra: list[str]) -> dict[str, Any]:
    storage = BenchStorage()
    await storage.create()
    data = generate(1, members, 0)
    await storage.seed(data)
    token = await _operator_token(storage.dsn)
    work = Path("/tmp") / f"ghlookup-{storage.run_id}"
    work.mkdir(exist_ok=True)
    target = gatehouse_target(storage, "gh_op_unused", 1, work, workers=1, extra_args=extra)
    await target.start()
    tenant_id = data.tenants[0].id
    ids = [m.subject_id for m in data.tenants[0].hot]
    rng = random.Random(7)
    out: dict[str, Any] = {"members": members, "calls": calls, "server_args": extra}
    try:
        out["in_process"] = await in_process(storage.dsn, tenant_id)
        auth = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(target.address) as channel:
            lookup = lookup_pb2_grpc.LookupServiceStub(channel)
            access = access_pb2_grpc.AccessServiceStub(channel)
            admin = admin_pb2_grpc.AdminServiceStub(channel)

            def lsp(i: int) -> Awaitable[Any]:
                return lookup.ListSubjectPermissions(lookup_pb2.ListSubjectPermissionsRequest(
                    tenant_id=tenant_id, subject=common_pb2.Subject(type="user", id=rng.choice(ids)),
                    scope=rng.choice(SCOPES), permissions=PERMISSIONS,
                ))

            def check(i: int) -> Awaitable[Any]:
                return access.CheckAccess(access_pb2.CheckAccessRequest(
                    tenant_id=tenant_id, subject=common_pb2.Subject(type="user", id=rng.choice(ids)),
                    permission=rng.choice(PERMISSIONS), resource=common_pb2.Resource(scope=rng.choice(SCOPES)),
                ))

            async def after_write(i: int, tenant_wide: bool) -> None:
                if tenant_wide:
                    revision = (await admin.PatchTenantConfig(admin_pb2.PatchTenantConfigRequest(
                        tenant_id=tenant_id, set_flag_overrides={"exports": i % 2 == 0},
                    ), metadata=auth)).revision
                else:
                    revision = (await admin.AddMember(admin_pb2.AddMemberRequest(
                        tenant_id=tenant_id, subject=common_pb2.Subject(type="user", id=f"zz-new-{i}"),
                    ), metadata=auth)).revision
                t0 = time.perf_counter()
                answer = await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                    tenant_id=tenant_id, permission="invoice.read", scope="emea/de", min_revision=revision,
                ))
                (wide_samples if tenant_wide else member_samples).append(time.perf_counter() - t0)
                assert answer.revision == revision

            member_samples: list[float] = []
            wide_samples: list[float] = []
            pairs = [(p, s) for p in PERMISSIONS for s in SCOPES]
            rng.shuffle(pairs)

            def new_listing(i: int) -> Awaitable[Any]:
                permission, scope = pairs[i % len(pairs)]
                return lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                    tenant_id=tenant_id, permission=permission, scope=scope,
                ))

            first = await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                tenant_id=tenant_id, permission="invoice.read", scope=LEAVES[0],
            ))

            def warm_page(i: int) -> Awaitable[Any]:
                return lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                    tenant_id=tenant_id, permission="invoice.read", scope=LEAVES[0],
                    page_token=first.next_page_token if i % 2 else "",
                ))

            async def all_pages(i: int) -> None:
                token, pages = "", 0
                while True:
                    page = await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                        tenant_id=tenant_id, permission="report.read", scope=LEAVES[0], page_size=100, page_token=token,
                    ))
                    pages += 1
                    token = page.next_page_token
                    if not token:
                        break
                out["all_pages_pages"] = pages

            out["check_access"] = summary(await timed(calls, check))
            out["list_subject_permissions"] = summary(await timed(calls, lsp))
            await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(  # the roster, kept from here on
                tenant_id=tenant_id, permission="invoice.read", scope="emea/de",
            ))
            await timed(max(5, calls // 10), lambda i: after_write(i, False))
            out["lookup_after_member_write"] = summary(member_samples)
            await timed(max(5, calls // 20), lambda i: after_write(i, True))
            out["lookup_after_tenant_write"] = summary(wide_samples)
            # Warm the roster at its newest revision, then new (permission, scope) pairs: at most
            # len(pairs) of them, each new to the roster (the roster keeps 64 listings).
            await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(tenant_id=tenant_id, permission="x.read"))
            out["lookup_warm_new_listing"] = summary(await timed(min(calls, len(pairs), 60), new_listing))
            first = await lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
                tenant_id=tenant_id, permission="invoice.read", scope=LEAVES[0],
            ))
            out["lookup_first_page_size"] = len(first.subjects)
            out["lookup_warm_page"] = summary(await timed(calls, warm_page))
            out["lookup_all_pages"] = summary(await timed(5, all_pages))
    finally:
        await target.stop()
        await storage.close()
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = ["| what | n | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for key in ("check_access", "list_subject_permissions", "lookup_after_member_write", "lookup_after_tenant_write",
                "lookup_warm_new_listing",
                "lookup_warm_page", "lookup_all_pages"):
        s = result[key]
        rows.append(f"| {key} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    for key in ("roster_read_postgres", "roster_compile", "listing_decide_all"):
        s = result["in_process"][key]
        rows.append(f"| in-process {key} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    head = (
        f"Lookups, one tenant of {result['members']} members (bench/lookup_latency.py), one worker, "
        f"client-observed over loopback gRPC; all pages at size 100 = {result.get('all_pages_pages')} pages; "
        f"a compiled roster holds {result['in_process']['roster_compiled_mb']} MB.\n\n"
    )
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--name", default="")
    p.add_argument("--gh-arg", action="append", default=[])
    a = p.parse_args()
    t0 = time.monotonic()
    result = asyncio.run(main(a.members, a.calls, a.gh_arg))
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=1))
    name = a.name or f"lookup-{a.members}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
