"""`watch_config`'s reconnect pace against a server that ends every stream right after
its first message (a sidecar draining, or one whose Postgres cannot confirm the config):
the repeated first message is the config already yielded, so it is no sign the
connection works and must not start the backoff over; otherwise the client reopens the
stream every ~50 ms for ever (and `retries` never runs out)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from typing import Any, Iterator

import grpc
import pytest

from gatehouse_client import AsyncClient, Client, GatehouseError
from gatehouse_client.v1 import config_pb2, config_pb2_grpc
from tests.dependencies import free_port

TENANT = "00000000-0000-4000-8000-000000000001"


class FirstMessageThenUnavailable(config_pb2_grpc.ConfigServiceServicer):
    """Every WatchTenantConfig: the same config (revision 7), then UNAVAILABLE."""

    def __init__(self) -> None:
        self.streams = 0
        self._lock = threading.Lock()

    def WatchTenantConfig(self, request: Any, context: grpc.ServicerContext) -> Iterator[config_pb2.TenantConfig]:
        with self._lock:
            self.streams += 1
        yield config_pb2.TenantConfig(id=request.tenant_id, revision=7)
        context.abort(grpc.StatusCode.UNAVAILABLE, "draining")


@pytest.fixture
def hostile() -> Iterator[tuple[str, FirstMessageThenUnavailable]]:
    servicer = FirstMessageThenUnavailable()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    config_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    yield target, servicer
    server.stop(0)


WINDOW = 3.0  # seconds watched
# Backoff growing from 0.1 s and doubling to 2 s (full jitter) opens a handful of streams
# in WINDOW; restarting at the first wait every time opens ~60.
MOST_STREAMS = 15


def test_a_blocking_watch_backs_off_when_every_stream_repeats_the_config_and_ends(
    hostile: tuple[str, FirstMessageThenUnavailable],
) -> None:
    target, servicer = hostile
    client = Client(target, key="")
    watch = client.watch_config(TENANT)
    assert next(watch).revision == 7
    done = threading.Event()

    def drain() -> None:
        try:
            for _ in watch:
                pass
        except (GatehouseError, ValueError):
            pass
        finally:
            done.set()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    time.sleep(WINDOW)
    streams = servicer.streams
    client.close()
    assert done.wait(10), "the watch did not stop after close()"
    assert streams <= MOST_STREAMS, f"{streams} streams in {WINDOW} s: the backoff never grows"


async def test_retries_runs_out_when_every_stream_only_repeats_the_config(
    hostile: tuple[str, FirstMessageThenUnavailable],
) -> None:
    target, servicer = hostile
    async with AsyncClient(target, key="") as gh:
        watch = gh.watch_config(TENANT, retries=3)
        assert (await watch.__anext__()).revision == 7
        with pytest.raises(GatehouseError) as gave_up:
            await asyncio.wait_for(watch.__anext__(), 20)
    assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE
    assert servicer.streams == 4
