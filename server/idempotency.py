"""The `idempotency-key` header of admin mutations, applied in one place (`admin_call`).

Same caller + same key + same request (method and deterministic serialization) within
24 hours: the first call runs, every other gets its response, even when they arrive at
once (the store's claim decides who runs; the others wait for its answer). Same key with
another request: FAILED_PRECONDITION GATEHOUSE_IDEMPOTENCY_KEY_REUSED. See
`gatehouse.store.idempotency` for how claims are kept.

A CreateApiKey response is stored without its secret (a secret is shown once and kept
nowhere): its replay carries the same key, revision and an empty `secret`.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Awaitable, Callable, Sequence

from google.protobuf import message_factory
from google.protobuf.message import Message

from gatehouse.errors import IdempotencyKeyReused, InvalidArgument, Unavailable
from gatehouse.store.api import IdempotencyLog
from gatehouse.store.idempotency import ClaimState
from gatehouse_client.v1 import admin_pb2

HEADER = "idempotency-key"
REPLAY_REASON = "GATEHOUSE_IDEMPOTENT_REPLAY"
WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.02
_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
# Mutations of this process answered with a stored response (a count; the stats registry reads it).
replays = 0


def _header(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    values = [v for k, v in metadata if k == HEADER]
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
        raise InvalidArgument(HEADER, "one header of 1-128 printable characters")
    return value


def _stored(response: Message) -> bytes:
    if isinstance(response, admin_pb2.CreateApiKeyResponse):
        redacted = admin_pb2.CreateApiKeyResponse()
        redacted.CopyFrom(response)
        redacted.secret = ""
        return redacted.SerializeToString(deterministic=True)
    return response.SerializeToString(deterministic=True)


async def run_idempotent(
    keys: IdempotencyLog,
    principal: str,
    rpc: str,
    request: Any,
    metadata: Sequence[tuple[str, str | bytes]],
    call: Callable[[], Awaitable[Any]],
) -> tuple[bool, Any]:
    """(replayed, response): run `call` once per idempotency key, or replay its answer."""
    key = _header(metadata)
    if key is None:
        return False, await call()
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        claim = await keys.claim(principal, key, rpc, digest)
        if claim.state is ClaimState.MISMATCH:
            raise IdempotencyKeyReused(
                "this idempotency key was used for a different request", metadata={"idempotency_key": key}
            )
        if claim.state is ClaimState.DONE:
            global replays
            replays += 1
            output = message_factory.GetMessageClass(_SERVICE.methods_by_name[rpc].output_type)
            return True, output.FromString(claim.response or b"")
        if claim.state is ClaimState.CLAIMED:
            break
        if loop.time() > deadline:  # RUNNING: an identical call is still at work
            raise Unavailable("a call with this idempotency key is still running; retry later")
        await asyncio.sleep(_POLL_SECONDS)
    try:
        response = await call()
    except BaseException:
        await asyncio.shield(keys.release(principal, key))
        raise
    await keys.complete(principal, key, _stored(response))
    return False, response
