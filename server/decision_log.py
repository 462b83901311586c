"""The decision log: one JSON line per decision, opt-in (as OPA's and Cerbos' are).

    GATEHOUSE_DECISION_LOG = off | denials | sampled | all
    GATEHOUSE_DECISION_LOG_SAMPLE_RATE = 0..1      (sampled: the share of decisions logged)
    GATEHOUSE_DECISION_LOG_PATH = - | <file>       (- = stdout; a file is appended to)
    GATEHOUSE_DECISION_LOG_QUEUE = 10000           (lines waiting to be written, at most)

A line:

    {"time": "2026-12-01T03:04:05.678Z", "tenant": "<uuid>", "subject": "user/alice",
     "permission": "invoice.read", "scope": "emea/de/berlin", "allowed": true,
     "reason": "ALLOWED", "revision": 7, "granted_by": "accountant@emea/de", "feature": "",
     "remembered": false, "method": "/gatehouse.v1.AccessService/CheckAccess",
     "request_id": "...", "trace_id": "..."}

**What it records: answers, not evaluations.** A CheckAccess answered from a remembered
answer (cache/answers.py) is not decided again, but it is a decision the caller acted on,
so it is logged too (`remembered: true`), with the fields of the decision it repeats: the
record is built when the decision is made and kept beside the remembered bytes. So
`denials` sees every denial, however it was answered, and `sampled` samples answers.
AdminService's own authorization questions (through DecisionService) are decisions too
and are logged with the admin method. A check repeated inside one batch is one line.

**Never in the way.** The hot path only decides whether to log (a mode test, one
`random()` for `sampled`), builds a tuple and appends it to a bounded deque; a writer
thread formats and writes the lines, so neither JSON encoding nor a slow disk or a full
stdout pipe ever reaches the event loop. When the deque is full the line is dropped and
counted (stats `decision_log.dropped`; `decision_log.written`, `decision_log.queued`).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Callable

from gatehouse import logs
from gatehouse.engine.decision import Decision
from gatehouse.engine.model import Reason

MODES = ("off", "denials", "sampled", "all")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What was decided: the question and the answer, the same for every repeat of it."""

    tenant: str
    subject: str
    permission: str
    scope: str
    allowed: bool
    reason: str
    revision: int
    granted_by: str
    feature: str

    @classmethod
    def of(cls, tenant: str, subject: str, permission: str, scope: str, decision: Decision) -> "DecisionRecord":
        return cls(
            tenant, subject, permission, scope, decision.allowed, Reason(decision.reason).name, decision.revision,
            f"{decision.role}@{decision.scope}" if decision.role else "", decision.feature,
        )


# (unix time, record, remembered, method, request id, trace id): made on the hot path.
_Entry = tuple[float, DecisionRecord, bool, str, str, str]


def check(mode: str, sample_rate: float, queue: int) -> None:
    """SystemExit naming the setting when a decision-log setting is out of range."""
    if mode not in MODES:
        raise SystemExit(f"gatehouse: GATEHOUSE_DECISION_LOG (--decision-log) must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= sample_rate <= 1.0:
        raise SystemExit(
            f"gatehouse: GATEHOUSE_DECISION_LOG_SAMPLE_RATE (--decision-log-sample-rate) must be in [0, 1], got {sample_rate}"
        )
    if queue < 1:
        raise SystemExit(f"gatehouse: GATEHOUSE_DECISION_LOG_QUEUE (--decision-log-queue) must be at least 1, got {queue}")


class DecisionLog:
    """A bounded queue of decision lines and the thread that writes them."""

    def __init__(
        self,
        mode: str,
        *,
        sample_rate: float = 0.01,
        path: str = "-",
        max_queue: int = 10_000,
        flush_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
        chance: Callable[[], float] = random.random,
    ) -> None:
        check(mode, sample_rate, max_queue)
        self.mode = mode
        self.sample_rate = sample_rate
        self._path = path
        self._max = max_queue
        self._interval = flush_interval
        self._clock = clock
        self._chance = chance
        # deque.append and popleft are atomic: the hot path and the writer share no lock.
        self._queue: deque[_Entry] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def stats(self) -> dict[str, float]:
        """For the stats registry: lines written, dropped (queue full), failed (write error), queued."""
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed, "queued": len(self._queue)}

    def offer(self, record: DecisionRecord, remembered: bool) -> None:
        """Log `record` if the mode (and, sampled, chance) says so; never waits."""
        mode = self.mode
        if mode == "denials":
            if record.allowed:
                return
        elif mode == "sampled":
            if self._chance() >= self.sample_rate:
                return
        elif mode != "all":
            return
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        call = logs.current_call()
        if call is None:
            method = request_id = ""
            trace_id = logs.current_trace_id()
        else:
            method, request_id, trace_id = call.method, call.request_id, logs.current_trace_id()
        self._queue.append((self._clock(), record, remembered, method, request_id, trace_id))

    # --- the writer ---

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to `timeout` seconds) and stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        out: IO[str]
        try:
            out = sys.stdout if self._path == "-" else open(self._path, "a", encoding="utf-8")
        except OSError as exc:
            log.error("decision log: cannot open %s (%s): decisions are not logged", self._path, exc)
            self.mode = "off"
            return
        try:
            while True:
                stopping = self._stop.is_set()
                self._drain(out)
                if stopping:
                    return
                self._stop.wait(self._interval)
        finally:
            if out is not sys.stdout:
                out.close()

    def _drain(self, out: IO[str]) -> None:
        queue = self._queue
        while queue:
            lines: list[str] = []
            while queue and len(lines) < 1000:
                lines.append(format_line(queue.popleft()))
            try:
                out.write("".join(lines))
                out.flush()
            except (OSError, ValueError) as exc:
                self.failed += len(lines)
                log.warning("decision log: write failed (%s); %d lines lost", exc, len(lines))
                continue
            self.written += len(lines)


def format_line(entry: _Entry) -> str:
    at, r, remembered, method, request_id, trace_id = entry
    stamp = datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "time": stamp,
            "tenant": r.tenant,
            "subject": r.subject,
            "permission": r.permission,
            "scope": r.scope,
            "allowed": r.allowed,
            "reason": r.reason,
            "revision": r.revision,
            "granted_by": r.granted_by,
            "feature": r.feature,
            "remembered": remembered,
            "method": method,
            "request_id": request_id or None,
            "trace_id": trace_id or None,
        },
        ensure_ascii=False,
    ) + "\n"
