"""Real `gatehouse serve` processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from typing import IO, Mapping


class ServerProcess:
    """One sidecar subprocess; `address` is where it listens."""

    def __init__(self, process: subprocess.Popen[str], address: str, line: str = "") -> None:
        self.process = process
        self.address = address
        self.line = line  # the "serving on" line (it names the metrics URL too)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def start_server(
    env: Mapping[str, str], *args: str, command: str = "serve", stderr: IO[str] | None = None
) -> ServerProcess:
    """Start `gatehouse <command> --listen 127.0.0.1:0 ...` and wait for its "serving on" line.

    A later `--listen` in `args` wins. The log goes to `stderr` (a file, to read it
    afterwards) or, by default, to the test run's own stderr.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "gatehouse.server.cli", command, "--listen", "127.0.0.1:0", *args],
        env={**os.environ, "GATEHOUSE_LOG_LEVEL": "WARNING", **env},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=30)
    match = re.search(r"serving on (\S+)", line)
    if not match:
        process.kill()
        raise AssertionError(f"unexpected first line from server: {line!r}")
    return ServerProcess(process, match.group(1).rstrip(","), line)


def sidecar_env(database_url: str, redis_url: str, redis_prefix: str, operator_key: str) -> dict[str, str]:
    return {
        "GATEHOUSE_DATABASE_URL": database_url,
        "GATEHOUSE_REDIS_URL": redis_url,
        "GATEHOUSE_REDIS_PREFIX": redis_prefix,
        "GATEHOUSE_OPERATOR_KEY": operator_key,
    }
