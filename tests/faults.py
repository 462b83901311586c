"""One fault-injection layer for every adversity test: a small TCP proxy.

In the style of asyncpg's `_testbase/fuzzer.py`: a test points Gatehouse (or any
client) at the proxy's loopback port instead of Postgres or Redis, and the proxy
forwards to the real server until the test changes its mode:

| mode | existing connections | new connections |
|---|---|---|
| `pass_through()` | bytes flow (held ones are delivered, in order) | connected to the target |
| `delay(s)` | every chunk is delivered `s` seconds after it arrived, each way (a round trip: +2 s) | the same |
| `blackhole()` | nothing is delivered either way; bytes are held, as TCP would retransmit them, and delivered when it ends | accepted, but not connected onward until it ends: connect succeeds, nothing answers |
| `half_open(direction)` | bytes one way are dropped (never delivered): the peer writes into the void | the same |
| `reset()` | closed with a RST (SO_LINGER 0) on both sides, at once | unaffected |
| `refuse()` | unaffected (combine with `reset()`) | refused: the listening socket is closed (`accept_again()` reopens it on the same port) |

The proxy never touches the server behind it, so it may front the shared Postgres and
Redis (a test's own database or key prefix) as well as private instances: only the
test's own connections see the fault. `fault_proxy` (a fixture) makes proxies and closes
them after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from typing import AsyncIterator, Awaitable, Callable

import pytest


class Direction(enum.Enum):
    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


_EOF = b""


class _Link:
    """One proxied connection: the client's side, the server's side, their pumps."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in (self.client, self.server):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A TCP proxy from a free loopback port to `target_host:target_port`, with faults."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._delay = 0.0
        self._dropped: set[Direction] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`: what a DSN or URL names instead of the target."""
        return f"127.0.0.1:{self.port}"

    # --- modes -------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything at once; bytes held by a blackhole are delivered now."""
        self._delay = 0.0
        self._dropped.clear()
        self._flowing.set()

    def delay(self, seconds: float) -> None:
        """Deliver every chunk `seconds` after it arrived, in each direction."""
        self._delay = seconds

    def blackhole(self) -> None:
        """Deliver nothing either way (held until the mode changes), connect nothing onward."""
        self._flowing.clear()

    def half_open(self, direction: Direction = Direction.TO_CLIENT) -> None:
        """Drop every byte going `direction`: the sender's writes succeed, and vanish."""
        self._dropped.add(direction)

    def reset(self) -> None:
        """RST every open connection (both sides) now; new connections are unaffected."""
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def refuse(self) -> None:
        """Close the listening socket: new connections are refused until `accept_again()`."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def accept_again(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            await self._listen(self.port)

    # --- running -------------------------------------------------------------------------

    async def start(self) -> "FaultProxy":
        await self._listen(0)
        return self

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        await self.refuse()
        self._flowing.set()
        self.reset()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(client_writer)
        self._links.add(link)
        to_server: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        link.tasks.append(asyncio.create_task(self._read(client_reader, to_server)))
        try:
            await self._flowing.wait()  # a blackhole: accepted, connected nowhere
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            link.reset()
            self._links.discard(link)
            return
        link.server = server_writer
        to_client: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        link.tasks.append(asyncio.create_task(self._read(server_reader, to_client)))
        pumps = [
            asyncio.create_task(self._write(to_server, server_writer, Direction.TO_SERVER)),
            asyncio.create_task(self._write(to_client, client_writer, Direction.TO_CLIENT)),
        ]
        link.tasks.extend(pumps)
        try:
            await asyncio.gather(*pumps)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            for writer in (client_writer, server_writer):
                writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time(), data))
                if not data:
                    return
        except OSError:
            queue.put_nowait((loop.time(), _EOF))

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrived, data = await queue.get()
            if not self._flowing.is_set():
                await self._flowing.wait()
            if self._delay:
                due = arrived + self._delay - loop.time()
                if due > 0:
                    await asyncio.sleep(due)
            if data is _EOF or not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            if direction in self._dropped:
                continue
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def fault_proxy() -> AsyncIterator[Callable[[int], Awaitable[FaultProxy]]]:
    """`await fault_proxy(target_port)`: a started FaultProxy to 127.0.0.1:target_port,
    closed (every connection reset) after the test."""
    proxies: list[FaultProxy] = []

    async def make(target_port: int) -> FaultProxy:
        proxy = await FaultProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()
