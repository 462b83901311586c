"""No input, however malformed, gets UNKNOWN or INTERNAL (issue 12).

Every method of every service the sidecar serves (discovered from the service
descriptors, not listed by hand) is called through a real in-process server over gRPC
with raw bytes: random bytes, mutated valid encodings (bit flips, truncation, appended
junk, wrong wire types, lying length prefixes), and messages built field by field from
the descriptor with hostile values (empty, 10 KB, NUL, control characters, non-UTF-8
bytes, Struct nested 33 to 1000 levels, huge repeated fields, extreme numbers, unknown
enum numbers), with and without operator credentials. For every call: the status is
never UNKNOWN or INTERNAL, INVALID_ARGUMENT carries its google.rpc.Status, and nothing
was logged at ERROR. At the end: the canary tenant's revision is unchanged and no tenant
was created.

Budget: GATEHOUSE_FUZZ_EXAMPLES examples per method and kind of input (default 40,
about 20 s on the 2-core reference machine); raise it for a longer local run, and set
GATEHOUSE_FUZZ_RANDOM=1 to draw new inputs instead of the fixed CI sequence.
"""

from __future__ import annotations

import os
import secrets
import uuid
from typing import Any, Callable

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.envoy_api.envoy.service.auth.v3 import external_auth_pb2
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2, lookup_pb2
from tests.client import Client
from tests.fuzz.calls import NEVER, call_raw, path_of
from tests.fuzz.conftest import ErrorRecords
from tests.fuzz.wire_encoding import (
    I32,
    I64,
    LEN,
    SGROUP,
    VARINT,
    length_delimited,
    list_nested,
    struct_nested,
    tag,
    varint,
)
from tests.server.status import details

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("GATEHOUSE_FUZZ_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)

FILES = (
    access_pb2.DESCRIPTOR, config_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR,
    lookup_pb2.DESCRIPTOR, external_auth_pb2.DESCRIPTOR,  # Envoy's ext_authz Check: the shared sidecar serves the example mapping
)
SERVICES = [service for file in FILES for service in file.services_by_name.values()]
METHODS: list[MethodDescriptor] = [method for service in SERVICES for method in service.methods]
IDS = [path_of(m).lstrip("/").replace("gatehouse.v1.", "") for m in METHODS]
BY_PATH = {path_of(m): m for m in METHODS}

MISSING_TENANT = str(uuid.UUID(int=0x0F0F))  # well-formed, never created
VALUE_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-")


# --- hostile values ------------------------------------------------------------------

# Bytes that must be refused wherever a string is expected (and never stored).
POISON = {
    "nul": b"a\x00b",
    "only nul": b"\x00",
    "invalid utf-8": b"\xff\xfe\xfd",
    "truncated utf-8": b"ab\xc3",
    "overlong nul": b"\xc0\x80",
    "lone surrogate": b"\xed\xa0\x80",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
}
HOSTILE_STRINGS = [
    b"",
    b"x" * 10_240,
    "é".encode() * 5_000,
    b"\x01\x02\x07\x08\x0b\x0c\x1b[31m\x7f",
    b"line\nbreak\r\ttab",
    "\u202eright-to-left\ufeff\u200b".encode(),
    "\U0001f600\uffff\ufffe".encode(),
    b"../../etc/passwd",
    b"' OR 1=1 --",
    b"%s%n%x{0}",
    b"\\u0000",
    b"*",
    b"a//b",
    b"{" * 100,
    *POISON.values(),
]
hostile_string = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    # Random bytes with at least one byte no identifier allows: never a valid slug or id.
    st.binary(min_size=1, max_size=48).filter(lambda b: any(c not in ID_CHARS for c in b)),
)
hostile_varint = st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 10**18])
hostile_enum = st.sampled_from([-1, 7, 99, 2**31 - 1, -(2**31)])
hostile_i64 = st.sampled_from(
    [b"\x00\x00\x00\x00\x00\x00\xf8\x7f", b"\x00\x00\x00\x00\x00\x00\xf0\x7f", b"\x00\x00\x00\x00\x00\x00\xf0\xff",
     b"\xff\xff\xff\xff\xff\xff\xef\x7f", b"\xff" * 8, b"\x00" * 8]
)  # NaN, +inf, -inf, max double, all ones, zero
hostile_i32 = st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff" * 4, b"\x00" * 4])
deep_value = st.sampled_from([33, 60, 100, 1000]).flatmap(
    lambda levels: st.sampled_from([struct_nested(levels), list_nested(levels)])
)


