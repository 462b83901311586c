"""Metrics settings and the multiprocess directory: what must run before anything imports
prometheus_client, which picks where its values live (memory, or mmap'd files in
`PROMETHEUS_MULTIPROC_DIR`) once, at import. So this module imports none of it."""

from __future__ import annotations

import glob
import ipaddress
import os
import shutil
import socket
import tempfile

from gatehouse.server.listeners import host_port

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OFF = ("", "off", "none")
PREFIX = "gatehouse-metrics-"


def parse_listen(value: str) -> tuple[str, int] | None:
    """`GATEHOUSE_METRICS_LISTEN` as (host, port); None when metrics are off. SystemExit
    on a value that is no host:port, the port ASCII digits from 0 to 65535."""
    if value.strip().lower() in OFF:
        return None
    parsed = host_port(value)
    if parsed is None:
        raise SystemExit(f"gatehouse: GATEHOUSE_METRICS_LISTEN (--metrics-listen) must be host:port or 'off', got {value!r}")
    return parsed


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def make_dir_env() -> str:
    """A fresh multiprocess directory, named in the environment for this process and
    the workers it starts. Call before anything imports prometheus_client's values.

    The directory carries this process's pid (`gatehouse-metrics-<pid>-<random>`); it is
    removed when `serve` returns, and a `serve` killed outright (SIGKILL) leaves it
    behind, so each start first removes those of processes that no longer exist."""
    base = tempfile.gettempdir()
    for stale in glob.glob(os.path.join(base, f"{PREFIX}*-*")):
        owner = os.path.basename(stale)[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)
    os.environ[MULTIPROC_ENV] = path
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
