"""Gatehouse's logging configured into a buffer for a test, the root logger restored after."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Iterator

from gatehouse import logs


@contextlib.contextmanager
def configured_logs(log_format: str, level: str, **options: Any) -> Iterator[io.StringIO]:
    """`logs.configure(log_format, level, stream=<buffer>, **options)`; yields the buffer."""
    root = logging.getLogger()
    handlers, previous = list(root.handlers), root.level
    out = io.StringIO()
    logs.configure(log_format, level, stream=out, **options)
    try:
        yield out
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(previous)