class Built:
    """One message under construction: whether a value in it must make the server refuse it."""

    def __init__(self) -> None:
        self.poisoned = False


def scalar(field: FieldDescriptor, draw: Callable[[Any], Any], built: Built, strings: Any) -> bytes:
    n, t = field.number, field.type
    if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        value = draw(strings)
        if value in POISON.values() and t == FieldDescriptor.TYPE_STRING:
            built.poisoned = True
        return length_delimited(n, value)
    if t == FieldDescriptor.TYPE_ENUM:
        return tag(n, VARINT) + varint(draw(hostile_enum))
    if t in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
        v = draw(hostile_varint)
        return tag(n, VARINT) + varint((v << 1) ^ (v >> 63))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64):
        return tag(n, I64) + draw(hostile_i64)
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32):
        return tag(n, I32) + draw(hostile_i32)
    return tag(n, VARINT) + varint(draw(hostile_varint))  # int*, uint*, bool (2 is no bool)


@st.composite
def hostile_message(draw: Any, descriptor: Descriptor, tenant_id: bytes | None, depth: int = 0, *, built: Built) -> bytes:
    """`descriptor`'s fields, each present or not, with hostile values; Struct/Value
    fields sometimes nested far too deep. `tenant_id`: the value of every `tenant_id`
    field (None: hostile too)."""
    out = bytearray()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        n = field.number
        if field.name == "tenant_id" and field.type == FieldDescriptor.TYPE_STRING and tenant_id is not None:
            out += length_delimited(n, tenant_id)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = field.message_type
            if inner.full_name in VALUE_TYPES and draw(st.integers(0, 3)) == 0:
                out += length_delimited(n, draw(deep_value))
                built.poisoned = True
                continue
            if depth >= 4:
                continue
            count = 1 if not field.is_repeated else draw(st.sampled_from([1, 2, 3, 1500]))
            item = length_delimited(n, draw(hostile_message(inner, tenant_id, depth + 1, built=built)))
            out += item * count if count > 3 else b"".join(
                length_delimited(n, draw(hostile_message(inner, tenant_id, depth + 1, built=built))) for _ in range(count)
            )
        elif field.is_repeated:
            count = draw(st.sampled_from([1, 2, 3, 20_000]))
            if count > 3:
                out += scalar(field, draw, built, st.sampled_from([b"", b"\x01", b"a b"])) * count
            else:
                out += b"".join(scalar(field, draw, built, hostile_string) for _ in range(count))
        else:
            out += scalar(field, draw, built, hostile_string)
    return bytes(out)


@st.composite
def hostile_request(draw: Any, method: MethodDescriptor, canary: str) -> tuple[bytes, str]:
    """A hostile request for `method`, and which tenant it names. It names the canary
    only when something in it must be refused (NUL, non-UTF-8, too deep), so any write
    to the canary is a fault."""
    built = Built()
    target = draw(st.sampled_from(["hostile", "missing", "canary"]))
    tenant = {"hostile": None, "missing": MISSING_TENANT.encode(), "canary": canary.encode()}[target]
    body = draw(hostile_message(method.input_type, tenant, built=built))
    if target == "canary" and not built.poisoned:
        others = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING and f.name != "tenant_id"]
        if others:
            body += length_delimited(draw(st.sampled_from(others)).number, draw(st.sampled_from(list(POISON.values()))))
        else:
            body = body.replace(canary.encode(), MISSING_TENANT.encode())
            target = "missing"
    return body, target


# --- plausible requests, then mutated --------------------------------------------------

PLAUSIBLE = {
    "tenant_id": [MISSING_TENANT],
    # Never a valid slug, plan or key name: a mutated request must not create anything.
    "slug": ["Not A Slug!"],
    "name": ["Not A Name!"],
}
plausible_string = st.sampled_from(["alice", "user", "invoice.read", "emea/de", "invoice", "x", MISSING_TENANT])


