"""No error reaches a caller as UNKNOWN: every lower-level failure is one of ours."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
import redis.exceptions
from google.protobuf.message import DecodeError

from gatehouse import errors
from gatehouse.server.app import Sidecar
from gatehouse.server.errors import http_error, http_status, to_status, translate
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, common_pb2, config_pb2

from tests.client import make_client
from tests.server.status import details

LOWER_LEVEL = [
    (asyncpg.ConnectionDoesNotExistError("gone"), errors.StoreUnavailable),
    (asyncpg.CannotConnectNowError("starting"), errors.StoreUnavailable),
    (asyncpg.InterfaceError("pool is closed"), errors.StoreUnavailable),
    (ConnectionRefusedError(111, "refused"), errors.StoreUnavailable),
    (asyncpg.UniqueViolationError("dup"), errors.AlreadyExists),
    (asyncpg.PostgresError("other"), errors.Internal),
    (redis.exceptions.ConnectionError("down"), errors.Unavailable),
    (redis.exceptions.TimeoutError("slow"), errors.Unavailable),
    (TimeoutError(), errors.StoreUnavailable),
    (asyncpg.UntranslatableCharacterError("\\u0000 cannot be converted to text"), errors.InvalidArgument),
    (asyncpg.CharacterNotInRepertoireError("invalid byte sequence"), errors.InvalidArgument),
    (redis.exceptions.ResponseError("WRONGTYPE"), errors.Unavailable),
    (DecodeError("Error parsing message"), errors.InvalidArgument),
    (ConnectionResetError(104, "reset by peer"), errors.StoreUnavailable),
    (KeyError("bug"), errors.Internal),
    (ValueError("bug"), errors.Internal),
]


@pytest.mark.parametrize("exc,expected", LOWER_LEVEL, ids=[type(e).__name__ for e, _ in LOWER_LEVEL])
def test_every_lower_level_error_is_translated(exc: BaseException, expected: type[errors.GatehouseError]) -> None:
    translated = translate(exc)
    assert type(translated) is expected
    status = to_status(translated)
    assert status.code not in (grpc.StatusCode.UNKNOWN.value[0], grpc.StatusCode.OK.value[0])
    assert translated.reason.startswith("GATEHOUSE_")


def test_every_error_class_has_a_status_and_stable_reason() -> None:
    seen: set[str] = set()
    stack: list[type[errors.GatehouseError]] = list(errors.GatehouseError.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        assert cls.code not in (errors.Code.OK, errors.Code.UNKNOWN)
        assert cls.reason.startswith("GATEHOUSE_") and cls.reason not in seen
        seen.add(cls.reason)


def all_error_classes() -> list[type[errors.GatehouseError]]:
    out: list[type[errors.GatehouseError]] = []
    stack: list[type[errors.GatehouseError]] = list(errors.GatehouseError.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        out.append(cls)
    return out


def test_every_error_class_has_an_http_status_and_only_a_bug_is_a_500() -> None:
    """The HTTP side of the one table (server/errors.py): a 4xx for what the caller can
    change, 429/503/504 (with Retry-After for the first two) for load and dependencies."""
    for cls in all_error_classes():
        status = http_status(cls.__new__(cls))
        if cls is errors.Internal:
            assert status == 500
        else:
            assert 400 <= status < 500 or status in (503, 504), (cls, status)
    assert http_status(errors.RequestTooLarge(10)) == 413
    assert http_status(errors.RevisionNotReached("t", 5, 4)) == 412
    status, body, headers = http_error(errors.Overloaded("hot", 1, 1500))
    assert (status, headers["Retry-After"], body["error"]["reason"]) == (429, "2", "GATEHOUSE_OVERLOADED")
    status, body, headers = http_error(errors.Unauthenticated("no key"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = http_error(errors.InvalidArgument("subject.id", "is required"))
    assert body["error"]["violations"] == [{"field": "subject.id", "description": "is required"}]
    for exc, expected in LOWER_LEVEL:
        status, body, headers = http_error(exc)
        assert status == http_status(translate(exc)) and body["error"]["status"] == status
        if issubclass(expected, errors.Unavailable):
            assert status == 503 and headers["Retry-After"] == "1"


async def test_postgres_down_is_unavailable_not_unknown(redis_url: str, redis_prefix: str) -> None:
    sidecar = Sidecar(
        Settings(
            listen="127.0.0.1:0",
            database_url="postgresql://gatehouse@127.0.0.1:1/nothing",
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            operator_key="k",
        )
    )
    await sidecar.start()
    client = make_client(sidecar.addresses[0], "k")
    try:
        request = access_pb2.CheckAccessRequest(
            tenant_id="00000000-0000-0000-0000-000000000009",
            subject=common_pb2.Subject(type="user", id="a"),
            permission="doc.read",
        )
        for call in (
            client.access.CheckAccess(request),
            client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=request.tenant_id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert details(failure.value)[0].reason == "GATEHOUSE_STORE_UNAVAILABLE"
    finally:
        await client.channel.close()
        await sidecar.stop(grace=0)


def test_every_redis_failure_skips_l2_instead_of_failing_the_call() -> None:
    """uvloop reports a connection reset mid-call as RuntimeError ("the handler is
    closed"), which redis-py does not wrap: it once escaped the L2 guard as INTERNAL."""
    import asyncio

    from gatehouse.cache.l2 import RedisL2
    from gatehouse.redis_failures import REDIS_FAILURES

    reset = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    # The cluster client's "no node answers" and "slot has no master" are no RedisError.
    cluster_down = [redis.exceptions.RedisClusterException("cannot be connected"), redis.exceptions.SlotNotCoveredError("7")]
    raised = [redis.exceptions.ConnectionError("down"), ConnectionResetError(104, "reset"), TimeoutError(), reset, *cluster_down]
    assert all(isinstance(e, REDIS_FAILURES) for e in raised)
    l2 = RedisL2.from_url("redis://127.0.0.1:1/0", prefix="x", ttl_seconds=1, timeout=0.1)

    async def run() -> list[object]:
        results = []
        for error in raised:
            async def failing() -> object:
                raise error
            l2._down_until = 0.0
            results.append(await l2._guard(failing, "fallback"))
        await l2.close()
        return results

    assert asyncio.run(run()) == ["fallback"] * len(raised)
