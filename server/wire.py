"""Registering handlers that take and return raw bytes, and parsing those bytes.

The hot methods (CheckAccess, CheckAccessBatch, GetTenantConfig) are registered without
grpc's (de)serializers: they look the request's bytes up in their remembered answers
first and parse only when asked something new, and they return answers serialized once.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from gatehouse.errors import InvalidArgument

M = TypeVar("M", bound=Message)


def parse(message_type: type[M], body: bytes) -> M:
    """`body` as a `message_type`; bytes that are not one are the caller's mistake."""
    try:
        return message_type.FromString(body)
    except DecodeError:
        raise InvalidArgument("request", f"not a valid {message_type.DESCRIPTOR.name} message") from None


def register(server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """What generated `add_*Servicer_to_server` functions do, for hand-built handlers."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
