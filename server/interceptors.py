"""The one interceptor chain: what runs around every call of every service.

Every handler is built or registered by `server.wire.register_service`, which wraps it in
the chain given to it, in order (the first interceptor is outermost). An interceptor sees
the full method name (`/gatehouse.v1.AccessService/CheckAccess`) once, at registration,
and returns the handler to use instead, so one that does nothing for a method costs
nothing per call. This is where authentication, metrics and tracing plug in.

`CallCounter`, the first link, counts calls by method and final status code into the
stats registry (the "R" and "E" of RED). Cost on the hot path: one extra coroutine frame,
a try/except and a Counter increment, 0.12-0.18 µs per call in-process (a bare coroutine
against the same wrapped, 200,000 awaits, 3 runs), next to ~16 µs for a remembered
CheckAccess.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, Sequence, cast

import grpc

UnaryHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class Interceptor(Protocol):
    def unary(self, method: str, handler: UnaryHandler) -> UnaryHandler: ...
    def stream(self, method: str, handler: StreamHandler) -> StreamHandler: ...


class _AioMethodHandler(Protocol):
    """A `grpc.RpcMethodHandler` as grpc.aio uses it. grpc's stubs type the sync server's
    (no `_replace`, plain functions); at run time it is a namedtuple of async functions."""

    unary_unary: UnaryHandler | None
    # An async generator function, or (grpc's own servicers) a coroutine function that
    # writes with context.write: `wrap` tells them apart.
    unary_stream: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any] | None
    stream_stream: StreamHandler | None

    def _replace(self, **behaviour: Any) -> grpc.RpcMethodHandler[Any, Any]: ...


class Chain:
    """Interceptors applied in order around each handler at registration."""

    def __init__(self, interceptors: Sequence[Interceptor] = ()) -> None:
        self._interceptors = tuple(interceptors)

    @property
    def interceptors(self) -> tuple[Interceptor, ...]:
        """The links, outermost first."""
        return self._interceptors

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` (for the full `method` name) inside every interceptor of the chain."""
        for interceptor in reversed(self._interceptors):
            aio = cast(_AioMethodHandler, handler)
            if aio.unary_unary is not None:
                handler = aio._replace(unary_unary=interceptor.unary(method, aio.unary_unary))
            elif aio.unary_stream is not None:
                inner = aio.unary_stream
                # A streaming method either yields its messages or (grpc's own servicers)
                # writes them with context.write and returns: wrap each as what it is.
                wrapped = interceptor.stream(method, inner) if inspect.isasyncgenfunction(inner) else interceptor.unary(
                    method, inner
                )
                handler = aio._replace(unary_stream=wrapped)
            elif aio.stream_stream is not None:
                handler = aio._replace(stream_stream=interceptor.stream(method, aio.stream_stream))
        return handler


class CallCounter:
    """Calls by (full method, final status code name)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()

    def unary(self, method: str, handler: UnaryHandler) -> UnaryHandler:
        calls = self.calls
        ok = (method, "OK")

        async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                response = await handler(request, context)
            except BaseException:
                calls[(method, _code(context))] += 1
                raise
            calls[ok] += 1
            return response

        return counted

    def stream(self, method: str, handler: StreamHandler) -> StreamHandler:
        calls = self.calls

        async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                async for response in handler(request, context):
                    yield response
            except BaseException:
                calls[(method, _code(context))] += 1
                raise
            calls[(method, "OK")] += 1

        return counted

    def values(self) -> dict[str, float]:
        """For the stats registry: `calls{method=...,code=...}`."""
        return {f"calls{{method={m},code={c}}}": n for (m, c), n in self.calls.items()}


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _code(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # After context.abort() the context holds the code sent; an exception that escaped
    # with none set leaves as UNKNOWN (which server/errors.py is there to prevent), and a
    # cancelled call has no code of its own. (grpc's stubs say it is always a StatusCode:
    # it is whatever was set, a StatusCode or cygrpc's int, or None.)
    code: object = context.code()
    if code is None:
        return "CANCELLED" if context.cancelled() else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(code, str(code)) if isinstance(code, int) else str(code)
