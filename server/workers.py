"""`gatehouse serve --workers N`: N serving processes sharing one port.

A single Python process saturates one core long before this machine's gRPC floor, so
the hot path scales out by processes. Each worker is a complete sidecar (own L1, own
event subscriber, own Postgres pool); only worker 0 runs the outbox relay. They share the
listening port with SO_REUSEPORT, set explicitly, and the kernel spreads connections
across them.

SO_REUSEPORT would also let an unrelated server share the port silently, so before
starting the workers the parent binds the port *without* it: if anything is listening
there, `serve` fails loudly instead of joining it.

A worker that dies while serving (the OOM killer, a crash) is started again in its
place, as gunicorn does: same index, so worker 0 brings the outbox relay and the unix
socket back with it. At most `GATEHOUSE_WORKER_RESTARTS` restarts in any minute; past
that the workers are crashing in a loop, so `serve` stops them all and exits 1 for its
supervisor (Kubernetes, systemd) to restart the whole process instead.

A worker that hangs without dying (stopped, deadlocked, its event loop stuck) would go on
taking its share of new connections, so each worker's event loop touches a file of its
own every HEARTBEAT_SECONDS (`heartbeat_task`, a few µs a second), and a thread of the
parent kills (SIGKILL) a worker whose file is older than `GATEHOUSE_WORKER_TIMEOUT_SECONDS`
(30 s; gunicorn's `--timeout` is the same idea): its death then takes the restart path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from gatehouse.server import ext_authz_routes
from gatehouse.server.listeners import plan_http_listener, plan_listeners
from gatehouse.settings import Settings

if TYPE_CHECKING:
    from gatehouse.server.metrics import MetricsEndpoint

log = logging.getLogger("gatehouse")

HEARTBEAT_ENV = "GATEHOUSE_WORKER_HEARTBEAT_DIR"  # where a worker touches its file (named by its pid)
HEARTBEAT_SECONDS = 1.0


def heartbeat_task() -> "asyncio.Task[None] | None":
    """In a `serve --workers` worker: a task touching this worker's heartbeat file every
    HEARTBEAT_SECONDS from the event loop, so the parent sees the loop turn; None when
    not a worker (or the parent checks no liveness)."""
    directory = os.environ.get(HEARTBEAT_ENV)
    if not directory:
        return None
    path = os.path.join(directory, str(os.getpid()))

    async def beat() -> None:
        while True:
            try:
                with open(path, "a"):
                    os.utime(path)
            except OSError:  # the parent is gone or removed its directory: nothing to tell
                pass
            await asyncio.sleep(HEARTBEAT_SECONDS)

    return asyncio.get_running_loop().create_task(beat(), name="worker-heartbeat")


def claim_port(listen: str) -> str:
    """The concrete host:port the workers will share; SystemExit if it is taken."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as every listener has (grpc's too): a server restarted on its port
        # must not be refused for the minute the last one's connections sit in TIME_WAIT;
        # a port another socket listens on is still refused (Linux).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise SystemExit(f"gatehouse: cannot listen on {listen}: {exc.strerror} (is another server there?)")
        chosen = probe.getsockname()[1]
    return f"{listen.rpartition(':')[0]}:{chosen}"


def run_workers(
    settings: Settings, *, metrics: tuple[str, int] | None = None, metrics_dir: str = ""
) -> int:
    """Start the workers, relay their first line, forward signals, exit 0 when all did.

    With `metrics` (host, port), this process serves /metrics for all of them, from the
    multiprocess directory `metrics_dir` (made, and named in the environment, by the
    caller before prometheus_client was imported): see server/metrics.py."""
    count = settings.worker_count
    # Refuse a listener that may not start (plaintext on a public address, broken TLS
    # files) here, once, rather than in every worker. The TLS settings reach the workers
    # through the environment below like every other setting.
    plan_listeners(settings)
    if settings.authzen_listen:
        plan_http_listener(settings, settings.authzen_listen, "authzen_listen")
    settings.check_durations()
    settings.check_database_url()
    ext_authz_routes.from_settings(settings.ext_authz_config)
    listen = claim_port(settings.listen) if settings.listen else ""
    # The AuthZEN HTTP listener is shared the same way (every worker binds it with SO_REUSEPORT).
    authzen_listen = claim_port(settings.authzen_listen) if settings.authzen_listen else ""
    endpoint = None
    if metrics is not None:
        from gatehouse.server.metrics import MetricsEndpoint

        endpoint = MetricsEndpoint(*metrics, directory=metrics_dir)
    beats = tempfile.mkdtemp(prefix="gatehouse-workers-") if settings.worker_timeout_seconds > 0 else ""
    try:
        return _run_children(settings, count, listen, authzen_listen, endpoint, beats)
    finally:
        if endpoint is not None:
            endpoint.close()
        if beats:
            shutil.rmtree(beats, ignore_errors=True)


