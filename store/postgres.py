"""The Postgres driver of the store protocols (`gatehouse.store.api`), on an asyncpg pool.

`PostgresStore` only puts the store's parts together; each lives in its own module:

    transactions.py   the pool, scoped transactions (row-level security), tenant ids
    write_tail.py     `_tenant_write`: lock, check, bump + audit + outbox; then publish
    reads.py          the hot path: load_tenant, load_subject
    tenants.py plans.py roles.py members.py assignments.py keys.py audit.py
                      one resource group each
    rows.py pages.py  rows to records; filters, pages and page tokens
    changes.py        the subscribers of committed writes
    idempotency.py    idempotency keys of admin calls
"""

from __future__ import annotations

import asyncpg

from gatehouse.store.assignments import Assignments
from gatehouse.store.audit import Audit
from gatehouse.store.driver_errors import translated
from gatehouse.store.idempotency import IdempotencyKeys
from gatehouse.store.keys import Keys
from gatehouse.store.members import Members
from gatehouse.store.plans import Plans
from gatehouse.store.reads import Reads
from gatehouse.store.roles import Roles
from gatehouse.store.tenants import Tenants
from gatehouse.store.transactions import PLATFORM_SCOPE, init_connection, reset_connection
from gatehouse.store.write_tail import NOTIFY_CHANNEL

__all__ = ["NOTIFY_CHANNEL", "PLATFORM_SCOPE", "PostgresStore", "connect"]


async def connect(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float | None = 30.0,
) -> PostgresStore:
    """A store on a new connection pool to `dsn`; StoreUnavailable when it cannot connect.

    The timeouts bound how long a dead or hung database can hold a caller: the read path
    must fail closed with UNAVAILABLE rather than wait for the kernel to give up.
    """
    with translated():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            init=init_connection,
            reset=reset_connection,
        )
    return PostgresStore(pool)


class PostgresStore(Reads, Tenants, Plans, Roles, Members, Assignments, Keys, Audit):
    """The `Store` on Postgres (`StoreReader`, `StoreMutator`, `Subscribable`). Build it
    with `connect()`; every method is a coroutine."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.idempotency = IdempotencyKeys(pool)