@st.composite
def plausible_message(draw: Any, descriptor: Descriptor, depth: int = 0) -> bytes:
    out = bytearray()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        n, t = field.number, field.type
        count = draw(st.integers(1, 2)) if field.is_repeated else 1
        for _ in range(count):
            if t == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    out += length_delimited(n, draw(plausible_message(field.message_type, depth + 1)))
            elif t == FieldDescriptor.TYPE_STRING:
                choices = PLAUSIBLE.get(field.name)
                value = draw(st.sampled_from(choices) if choices else plausible_string)
                out += length_delimited(n, value.encode())
            elif t == FieldDescriptor.TYPE_BYTES:
                out += length_delimited(n, draw(st.binary(max_size=8)))
            elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64):
                out += tag(n, I64) + b"\x00" * 7 + b"\x40"
            elif t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32):
                out += tag(n, I32) + b"\x00\x00\x80\x3f"
            else:
                out += tag(n, VARINT) + varint(draw(st.integers(0, 3)))
    return bytes(out)


@st.composite
def mutated(draw: Any, seed: bytes) -> bytes:
    """`seed` broken one way (or two)."""
    body = bytearray(seed)
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["flip", "truncate", "append", "wrong wire type", "huge length", "group", "splice"]))
        at = draw(st.integers(0, len(body)))
        if kind == "flip" and body:
            i = min(at, len(body) - 1)
            body[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del body[at:]
        elif kind == "append":
            body += draw(st.binary(min_size=1, max_size=32))
        elif kind == "wrong wire type":
            body[at:at] = tag(draw(st.integers(1, 12)), draw(st.sampled_from([VARINT, I64, LEN, I32]))) + b"\x01\x00\x00\x00\x00\x00\x00\x00"
        elif kind == "huge length":
            body[at:at] = tag(draw(st.integers(1, 12)), LEN) + varint(draw(st.sampled_from([2**31 - 1, 2**32, 2**63, 2**64 - 1, 4 * 2**20 + 1])))
        elif kind == "group":
            body[at:at] = tag(draw(st.integers(1, 12)), SGROUP)
        else:
            body[at:at] = body[draw(st.integers(0, len(body))):]
    return bytes(body)


# --- the canary, and each call's verdict --------------------------------------------


async def tenant_ids(client: Client) -> set[str]:
    ids: set[str] = set()
    token = ""
    while True:
        page = await client.admin.ListTenants(
            admin_pb2.ListTenantsRequest(page_size=100, page_token=token), metadata=client.auth
        )
        ids.update(t.id for t in page.tenants)
        token = page.next_page_token
        if not token:
            return ids


@pytest.fixture(scope="module")
async def canary(client: Client) -> dict[str, Any]:
    """A real, active tenant with a role and a member, and what the database held before
    the fuzzing started."""
    tenant = await client.tenant(f"fuzz-canary-{secrets.token_hex(3)}")
    await client.grant(
        tenant.id, common_pb2.Subject(type="user", id="alice"), "clerk", "emea", ["invoice.read"]
    )
    current = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=client.auth)
    return {"id": tenant.id, "revision": current.revision, "tenants": await tenant_ids(client)}


async def verdict(
    client: Client, error_log: ErrorRecords, method: MethodDescriptor, body: bytes, authenticated: bool
) -> grpc.aio.AioRpcError | None:
    """Call `method` with `body`; fail on UNKNOWN/INTERNAL, a bare INVALID_ARGUMENT, or
    anything logged at ERROR."""
    before = len(error_log.records)
    error = await call_raw(client.channel, method, body, client.auth if authenticated else ())
    shown = body[:120].hex() + ("…" if len(body) > 120 else "")
    if error is not None:
        assert error.code() not in NEVER, (path_of(method), authenticated, error.code(), error.details(), shown)
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert rpc_status.from_call(error) is not None, (path_of(method), error.details(), shown)  # type: ignore[arg-type]
    logged = error_log.describe()[before:]
    assert not logged, (path_of(method), authenticated, shown, logged)
    return error


# --- the fuzzing ----------------------------------------------------------------------


def test_every_served_service_is_fuzzed() -> None:
    names = {s.full_name for s in SERVICES}
    assert {"gatehouse.v1.AccessService", "gatehouse.v1.ConfigService", "gatehouse.v1.AdminService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
            "envoy.service.auth.v3.Authorization", "gatehouse.v1.LookupService"} <= names
    assert len(METHODS) >= 33, IDS


async def test_reflection_lists_nothing_unfuzzed(client: Client, canary: dict[str, Any]) -> None:
    """What the server itself says it serves is what this suite calls."""
    body = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    stream = client.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([body]))
    async for response in stream:
        served = {s.name for s in response.list_services_response.service}
        break
    assert served and served <= {s.full_name for s in SERVICES}, served


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@FUZZ
@given(body=st.binary(max_size=256), authenticated=st.booleans())
async def test_random_bytes(client: Client, error_log: ErrorRecords, canary: dict[str, Any], method: MethodDescriptor, body: bytes, authenticated: bool) -> None:
    await verdict(client, error_log, method, body, authenticated)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@FUZZ
