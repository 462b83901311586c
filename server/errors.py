"""The one place where errors become gRPC statuses.

`GatehouseError`s map to their class's status code with a `google.rpc.Status` in the
`grpc-status-details-bin` trailer: an ErrorInfo (stable `GATEHOUSE_*` reason, domain
`gatehouse.dev`, metadata) and, for INVALID_ARGUMENT, a BadRequest with the field
violations. Everything else is translated first (`translate`): asyncpg and redis
failures become UNAVAILABLE, anything unexpected becomes INTERNAL and is logged. No
handler exception ever reaches a caller as UNKNOWN.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, NoReturn, TypeVar

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from redis.exceptions import RedisError

from gatehouse.errors import Code, GatehouseError, Internal, InvalidArgument, Overloaded, Unavailable
from gatehouse.store import driver_errors

log = logging.getLogger(__name__)
DOMAIN = "gatehouse.dev"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def translate(exc: BaseException) -> GatehouseError:
    """Any exception as one of ours. An INTERNAL made from another exception keeps it as
    its `__cause__` (logged, once, by `abort`)."""
    if isinstance(exc, GatehouseError):
        return exc
    if isinstance(exc, DecodeError):
        return InvalidArgument("request", "not a valid message")
    if isinstance(exc, RedisError):
        return Unavailable(f"cache unavailable: {type(exc).__name__}")
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        # The store translates its own errors; this catches any that slip past it.
        error = driver_errors.translate(exc)
    else:
        error = Internal("internal error")
    if isinstance(error, Internal):
        error.__cause__ = exc
    return error


# Our codes are numbered as gRPC's: one table, checked entry by entry at import.
GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
assert all(GRPC_CODES[code].value[0] == code.value for code in Code)


def grpc_code(error: GatehouseError) -> grpc.StatusCode:
    return GRPC_CODES[error.code]


def to_status(error: GatehouseError) -> status_pb2.Status:
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if isinstance(error, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return status_pb2.Status(code=int(error.code), message=error.message, details=details)


Trailers = tuple[tuple[str, str | bytes], ...]


def trailers_of(error: GatehouseError) -> Trailers:
    """The trailing metadata that carries `error`: its `google.rpc.Status`, and for an
    `Overloaded` the pushback (gRFC A6: a client with a retry policy waits this long
    before its retry; any client can read it)."""
    trailers: Trailers = (("grpc-status-details-bin", to_status(error).SerializeToString()),)
    if isinstance(error, Overloaded):
        trailers += (("grpc-retry-pushback-ms", str(error.retry_after_ms)),)
    return trailers


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the call with `exc` as its status. Every error leaves through here, so an
    INTERNAL (a bug: made here, or by a lower layer such as the store's driver-error
    table) is logged here, once, with the exception behind it."""
    error = translate(exc)
    if isinstance(error, Internal):
        log.error("internal error: %s", error.message, exc_info=error.__cause__ or error)
    await context.abort(grpc_code(error), error.message, trailing_metadata=trailers_of(error))
    raise AssertionError("unreachable")  # context.abort always raises


def grpc_errors(method: F) -> F:
    """Wrap a unary servicer method: every exception leaves as a proper gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            await abort(context, exc)

    return wrapper  # type: ignore[return-value]  # F's own signature: wraps passes (self, request, context) through


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc.aio.AbortError; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError)
