"""One decoding step for every method: handlers take and return raw bytes, and parse here.

Every service Gatehouse serves (its own three, health, reflection) is registered through
`register_service`, never through grpc's generated deserializers: bytes that are no
request are INVALID_ARGUMENT (field `request`) for everyone, authenticated or not, with
no traceback (grpc's own deserializer failure is UNKNOWN plus an ERROR log per call),
logged at most as one rate-limited line. Every string of a parsed request must be one
Postgres can store (no NUL, which text and jsonb refuse; no lone surrogate), and
`google.protobuf.Struct`/`ListValue` values nest at most `MAX_VALUE_DEPTH` levels, and
every `google.protobuf.Timestamp` is one protobuf can convert, all checked before the
method runs.

The hot methods (CheckAccess, CheckAccessBatch, GetTenantConfig) register their own
raw-bytes handlers (`register`): they look the request's bytes up in their remembered
answers first and parse (`parse`) only when asked something new.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from gatehouse.server.errors import abort
from gatehouse.server.interceptors import Chain
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from gatehouse.errors import FieldViolation, InvalidArgument
from gatehouse.server.decision_log import DecisionRecord

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

# JSON-like values (settings, patches) nest at most this deep. protobuf refuses to parse
# a message nested more than 100 levels, and every JSON level is three (Struct -> map
# entry -> Value): at 33 levels a tenant's config (TenantConfig -> settings -> ...) would
# already be unreadable to every default client.
MAX_VALUE_DEPTH = 32
_VALUE_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.ListValue"})
# protobuf's own range for a Timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z):
# outside it (or with nanos outside [0, 1e9)) its conversions raise ValueError.
_TIMESTAMP = "google.protobuf.Timestamp"
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def parse(message_type: type[M], body: bytes) -> M:
    """`body` as a `message_type`; bytes that are not one are the caller's mistake."""
    try:
        return message_type.FromString(body)
    except DecodeError:
        _MALFORMED.note(message_type.DESCRIPTOR.full_name, len(body))
        raise InvalidArgument("request", f"not a valid {message_type.DESCRIPTOR.name} message") from None


def register(server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
    """What generated `add_*Servicer_to_server` functions do, for hand-built handlers."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]  # grpcio has it; types-grpcio only from 1.85


def register_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    servicer: object,
    *,
    chain: Chain,
    raw: dict[str, grpc.RpcMethodHandler[Any, Any]] | None = None,
) -> None:
    """Register every method of `service` as implemented by `servicer`'s method of the
    same name, behind `decode`: it gets a parsed, checked request and returns (or
    yields) messages, as with generated code. `raw`: hand-built raw-bytes handlers for
    some methods (the hot ones), which parse for themselves. Every handler is wrapped in
    `chain` (server/interceptors.py)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = dict(raw or {})
    for method in service.methods:
        if method.name in handlers:
            continue
        request_type: type[Message] = message_factory.GetMessageClass(method.input_type)
        implementation = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(_bidi(implementation, request_type))
        elif method.server_streaming and not inspect.isasyncgenfunction(implementation):
            # grpc's own servicers (health's Watch) write with `context.write` instead of
            # yielding: their messages are serialized by grpc, on the way out.
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_writing(implementation, request_type), response_serializer=_serialize
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_unary_stream(implementation, request_type))
        elif method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: no Gatehouse method streams requests only")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(implementation, request_type))
    prefix = f"/{service.full_name}/"
    register(server, service.full_name, {name: chain.wrap(prefix + name, h) for name, h in handlers.items()})


def decode(request_type: type[M], body: bytes) -> M:
    """Parse `body` and check that the request holds nothing the store cannot (see module)."""
    request = parse(request_type, body)
    violations: list[FieldViolation] = []
    _check_message(request, "", 0, violations)
    if violations:
        raise InvalidArgument(violations[0].field, violations[0].description, *violations[1:])
    return request