@given(data=st.data(), authenticated=st.booleans())
async def test_mutated_valid_encodings(client: Client, error_log: ErrorRecords, canary: dict[str, Any], method: MethodDescriptor, data: Any, authenticated: bool) -> None:
    seed = data.draw(plausible_message(method.input_type))
    if not authenticated:
        # Without credentials nothing may be written whatever the bytes say: aim at the canary.
        seed = seed.replace(MISSING_TENANT.encode(), canary["id"].encode())
    await verdict(client, error_log, method, data.draw(mutated(seed)), authenticated)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@FUZZ
@given(data=st.data(), authenticated=st.booleans())
async def test_hostile_messages(client: Client, error_log: ErrorRecords, canary: dict[str, Any], method: MethodDescriptor, data: Any, authenticated: bool) -> None:
    body, target = data.draw(hostile_request(method, canary["id"]))
    await verdict(client, error_log, method, body, authenticated)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
async def test_over_the_message_cap(client: Client, error_log: ErrorRecords, canary: dict[str, Any], method: MethodDescriptor) -> None:
    """Above the 4 MiB receive cap: grpc refuses it (RESOURCE_EXHAUSTED) before any handler."""
    field = method.input_type.fields[0] if method.input_type.fields else None
    body = length_delimited(field.number if field else 1, b"x" * (4 * 2**20 + 1))
    error = await verdict(client, error_log, method, body, True)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error


@pytest.mark.parametrize("levels", [32, 33, 60, 100, 1000])
@pytest.mark.parametrize("shape", ["struct", "list"])
@pytest.mark.parametrize("path", ["/gatehouse.v1.AdminService/CreateTenant", "/gatehouse.v1.AdminService/PatchTenantConfig"])
async def test_deep_settings(client: Client, error_log: ErrorRecords, canary: dict[str, Any], path: str, shape: str, levels: int) -> None:
    """settings / settings_patch nested 32 levels is the most allowed (then NOT_FOUND:
    the tenant is missing; CreateTenant: the slug), deeper is INVALID_ARGUMENT, for the
    canary too."""
    nested = struct_nested(levels) if shape == "struct" else list_nested(levels - 1)
    if path.endswith("CreateTenant"):
        body = length_delimited(1, b"Not A Slug!") + length_delimited(5, nested)
        expected_at_limit = grpc.StatusCode.INVALID_ARGUMENT  # the slug
    else:
        body = length_delimited(1, (MISSING_TENANT if levels <= 32 else canary["id"]).encode()) + length_delimited(3, nested)
        expected_at_limit = grpc.StatusCode.NOT_FOUND
    error = await verdict(client, error_log, BY_PATH[path], body, True)
    assert error is not None
    if levels <= 32:
        assert error.code() == expected_at_limit, (error.code(), error.details())
    else:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        _, fields = details(error)
        # Deeper than protobuf's own 100-level parse limit (3 message levels per JSON
        # level: Struct, map entry, Value) the bytes are no request at all.
        assert fields and fields[0].startswith("settings" if levels == 33 else ("settings", "request")), fields


