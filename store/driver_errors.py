"""How asyncpg and network errors become Gatehouse errors: one table, one context manager.

Every public coroutine of the store runs its driver calls inside `translated()`, so
nothing asyncpg-typed reaches the server: callers see `AlreadyExists`, `StoreUnavailable`
(retry later, or serve from cache within the staleness bound), `SchemaMismatch` or
`Internal`. The original error is chained (`raise ... from e`) for the logs; messages
stay generic so SQL and row data never travel to a gRPC caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg
from asyncpg import exceptions as pg

from gatehouse.errors import (
    AlreadyExists,
    GatehouseError,
    Internal,
    InvalidArgument,
    NotAMember,
    SchemaMismatch,
    StoreUnavailable,
)

# Constraint violations the store relies on as a backstop for its own checks, by the
# constraint names in migrations/0001_initial.up.sql.
_UNIQUE_MESSAGES: dict[str, str] = {
    "tenants_slug_key": "a tenant with this slug already exists",
    "roles_pkey": "a role with this name already exists",
    "memberships_pkey": "the subject is already a member",
    "role_assignments_pkey": "the subject already has this role at this scope",
    "plans_pkey": "a plan with this name already exists",
}
# Factories, not instances: an exception carries its traceback and must not be reused.
_FOREIGN_KEY_ERRORS: dict[str, Callable[[], GatehouseError]] = {
    "tenants_plan_fkey": lambda: InvalidArgument("plan", "unknown plan"),
    "role_assignments_member_fkey": lambda: NotAMember("roles are assigned to members only"),
}
_CHECK_FIELDS: dict[str, tuple[str, str]] = {
    "tenants_slug_format": ("slug", "must be 3-63 characters of [a-z0-9-], starting and ending with [a-z0-9]"),
}

# The server cannot be reached or will not take work right now: retrying later can help.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError is an OSError too
    pg.PostgresConnectionError,  # class 08, including ConnectionDoesNotExistError
    pg.InvalidAuthorizationSpecificationError,  # class 28: the role may not log in (yet)
    pg.InvalidCatalogNameError,  # the database is gone
    pg.OperatorInterventionError,  # class 57: shutdown, cannot connect now, statement timeout
    pg.InsufficientResourcesError,  # class 53: too many connections, disk full
    pg.TransactionRollbackError,  # class 40: deadlock or serialization failure, safe to retry
    # The client's protocol state is off, e.g. a terminated backend's FATAL arrived
    # between queries ("cannot switch to state ..."): that connection is done for.
    pg.InternalClientError,
)
# The database is reachable but its schema is not what this build expects.
_SCHEMA: tuple[type[BaseException], ...] = (
    pg.UndefinedTableError,
    pg.UndefinedColumnError,
    pg.UndefinedFunctionError,
    pg.UndefinedObjectError,
)


# Driver errors of this process that were no answer about the caller's input, by kind
# ("unavailable", "schema", "internal"): the "Postgres errors" of the metrics.
failures: Counter[str] = Counter()


def translate(error: Exception) -> GatehouseError:
    """The Gatehouse error that stands for `error` (a driver or network error)."""
    if isinstance(error, GatehouseError):
        return error
    translated = _translate(error)
    if isinstance(translated, StoreUnavailable):
        failures["unavailable"] += 1
    elif isinstance(translated, SchemaMismatch):
        failures["schema"] += 1
    elif isinstance(translated, Internal):
        failures["internal"] += 1
    return translated


def _translate(error: Exception) -> GatehouseError:
    constraint = getattr(error, "constraint_name", None) or ""
    if isinstance(error, pg.UniqueViolationError):
        return AlreadyExists(_UNIQUE_MESSAGES.get(constraint, "already exists"))
    if isinstance(error, pg.ForeignKeyViolationError) and constraint in _FOREIGN_KEY_ERRORS:
        return _FOREIGN_KEY_ERRORS[constraint]()
    if isinstance(error, pg.CheckViolationError) and constraint in _CHECK_FIELDS:
        return InvalidArgument(*_CHECK_FIELDS[constraint])
    if isinstance(error, (pg.UntranslatableCharacterError, pg.CharacterNotInRepertoireError)):
        # Text Postgres cannot hold (NUL in text or jsonb, a character the database
        # encoding lacks). The server refuses these at validation (server/wire.py); one
        # that slips past is still the caller's input, not a server fault.
        return InvalidArgument("request", f"a string the database cannot store ({type(error).__name__})")
    if isinstance(error, _UNAVAILABLE) or _is_closed_pool_or_connection(error):
        return StoreUnavailable(f"database unavailable: {type(error).__name__}")
    if isinstance(error, _SCHEMA):
        return SchemaMismatch(f"database schema does not match this build: {type(error).__name__}")
    return Internal(f"database error: {type(error).__name__}")


def _is_closed_pool_or_connection(error: Exception) -> bool:
    # asyncpg reports use of a closed pool or connection as a bare InterfaceError whose
    # message is the only distinguishing mark ("pool is closing", "connection is closed").
    message = str(error)
    return isinstance(error, asyncpg.InterfaceError) and ("is closed" in message or "is closing" in message)


@contextmanager
def translated() -> Iterator[None]:
    """Run a block of driver calls; re-raise whatever they raise as a Gatehouse error."""
    try:
        yield
    except GatehouseError:
        raise
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, pg.InternalClientError) as error:
        raise translate(error) from error