RESTART_WINDOW_SECONDS = 60.0  # GATEHOUSE_WORKER_RESTARTS counts restarts in any such window


def _run_children(
    settings: Settings, count: int, listen: str, authzen_listen: str, endpoint: "MetricsEndpoint | None", beats: str
) -> int:
    def spawn(index: int) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "GATEHOUSE_LISTEN": listen,
            "GATEHOUSE_AUTHZEN_LISTEN": authzen_listen,
            "GATEHOUSE_WORKERS": "1",
            "GATEHOUSE_RELAY": str(settings.relay if index == 0 else 0),
            "GATEHOUSE_WORKER_REUSE_PORT": "1",
            "GATEHOUSE_WORKER_INDEX": str(index),  # each worker's log lines say which it is
            # Only this process listens for metrics; the workers write theirs to the
            # multiprocess directory (PROMETHEUS_MULTIPROC_DIR, in os.environ) it reads.
            "GATEHOUSE_METRICS_LISTEN": "",
            "GATEHOUSE_WORKER_METRICS": "1" if endpoint is not None else "0",
            HEARTBEAT_ENV: beats,
        }
        overrides = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        for name, value in overrides.items():
            if name not in ("listen", "authzen_listen", "workers", "relay", "unix_socket", "metrics_listen"):
                env[f"GATEHOUSE_{name.upper()}"] = str(value)
        # Unix sockets cannot be shared by port reuse: only worker 0 takes it.
        env["GATEHOUSE_UNIX_SOCKET"] = settings.unix_socket if index == 0 else ""
        child = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.server.cli", "serve"], env=env, stdout=subprocess.PIPE, text=True,
            preexec_fn=_die_with(os.getpid()),
        )
        spawned[child.pid] = time.time()
        return child

    def first_line(child: subprocess.Popen[str]) -> str | None:
        """The address a worker serves on, once it says so (None: it did not start);
        from then on its stdout is drained so it never blocks on a full pipe."""
        assert child.stdout is not None
        line = child.stdout.readline()
        if "serving on" not in line:
            return None
        threading.Thread(target=_drain, args=(child,), daemon=True).start()
        return line.split("serving on", 1)[1].strip()

    def follow(replacement: subprocess.Popen[str], index: int) -> None:
        """A restarted worker: say when it serves, then drain its stdout."""
        if first_line(replacement) is not None:
            starting.discard(replacement.pid)
            log.info("worker %d restarted (pid %d)", index, replacement.pid)

    spawned: dict[int, float] = {}  # when each worker was started (wall clock, as file times)

    def watch_liveness() -> None:
        """Kill a worker whose heartbeat file is older than the timeout (see the module)."""
        timeout = settings.worker_timeout_seconds
        killed: set[int] = set()
        while not stopping.wait(HEARTBEAT_SECONDS):
            now = time.time()
            for pid, index in list(waiting.items()):
                try:
                    last = max(spawned.get(pid, now), os.stat(os.path.join(beats, str(pid))).st_mtime)
                except FileNotFoundError:  # not serving yet: timed from its start
                    last = spawned.get(pid, now)
                if now - last > timeout and pid not in killed:
                    killed.add(pid)
                    log.error(
                        "worker %d (pid %d) has not shown a turn of its event loop for %.0f s "
                        "(GATEHOUSE_WORKER_TIMEOUT_SECONDS): killing it", index, pid, now - last,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    children = [spawn(index) for index in range(count)]
    stopping = threading.Event()  # set by a signal handler, between any two statements below
    signalled: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            # Once each: a worker drains on its first signal and ignores the rest.
            if child.poll() is None and child.pid not in signalled:
                signalled.add(child.pid)
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    addresses = []
    for child in children:
        address = first_line(child)
        if address is None:
            forward(signal.SIGTERM, None)
            raise SystemExit(f"gatehouse: a worker failed to start (exit {child.wait()})")
        addresses.append(address)
    shown = f" (metrics: {endpoint.url})" if endpoint is not None else ""
    workers = f"{count} workers, SO_REUSEPORT" if count > 1 else "1 worker"
    print(f"gatehouse: serving on {addresses[0]} ({workers}){shown}", flush=True)
    codes = []
    restarts: deque[float] = deque()  # when each recent restart was made (monotonic)
    failed = False  # a worker died and could not be restarted
    # Replacements not yet serving: one that a stop's signal ends before it has its
    # handler (it dies of the signal) served nothing and failed at nothing.
    starting: set[int] = set()
    waiting: dict[int, int] = {child.pid: index for index, child in enumerate(children)}
    if beats:
        threading.Thread(target=watch_liveness, name="worker-liveness", daemon=True).start()
    while waiting:
        # In the order they exit, so a worker that dies early is accounted at once.
        pid, status = os.waitpid(-1, 0)
        if pid not in waiting:
            continue
        index = waiting.pop(pid)
        spawned.pop(pid, None)
        if beats:  # a dead worker touches its heartbeat file no more: it goes with it
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(beats, str(pid)))
        child = children[index]
        child.returncode = os.waitstatus_to_exitcode(status)
        if endpoint is not None:
            # Its live gauges go; its counters stay in every sum (no total goes down).
            endpoint.worker_exited(pid)
        if stopping.is_set():
            stopped_starting = pid in starting and child.returncode in (-signal.SIGTERM, -signal.SIGINT)
            codes.append(0 if stopped_starting else child.returncode)
            continue
        if child.returncode == 0:
            # A worker exits 0 only after draining on SIGTERM/SIGINT that reached it
            # directly (a signal to the process group: Ctrl-C, `kill -- -PGID`): a stop
            # meant for all of serve, not a death. Stop the others the same way.
            codes.append(0)
            log.info("worker %d (pid %d) stopped on a signal of its own: stopping the others", index, pid)
            forward(signal.SIGTERM, None)
            continue
        why = f"signal {-child.returncode}" if child.returncode < 0 else f"status {child.returncode}"
        also = "; it ran the outbox relay" if index == 0 and settings.relay else ""
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW_SECONDS:
            restarts.popleft()
        if len(restarts) >= settings.worker_restarts:
            codes.append(child.returncode)
            failed = True
            log.error(
                "worker %d (pid %d) exited with %s while serving%s; %d restarts in the last %.0f s "
                "(GATEHOUSE_WORKER_RESTARTS): stopping every worker, exit 1",
                index, pid, why, also, len(restarts), RESTART_WINDOW_SECONDS,
            )
            forward(signal.SIGTERM, None)
            continue
        restarts.append(now)
        log.error("worker %d (pid %d) exited with %s while serving%s: starting it again", index, pid, why, also)
        replacement = spawn(index)
        children[index] = replacement
        waiting[replacement.pid] = index
        starting.add(replacement.pid)
        if stopping.is_set():  # a signal came while it was being started
            forward(signal.SIGTERM, None)
        # Its first line is read on a thread of its own, so a replacement that hangs before
        # serving never holds this loop (other deaths, a stop) up. One that does not start
        # exits, and is seen by waitpid like any other death.
        threading.Thread(target=follow, args=(replacement, index), daemon=True).start()
    log.info("workers exited with %s", ", ".join(str(code) for code in codes))
    return 0 if all(code == 0 for code in codes) and not failed else 1


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """For a worker, before it execs: get SIGTERM when the parent dies, however it dies
    (even SIGKILL, which the parent cannot forward), so no worker outlives `serve`."""

    def arrange() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: signals are still forwarded
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arrange


def _drain(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
