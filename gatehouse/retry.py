"""Retrying a dependency that went away: exponential backoff with jitter, and one log line
when it goes, one when it comes back (never one per retry).

Used by the loops that must keep running while Redis or Postgres is down: the outbox
relay and the tenant-event subscriber. Each retry waits twice as long as the one before
(from `first`, capped at `cap`), times a random factor in [0.5, 1) so that many sidecars
that lost the same Redis do not reconnect in step.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable


class Backoff:
    """The delays of one run of retries: first, 2×first, 4×first ... up to `cap`, jittered."""

    def __init__(self, first: float = 0.05, cap: float = 2.0, rng: Callable[[], float] = random.random) -> None:
        self._first = first
        self._cap = cap
        self._rng = rng
        self._delay = first

    def next(self) -> float:
        """The time to wait before the next retry (and the one after it doubles)."""
        delay = self._delay * (0.5 + 0.5 * self._rng())
        self._delay = min(self._delay * 2, self._cap)
        return delay

    def reset(self) -> None:
        """It worked: the next outage starts with a quick retry again."""
        self._delay = self._first


class Outage:
    """Logs that `what` stopped working once per outage (and again only if the cause changes
    to another dependency), and that it recovered once, with how long it was down."""

    def __init__(self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._what = what
        self._clock = clock
        self.since: float | None = None  # when the current outage began; None while working
        self._cause = ""

    def failed(self, cause: str, detail: str) -> None:
        """One failed attempt. `cause` names the dependency ("redis", "postgres")."""
        if self.since is None:
            self.since = self._clock()
        elif cause == self._cause:
            return
        self._cause = cause
        self._log.warning("%s: %s unavailable (%s); retrying with backoff", self._what, cause, detail)

    def recovered(self) -> None:
        """An attempt worked; logs only when it ends an outage."""
        if self.since is None:
            return
        self._log.info("%s: recovered (%s was unavailable for %.1f s)", self._what, self._cause, self._clock() - self.since)
        self.since = None
        self._cause = ""
