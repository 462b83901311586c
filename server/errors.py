"""The one place where errors become gRPC statuses, and HTTP statuses.

`GatehouseError`s map to their class's status code with a `google.rpc.Status` in the
`grpc-status-details-bin` trailer: an ErrorInfo (stable `GATEHOUSE_*` reason, domain
`gatehouse.dev`, metadata) and, for INVALID_ARGUMENT, a BadRequest with the field
violations. Everything else is translated first (`translate`): asyncpg and redis
failures become UNAVAILABLE, anything unexpected becomes INTERNAL and is logged. No
handler exception ever reaches a caller as UNKNOWN.

The HTTP listener (AuthZEN, server/authzen_server.py) maps the same errors with
`http_status` and `http_error`: a status by code (`HTTP_STATUSES`, google.rpc's own
HTTP mapping in google/rpc/code.proto, but FAILED_PRECONDITION 409 and
`RevisionNotReached` 412, a min_revision being the caller's precondition), a
`Retry-After` for overload and unavailability, and always a JSON body
`{"error": {"status", "reason", "message", "metadata"?, "violations"?}}`: the shape
AuthZEN 1.0's per-evaluation error takes ("The Access Evaluations API Response",
"Errors": `"error": {"status": 404, "message": "Resource not found"}`), so one reader
reads both. Nothing a client sends can make a 500: only INTERNAL (a bug, logged) and
its kin map there.
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

from gatehouse.errors import (
    Code,
    GatehouseError,
    Internal,
    InvalidArgument,
    Overloaded,
    RequestTooLarge,
    RevisionNotReached,
    Unauthenticated,
    Unavailable,
)
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


# HTTP status per code: google/rpc/code.proto's HTTP mapping, except FAILED_PRECONDITION
# (400 there): 409, the state of the target conflicts with the request.
HTTP_STATUSES: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 409,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
assert set(HTTP_STATUSES) == set(Code)
# Classes whose status is more exact than their code's.
HTTP_STATUS_OF_CLASS: dict[type[GatehouseError], int] = {
    RequestTooLarge: 413,  # Content Too Large (RFC 9110 15.5.14)
    RevisionNotReached: 412,  # the caller's min_revision is a precondition the tenant does not meet
}
# Seconds a client should wait before retrying an Unavailable (the store, a stale cache).
UNAVAILABLE_RETRY_AFTER_SECONDS = 1


def http_status(error: GatehouseError) -> int:
    for kind, status in HTTP_STATUS_OF_CLASS.items():
        if isinstance(error, kind):
            return status
    return HTTP_STATUSES[error.code]


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for any exception, translated as for gRPC (`translate`);
    an INTERNAL is logged here, once, with the exception behind it."""
    error = translate(exc)
    if isinstance(error, Internal):
        log.error("internal error: %s", error.message, exc_info=error.__cause__ or error)
    status = http_status(error)
    headers: dict[str, str] = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(max(1, -(-error.retry_after_ms // 1000)))
    elif isinstance(error, Unavailable):
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    elif isinstance(error, Unauthenticated):
        # AuthZEN 1.0 "Sender Authentication Failure": a 401 SHOULD carry WWW-Authenticate
        # naming the scheme it wants (RFC 6750 section 3).
        headers["WWW-Authenticate"] = 'Bearer realm="gatehouse"'
    return status, {"error": error_json(error, status)}, headers


def error_json(error: GatehouseError, status: int | None = None) -> dict[str, Any]:
    """`{"status", "reason", "message", "metadata"?, "violations"?}` for `error`."""
    body: dict[str, Any] = {
        "status": http_status(error) if status is None else status,
        "reason": error.reason,
        "message": error.message,
    }
    if error.metadata:
        body["metadata"] = dict(error.metadata)
    if isinstance(error, InvalidArgument):
        body["violations"] = [{"field": v.field, "description": v.description} for v in error.violations]
    return body
