"""Migration 4: an outbox row carries the W3C traceparent of the sampled span its write ran
under (the relay links its publish span to it), and NULL otherwise. API only: the span
here is a bare sampled context, no SDK; the end-to-end tree is tests/e2e/test_traces.py."""

from __future__ import annotations

import secrets

import asyncpg
from opentelemetry import trace

from gatehouse.engine.model import SubjectRef
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore
from gatehouse.store.transactions import _begin_statement
from tests.store.store_helpers import TenantFactory


def _span(sampled: bool) -> tuple[trace.Span, str]:
    trace_id, span_id = secrets.randbits(128) | 1, secrets.randbits(64) | 1
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    span = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags))
    return span, f"00-{trace_id:032x}-{span_id:016x}-{int(flags):02x}"


async def _traceparents(superuser: asyncpg.Connection, tenant_id: str) -> list[str | None]:
    rows = await superuser.fetch("SELECT traceparent FROM outbox WHERE tenant_id = $1::uuid ORDER BY id", tenant_id)
    return [row["traceparent"] for row in rows]


async def test_a_write_under_a_sampled_span_stores_its_traceparent(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, superuser: asyncpg.Connection
) -> None:
    tenant = await make_tenant("tp")
    sampled, traceparent = _span(True)
    with trace.use_span(sampled):
        await store.add_member(actor, tenant.id, SubjectRef("user", "traced"))
    unsampled, _ = _span(False)
    with trace.use_span(unsampled):
        await store.add_member(actor, tenant.id, SubjectRef("user", "unsampled"))
    await store.add_member(actor, tenant.id, SubjectRef("user", "untraced"))
    # create_tenant's event first, then the three writes: only the sampled one is carried,
    # and the setting does not outlive its transaction on the pooled connection.
    assert await _traceparents(superuser, tenant.id) == [None, traceparent, None, None]


def test_only_a_well_formed_traceparent_reaches_the_begin_statement() -> None:
    scope = "*"
    _, good = _span(True)
    assert f"'gatehouse.traceparent', '{good}'" in _begin_statement(scope, readonly=False, traceparent=good)
    for bad in ("", "00-x'; DROP TABLE outbox; --", good.upper(), good + "0"):
        assert "traceparent" not in _begin_statement(scope, readonly=False, traceparent=bad)
