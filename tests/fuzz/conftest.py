"""The fuzz suite's sidecar (the same in-process sidecar as tests/server), the ERROR
records it must never emit, and the per-method call counts printed at the end."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

from tests.fuzz.calls import CALLS
from tests.server.conftest import client, operator_key, sidecar, sidecar_settings  # noqa: F401  (fixtures)


class ErrorRecords(logging.Handler):
    """Every record at ERROR or above, from any logger (gatehouse, grpc, asyncio)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def describe(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" + (f" ({r.exc_info[1]!r})" if r.exc_info else "") for r in self.records]


@pytest.fixture(scope="package")
def error_log() -> Iterator[ErrorRecords]:
    """Installed on the root logger for the whole fuzz package: the server runs in this
    process, so whatever it logs passes through here."""
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CALLS:
        return
    terminalreporter.section("gatehouse fuzz: calls per method")
    for path, count in sorted(CALLS.items()):
        terminalreporter.write_line(f"{count:7d}  {path}")
    terminalreporter.write_line(f"{sum(CALLS.values()):7d}  total, {len(CALLS)} methods")