@pytest.mark.parametrize("levels", [32, 33, 60, 100, 1000])
@pytest.mark.parametrize("shape", ["struct", "list"])
@pytest.mark.parametrize("where", ["context", "resource.attributes", "subject.attributes", "batch"])
async def test_deep_attributes(client: Client, error_log: ErrorRecords, where: str, shape: str, levels: int) -> None:
    """CheckAccess parses for itself (remembered answers come first), so its attributes and
    context (issue 18) get `decode`'s Struct rules there: 32 levels is the most allowed
    (then an answer: the tenant is missing), deeper is INVALID_ARGUMENT naming the field."""
    nested = struct_nested(levels) if shape == "struct" else list_nested(levels - 1)
    check = length_delimited(1, MISSING_TENANT.encode()) + length_delimited(2, length_delimited(1, b"user") + length_delimited(2, b"a"))
    check += length_delimited(3, b"doc.read")
    if where == "context" or where == "batch":
        check += length_delimited(6, nested)
    elif where == "resource.attributes":
        check += length_delimited(4, length_delimited(4, nested))
    else:
        check = length_delimited(1, MISSING_TENANT.encode()) + length_delimited(
            2, length_delimited(1, b"user") + length_delimited(2, b"a") + length_delimited(3, nested)
        ) + length_delimited(3, b"doc.read")
    path = "/gatehouse.v1.AccessService/CheckAccessBatch" if where == "batch" else "/gatehouse.v1.AccessService/CheckAccess"
    body = length_delimited(1, check) if where == "batch" else check
    error = await verdict(client, error_log, BY_PATH[path], body, True)
    if levels <= 32:
        assert error is None, (error.code(), error.details())
        return
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    _, fields = details(error)
    field = "checks[0].context" if where == "batch" else where
    assert fields and fields[0].startswith(field if levels == 33 else (field, "request")), fields


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "operator"])
async def test_smallest_case_from_the_issue(client: Client, error_log: ErrorRecords, authenticated: bool) -> None:
    """`0a 05 61 62`: field 1 says five bytes follow, two do."""
    error = await verdict(client, error_log, BY_PATH["/gatehouse.v1.AdminService/GetTenant"], bytes.fromhex("0a056162"), authenticated)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(error)
    assert info.reason == "GATEHOUSE_INVALID_ARGUMENT" and fields == ["request"]


async def test_nothing_was_written(client: Client, error_log: ErrorRecords, canary: dict[str, Any]) -> None:
    """Last in this module: the canary is where it was, no tenant appeared, nothing was
    logged at ERROR all along."""
    current = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=canary["id"]), metadata=client.auth)
    assert current.revision == canary["revision"]
    assert await tenant_ids(client) == canary["tenants"]
    assert not error_log.records, error_log.describe()


# --- what the fuzzer found (each input as it first showed the fault) --------------------


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "operator"])
async def test_found_health_watch_failed_every_call(client: Client, error_log: ErrorRecords, authenticated: bool) -> None:
    """Health's Watch writes with `context.write` instead of yielding: behind the one
    decoding step it failed UNKNOWN (and an ERROR traceback) for every request, the
    empty one included. Now it streams, and bad bytes are INVALID_ARGUMENT."""
    watch = BY_PATH["/grpc.health.v1.Health/Watch"]
    for body in (b"", health_pb2.HealthCheckRequest(service="gatehouse.v1.AccessService").SerializeToString()):
        stream = client.channel.unary_stream(
            path_of(watch), request_serializer=lambda b: b, response_deserializer=health_pb2.HealthCheckResponse.FromString
        )(body, metadata=client.auth if authenticated else (), timeout=5)
        async for response in stream:
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            break
        stream.cancel()
    error = await verdict(client, error_log, watch, bytes.fromhex("0a056162"), authenticated)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "path, body, field",
    [
        # CreateApiKey.expires_at = {nanos: -1}: protobuf's ToNanoseconds raised ValueError (INTERNAL).
        ("/gatehouse.v1.AdminService/CreateApiKey", "2a0b10ffffffffffffffffff01", "expires_at"),
        # ListAuditEvents.until, the same.
        ("/gatehouse.v1.AdminService/ListAuditEvents", "2a0b10ffffffffffffffffff01", "until"),
        # since = {seconds: 2**63 - 1}: past 9999-12-31.
        ("/gatehouse.v1.AdminService/ListAuditEvents", "220a08ffffffffffffffff7f", "since"),
        # expires_at = {nanos: 1e9}.
        ("/gatehouse.v1.AdminService/CreateApiKey", "2a06108094ebdc03", "expires_at"),
        # AssignRole.expires_at (issue 18) = {nanos: -1}, {nanos: 1e9}, {seconds: 2**63 - 1}.
        ("/gatehouse.v1.AdminService/AssignRole", "320b10ffffffffffffffffff01", "expires_at"),
        ("/gatehouse.v1.AdminService/AssignRole", "3206108094ebdc03", "expires_at"),
        ("/gatehouse.v1.AdminService/AssignRole", "320a08ffffffffffffffff7f", "expires_at"),
    ],
    ids=[
        "key-expiry-negative-nanos", "audit-until-negative-nanos", "audit-since-max-seconds", "key-expiry-nanos-1e9",
        "grant-expiry-negative-nanos", "grant-expiry-nanos-1e9", "grant-expiry-max-seconds",
    ],
)
@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "operator"])
async def test_found_invalid_timestamps(client: Client, error_log: ErrorRecords, path: str, body: str, field: str, authenticated: bool) -> None:
    """A Timestamp protobuf cannot convert is INVALID_ARGUMENT naming it, for everyone."""
    error = await verdict(client, error_log, BY_PATH[path], bytes.fromhex(body), authenticated)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    _, fields = details(error)
    assert fields == [field], fields