def _unary(
    implementation: Callable[[Any, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[Message]],
    request_type: type[Message],
) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]:
    async def handler(body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            request = decode(request_type, body)
        except InvalidArgument as error:
            await abort(context, error)
        response = await implementation(request, context)
        return response.SerializeToString()

    return handler


def _unary_writing(
    implementation: Callable[[Any, grpc.aio.ServicerContext[bytes, Message]], Awaitable[None]],
    request_type: type[Message],
) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, Message]], Awaitable[None]]:
    async def handler(body: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> None:
        try:
            request = decode(request_type, body)
        except InvalidArgument as error:
            await abort(context, error)
        await implementation(request, context)

    return handler


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary_stream(
    implementation: Callable[[Any, grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[Message]],
    request_type: type[Message],
) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]]:
    async def handler(body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        try:
            request = decode(request_type, body)
        except InvalidArgument as error:
            await abort(context, error)
        async for response in implementation(request, context):
            yield response.SerializeToString()

    return handler


def _bidi(
    implementation: Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[Message]],
    request_type: type[Message],
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]]:
    async def handler(
        bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async def requests() -> AsyncIterator[Message]:
            async for body in bodies:
                try:
                    yield decode(request_type, body)
                except InvalidArgument as error:
                    await abort(context, error)

        async for response in implementation(requests(), context):
            yield response.SerializeToString()

    return handler


def check_values(message: Message, path: str, found: list[FieldViolation]) -> None:
    """What `decode` checks, for one part of a request parsed without it (the hot path's
    attributes and context): storable strings, nesting, finite numbers."""
    _check_message(message, path, 0, found)


def _check_message(message: Message, path: str, depth: int, found: list[FieldViolation]) -> None:
    """Every string in `message`, at any depth (map keys too), must be storable; JSON-like
    values must not nest deeper than MAX_VALUE_DEPTH; timestamps must be valid ones.
    Appends to `found`."""
    if message.DESCRIPTOR.full_name == _TIMESTAMP:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]  # a Timestamp, by its full name
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
            found.append(FieldViolation(path.rstrip(".") or "request", "must be a time from 0001-01-01 to 9999-12-31"))
        return
    if message.DESCRIPTOR.full_name in _VALUE_TYPES:
        depth += 1
        if depth > MAX_VALUE_DEPTH:
            found.append(FieldViolation(path.rstrip(".") or "request", f"nests deeper than {MAX_VALUE_DEPTH} levels"))
            return
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{name}[{key!r}]" if len(repr(key)) <= 64 else f"{name}[key]"
                if key_field.type == FieldDescriptor.TYPE_STRING:
                    _check_string(key, f"{name} key", found)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _check_message(item, f"{entry}.", depth, found)
                elif value_field.type == FieldDescriptor.TYPE_STRING:
                    _check_string(item, entry, found)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else (value,)
            for index, item in enumerate(items):
                _check_message(item, f"{name}[{index}]." if field.is_repeated else f"{name}.", depth, found)
        elif field.type == FieldDescriptor.TYPE_STRING:
            items = value if field.is_repeated else (value,)
            for index, item in enumerate(items):
                _check_string(item, f"{name}[{index}]" if field.is_repeated else name, found)
        elif field.type == FieldDescriptor.TYPE_DOUBLE and not math.isfinite(value) and not field.is_repeated:
            # A Struct's number_value (the only double any request has): JSON has no NaN
            # or Infinity, so such a value could be neither stored in jsonb nor answered.
            found.append(FieldViolation(name, "must be a finite number"))
        if len(found) >= InvalidArgument.MAX_VIOLATIONS:
            return


def _check_string(value: str, field: str, found: list[FieldViolation]) -> None:
    if "\x00" in value:
        found.append(FieldViolation(field, "must not contain NUL (U+0000)"))
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        found.append(FieldViolation(field, "must be valid Unicode (no lone surrogate)"))


class _RateLimitedLog:
    """One log line per `every` seconds at most, saying how many were not logged."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._next = 0.0
        self._quiet = 0

    def note(self, what: str, size: int) -> None:
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        log.info(
            "malformed request: %d bytes are no %s (%d more since the last such line)", size, what, self._quiet
        )
        self._quiet = 0
        self._next = now + self._every


_MALFORMED = _RateLimitedLog()


# --- the protobuf wire format, as far as CheckAccessBatch needs it ------------------------


@dataclass(frozen=True, slots=True)
class EncodedAnswer:
    """One CheckAccessResponse, serialized once, and the same framed as a batch result;
    its reason (counted again when it is given again), and with the decision log on the
    decision's record, logged when it is given again."""

    encoded: bytes
    framed: bytes
    reason: int = 0  # the DecisionReason number, counted per answer (`decisions` in the stats)
    record: DecisionRecord | None = None

    @classmethod
    def of(cls, encoded: bytes, reason: int = 0, record: DecisionRecord | None = None) -> "EncodedAnswer":
        return cls(encoded, frame(encoded), reason, record)



def frame(encoded: bytes) -> bytes:
    """`encoded` as field 1, wire type 2 (length-delimited): tag, varint length, bytes."""
    return b"\x0a" + varint(len(encoded)) + encoded


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_field1(body: bytes) -> list[bytes] | None:
    """The payloads of a message made only of length-delimited field-1 entries (a
    CheckAccessBatchRequest's `checks`), in order; None for anything else (another field,
    a non-minimal tag, a truncated length), which the caller leaves to the protobuf parser."""
    parts = []
    i, n = 0, len(body)
    while i < n:
        if body[i] != 0x0A:
            return None
        i += 1
        length = shift = 0
        while True:
            if i >= n or shift > 28:
                return None
            b = body[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        end = i + length
        if end > n:
            return None
        parts.append(body[i:end])
        i = end
    return parts
