"""The fault proxy itself (tests/faults.py), against a small echo server and real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.faults import Direction, FaultProxy

MakeProxy = Callable[[int], Awaitable[FaultProxy]]


class Echo:
    """A TCP echo server on a free loopback port that counts what it received."""

    def __init__(self) -> None:
        self.received = b""
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.start()
    yield server
    server.close()


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 2.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_pass_through_forwards_both_ways(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    reader, writer = await _connect(proxy)
    assert await _round_trip(reader, writer, b"hello") == b"hello"
    writer.close()
    assert proxy.connections == 1


async def test_delay_holds_each_chunk_each_way(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    proxy.delay(0.1)
    reader, writer = await _connect(proxy)
    started = time.monotonic()
    assert await _round_trip(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.2  # 0.1 s there, 0.1 s back
    writer.close()


async def test_blackhole_delivers_nothing_then_everything_in_order(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    reader, writer = await _connect(proxy)
    assert await _round_trip(reader, writer, b"a") == b"a"
    proxy.blackhole()
    writer.write(b"bc")
    # A connection opened during the blackhole is accepted and connected nowhere.
    late_reader, late_writer = await _connect(proxy)
    late_writer.write(b"late")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(2), 0.2)
    assert echo.received == b"a"
    proxy.pass_through()
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"bc"
    assert await asyncio.wait_for(late_reader.readexactly(4), 2) == b"late"
    writer.close()
    late_writer.close()


async def test_half_open_drops_one_direction(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    reader, writer = await _connect(proxy)
    proxy.half_open(Direction.TO_CLIENT)
    writer.write(b"void")
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.2)
    assert echo.received == b"void"  # the server got it; its answer vanished
    writer.close()


async def test_reset_sends_rst_and_new_connections_work(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    reader, writer = await _connect(proxy)
    assert await _round_trip(reader, writer, b"x") == b"x"
    proxy.reset()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await _round_trip(reader, writer, b"y")
    reader2, writer2 = await _connect(proxy)
    assert await _round_trip(reader2, writer2, b"z") == b"z"
    writer2.close()


async def test_refuse_then_accept_again_on_the_same_port(fault_proxy: MakeProxy, echo: Echo) -> None:
    proxy = await fault_proxy(echo.port)
    port = proxy.port
    await proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy)
    await proxy.accept_again()
    assert proxy.port == port
    reader, writer = await _connect(proxy)
    assert await _round_trip(reader, writer, b"back") == b"back"
    writer.close()


async def test_redis_through_the_proxy_and_a_blackhole(fault_proxy: MakeProxy, redis_url: str) -> None:
    proxy = await fault_proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    client = aioredis.from_url(f"redis://{proxy.host}/0", socket_timeout=0.2)
    try:
        assert await client.ping()
        proxy.blackhole()
        with pytest.raises(Exception):
            await client.ping()
        proxy.pass_through()
        assert await client.ping()
    finally:
        await client.aclose()
