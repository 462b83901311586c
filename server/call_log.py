"""The call's log scope, and the access log: an interceptor of the chain (the outermost).

For each method, at registration (server/interceptors.py), `CallLog` decides what it
does per call:

* AdminService (and health, reflection): opens the call's `CallScope` (gatehouse/logs.py),
  so every line logged during the call carries its request id and trace id; for
  AdminService it then writes one access line per call, whatever its outcome.
* The hot methods (AccessService, ConfigService, Envoy's ext_authz Check): nothing at all (the handler is returned
  as it was) unless the hot access log (`GATEHOUSE_ACCESS_LOG_HOT=1`) or the decision log
  is on. The decision log needs only the scope (its lines carry the request id); the hot
  access log also parses the request bytes once more for the tenant.

An access line (logger `gatehouse.access`, level INFO, so `GATEHOUSE_LOG_LEVEL=WARNING`
silences it) has `method`, `code` (the final gRPC status name), `duration_ms` (from the
interceptor's entry to its exit, so admission and every later link included), `peer`,
`tenant` when the request names a valid tenant id, `actor` (`api_key/<id>`,
`operator:bootstrap`) once AdminService authenticated the caller, never the key itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from gatehouse import logs
from gatehouse.engine.patterns import is_valid_tenant_id
from gatehouse.server.interceptors import StreamHandler, UnaryHandler, _code
from gatehouse.envoy_api.envoy.service.auth.v3 import external_auth_pb2
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2

access_log = logging.getLogger("gatehouse.access")

ADMIN_PREFIX = "/" + admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name + "/"
_HOT_SERVICES = (
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"],
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],  # Envoy's ext_authz Check
)
# Full method name -> its descriptor, for the methods that answer from memory on the hot path.
HOT_METHODS: dict[str, MethodDescriptor] = {
    f"/{service.full_name}/{method.name}": method for service in _HOT_SERVICES for method in service.methods
}
_ADMIN_METHODS: dict[str, MethodDescriptor] = {
    f"{ADMIN_PREFIX}{method.name}": method
    for method in admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods
}


class CallLog:
    """The call scope and access log (see the module). `hot`: access-log the hot methods
    too; `scope_hot`: open a call scope on the hot methods (the decision log is on)."""

    def __init__(self, *, hot: bool = False, scope_hot: bool = False) -> None:
        self._hot = hot
        self._scope_hot = scope_hot or hot

    def _plan(self, method: str) -> tuple[bool, bool, type[Message] | None]:
        """(open a scope, write an access line, request type to read the tenant from)."""
        descriptor = HOT_METHODS.get(method)
        if descriptor is not None:
            access = self._hot and access_log.isEnabledFor(logging.INFO)
            return self._scope_hot, access, _tenant_type(descriptor) if access else None
        descriptor = _ADMIN_METHODS.get(method)
        if descriptor is not None:
            access = access_log.isEnabledFor(logging.INFO)
            return True, access, _tenant_type(descriptor) if access else None
        return True, False, None

    def unary(self, method: str, handler: UnaryHandler) -> UnaryHandler:
        scoped, access, request_type = self._plan(method)
        if not scoped:
            return handler
        if not access:

            async def scoped_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = logs.enter_call(logs.CallScope(method, context.invocation_metadata))
                try:
                    return await handler(request, context)
                finally:
                    logs.leave_call(token)

            return scoped_call

        async def logged_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            scope = logs.CallScope(method, context.invocation_metadata)
            token = logs.enter_call(scope)
            started = time.perf_counter()
            code = "OK"
            try:
                return await handler(request, context)
            except BaseException as error:
                code = _code(context, error)
                raise
            finally:
                _access_line(scope, request, request_type, context, code, started, None)
                logs.leave_call(token)

        return logged_call

    def stream(self, method: str, handler: StreamHandler) -> StreamHandler:
        scoped, access, request_type = self._plan(method)
        if not scoped:
            return handler

        async def streamed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # An async generator runs in the context of whoever iterates it, step by step;
            # grpc iterates it in the call's own task, so the scope holds between yields.
            scope = logs.CallScope(method, context.invocation_metadata)
            token = logs.enter_call(scope)
            started = time.perf_counter()
            code, sent = "OK", 0
            try:
                async for response in handler(request, context):
                    sent += 1
                    yield response
            except BaseException as error:
                code = _code(context, error)
                raise
            finally:
                if access:
                    _access_line(scope, request, request_type, context, code, started, sent)
                try:
                    logs.leave_call(token)
                except ValueError:  # closed from another context (garbage collection): nothing to undo
                    scope.close()

        return streamed


def _tenant_type(method: MethodDescriptor) -> type[Message] | None:
    """The request class of `method` when its request has a `tenant_id` field."""
    if "tenant_id" not in method.input_type.fields_by_name:
        return None
    return message_factory.GetMessageClass(method.input_type)


def _access_line(
    scope: logs.CallScope,
    request: Any,
    request_type: type[Message] | None,
    context: grpc.aio.ServicerContext[Any, Any],
    code: str,
    started: float,
    sent: int | None,
) -> None:
    fields: dict[str, Any] = {
        "method": scope.method,
        "code": code,
        "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "peer": context.peer(),
    }
    tenant = _tenant(request, request_type)
    if tenant:
        fields["tenant"] = tenant
    if scope.fields:
        fields.update(scope.fields)
    if sent is not None:
        fields["messages"] = sent
    access_log.info("%s %s", scope.method.rpartition("/")[2], code, extra=fields)


def _tenant(request: Any, request_type: type[Message] | None) -> str:
    """The request's `tenant_id` when it is a valid one (the request is raw bytes here)."""
    if request_type is None or not isinstance(request, bytes):
        return ""
    try:
        tenant = getattr(request_type.FromString(request), "tenant_id", "")
    except (DecodeError, ValueError):
        return ""
    return tenant if isinstance(tenant, str) and is_valid_tenant_id(tenant) else ""