# --- found by the breaker session (each failed before its fix) ------------------------------


async def test_found_hostile_values_inside_the_documented_ranges(client: Client, unique: str) -> None:
    """The last nanosecond of 9999 (inside the Timestamp range) rounded up to the year
    10000 as float seconds; NaN and Infinity have no JSON, so a settings value holding
    one failed to convert. Both were INTERNAL with a traceback."""
    from google.protobuf import struct_pb2, timestamp_pb2

    from gatehouse_client.v1 import admin_pb2

    tenant = await client.tenant(f"hostile-{unique}")
    last = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999)
    listed = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id, since=last, until=last), metadata=client.auth
    )
    assert list(listed.events) == []
    key = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="far", permissions=["*"], expires_at=last),
        metadata=client.auth,
    )
    assert key.key.expires_at.seconds >= 253402300798  # float seconds: within a second of the end of 9999
    for number in (float("nan"), float("inf"), float("-inf")):
        patch = struct_pb2.Struct()
        patch.update({"a": {"b": [1, number]}})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.admin.PatchTenantConfig(
                admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, settings_patch=patch), metadata=client.auth
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must be a finite number" in refused.value.details()


async def test_found_page_tokens_with_values_the_database_refuses(client: Client) -> None:
    """A page token is opaque but not trusted: one made by hand holding a number beyond
    bigint or a lone surrogate reached Postgres and came back INTERNAL, unlogged."""
    import base64
    import json

    from gatehouse_client.v1 import admin_pb2

    def token(key: list[object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")

    calls = [
        client.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_token=token([10**30])), metadata=client.auth),
        client.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_token=token([-(2**63) - 1])), metadata=client.auth),
        client.admin.ListTenants(admin_pb2.ListTenantsRequest(page_token=token(["\ud800"])), metadata=client.auth),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


async def test_found_deep_field_paths_keep_the_status_within_the_trailer_limit(client: Client, unique: str) -> None:
    """Ten violations with ~1.4 KB paths (long keys, deep) made a status bigger than the
    client accepts: it saw RESOURCE_EXHAUSTED and no details at all."""
    from google.protobuf import struct_pb2

    from gatehouse_client.v1 import admin_pb2

    tenant = await client.tenant(f"deep-paths-{unique}")
    value: dict[str, object] = {"leaf": "a\x00b"}  # a NUL: one violation per copy, deep down
    for level in range(24):
        value = {f"level-{level:02d}-" + "k" * 30: value}
    patch = struct_pb2.Struct()
    patch.update({f"top-{i}-" + "x" * 60: value for i in range(10)})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.admin.PatchTenantConfig(
            admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, settings_patch=patch), metadata=client.auth
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fields = details(refused.value)
    assert fields and all(len(f) <= 160 for f in fields)


def test_the_hot_requests_hold_only_fields_their_own_validation_covers() -> None:
    """CheckAccess, CheckAccessBatch and GetTenantConfig parse for themselves (remembered
    answers come first) and skip the shared checks of `server/wire.decode` (storable
    strings, nesting, timestamps); their own rules cover every field they have today. A
    field added to one of them fails here until its validation is added too."""

    def leaves(descriptor: Descriptor, prefix: str = "") -> set[str]:
        found: set[str] = set()
        for field in descriptor.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Struct":
                found.add(f"{prefix}{field.name}")  # a leaf here: checked whole (access._facts_violations)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found |= leaves(field.message_type, f"{prefix}{field.name}{'[]' if field.is_repeated else ''}.")
            else:
                found.add(f"{prefix}{field.name}")
        return found

    check = {
        "tenant_id", "subject.type", "subject.id", "permission", "resource.type", "resource.id", "resource.scope",
        "min_revision", "subject.attributes", "resource.attributes", "context",
    }
    assert leaves(access_pb2.CheckAccessRequest.DESCRIPTOR) == check
    assert leaves(access_pb2.CheckAccessBatchRequest.DESCRIPTOR) == {f"checks[].{name}" for name in check}
    assert leaves(config_pb2.GetTenantConfigRequest.DESCRIPTOR) == {"tenant_id", "if_revision_newer_than", "min_revision"}
