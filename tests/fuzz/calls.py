"""Calling any method of the sidecar with raw bytes, and counting the calls per method."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Sequence

import grpc
from google.protobuf.descriptor import MethodDescriptor

# Every call the fuzz suite made, by method path; printed at the end of the run (conftest).
CALLS: Counter[str] = Counter()
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def _raw(body: bytes) -> bytes:
    return body


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def call_raw(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    body: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> grpc.aio.AioRpcError | None:
    """Send `body` as the request of `method`; the error it failed with, or None. A stream
    is read up to its first message, then cancelled."""
    path = path_of(method)
    CALLS[path] += 1
    kwargs: dict[str, Any] = {"request_serializer": _raw, "response_deserializer": _raw}
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, **kwargs)(iter([body]), metadata=metadata, timeout=timeout)
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(body, metadata=metadata, timeout=timeout)
        else:
            await channel.unary_unary(path, **kwargs)(body, metadata=metadata, timeout=timeout)
            return None
        try:
            async for _ in stream:
                break
        finally:
            stream.cancel()
    except grpc.aio.AioRpcError as error:
        return error
    except asyncio.CancelledError:
        if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
    return None
