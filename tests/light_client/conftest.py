"""Fixtures shared by the light client's suites."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from typing import Iterator

import pytest

from tests.processes import sidecar_env


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    """The environment of a `gatehouse serve` process on this run's database and Redis."""
    return sidecar_env(database_url, redis_url, redis_prefix, "gh_op_" + secrets.token_urlsafe(24))


class ClientRecords(logging.Handler):
    """Counts the light client's log records whose message holds `word` (e.g. "retry",
    "reconnect"); `first` is set at the first."""

    def __init__(self, word: str) -> None:
        super().__init__()
        self.word = word
        self.count = 0
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.word in record.getMessage():
            self.count += 1
            self.first.set()


@contextlib.contextmanager
def client_records(word: str) -> Iterator[ClientRecords]:
    """A ClientRecords on the `gatehouse_client` logger (at INFO) while the block runs."""
    handler, logger = ClientRecords(word), logging.getLogger("gatehouse_client")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
