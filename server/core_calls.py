"""The calls grpc's C core took for this process's server, from channelz (grpcio-channelz).

`GATEHOUSE_MAX_PENDING_CALLS` makes core refuse calls before Python takes them (README
"Overload"): those never reach the interceptor chain, so no Python counter sees them.
Core's own count does: `calls_started` counts every call core took, refused or not, so
`rate(gatehouse_grpc_core_calls_started_total) - sum(rate(grpc_server_handled_total))` is
the rate of calls core refused, and of those grpc.aio refused past
`GATEHOUSE_MAX_CONCURRENT_RPCS` before any interceptor (plus the few core holds for Python
right now, at most twice the bound, and the calls in progress). Read once per stats snapshot (1/s), never on a call.
"""

from __future__ import annotations

from typing import Any, cast

import grpc

from grpc_channelz.v1 import channelz_pb2
from grpc_channelz.v1.channelz import ChannelzServicer


class _Outside:
    """The servicer's context when it is called in-process: a NOT_FOUND it would set on a
    call is kept here (the response is then None)."""

    code: Any = None

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        pass


def _outside() -> grpc.ServicerContext:
    return cast(grpc.ServicerContext, _Outside())


def server_ids() -> set[int]:
    """The channelz ids of every gRPC server of this process (each gets one when created)."""
    ids: set[int] = set()
    start = 0
    while True:
        page = ChannelzServicer.GetServers(channelz_pb2.GetServersRequest(start_server_id=start), _outside())
        ids.update(server.ref.server_id for server in page.server)
        if page.end or not page.server:
            return ids
        start = max(ids) + 1


class CoreCalls:
    """One server's channelz counters: {"calls_started", "calls_succeeded", "calls_failed"}.

    `server_id` is found by `server_ids()` before and after creating the server (grpc.aio
    does not expose it); None (no new id seen) reports nothing."""

    def __init__(self, server_id: int | None) -> None:
        self.server_id = server_id

    def values(self) -> dict[str, float]:
        if self.server_id is None:
            return {}
        response: channelz_pb2.GetServerResponse | None = ChannelzServicer.GetServer(
            channelz_pb2.GetServerRequest(server_id=self.server_id), _outside()
        )
        if response is None:  # the server is gone (GetServer answers NOT_FOUND through the context)
            return {}
        data = response.server.data
        return {
            "calls_started": float(data.calls_started),
            "calls_succeeded": float(data.calls_succeeded),
            "calls_failed": float(data.calls_failed),
        }
