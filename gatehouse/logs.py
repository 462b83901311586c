"""Logging, set up in one place (`configure`) for `serve`, its workers and `relay`.

Two formats (`GATEHOUSE_LOG_FORMAT`): `text`, one human line per record, and `json`,
one JSON object per line (python-json-logger on the standard library's logging):

    {"timestamp": "...+00:00", "level": "INFO", "logger": "gatehouse.access",
     "message": "...", "request_id": "...", "trace_id": "...", "pid": 4711, "worker": 0,
     ... and the record's own fields (an access line: method, tenant, actor, code, duration_ms, peer)}

**The call a line belongs to.** An interceptor (server/call_log.py) opens a `CallScope`
for each call: a context variable holding the method and the call's metadata, read
lazily, so a call that logs nothing pays for one small object. Every record emitted
during the call, by any logger, carries its `request_id` (`x-request-id` when it is
sane: 1-128 printable characters; else the trace id of a W3C `traceparent`; else a fresh
random id; the same id the audit trail records) and `trace_id` (`current_trace_id`).

**Redaction.** No key, bearer token or secret reaches a line, whatever logged it: every
formatted line (message, fields, traceback) is passed through `redact`, which replaces
Gatehouse keys (`gh_<id>_<secret>`: the id is kept, it is no secret), anything after
`Bearer `, and the values this process was told are secret (the bootstrap operator key);
a record field whose name looks secret (`secret`, `token`, `password`, `authorization`,
...) is replaced whole.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from pythonjsonlogger.json import JsonFormatter

from gatehouse import tracing

Metadata = Sequence[tuple[str, "str | bytes"]]

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDACTED = "[REDACTED]"
MAX_REQUEST_ID = 128
# Fields every JSON line has (null where they do not apply: a line outside any call).
REQUIRED_FIELDS = ("timestamp", "level", "logger", "message", "request_id", "trace_id", "pid")
# Record fields a text line shows after its message, when present (in this order).
TEXT_FIELDS = ("method", "code", "duration_ms", "tenant", "actor", "peer", "request_id", "trace_id")


# --- the call a record is emitted during ---------------------------------------------------


@dataclass(slots=True)
class CallScope:
    """One call, as far as its log lines need it: its method and metadata (read only when
    a line asks), plus fields the handler learns on the way (`annotate`)."""

    method: str
    metadata: Callable[[], Iterable[tuple[str, Any]] | None]  # grpc's invocation_metadata
    fields: dict[str, str] | None = None
    _request_id: str | None = None
    _traceparent: str | None = None

    @property
    def request_id(self) -> str:
        if self._request_id is None:
            self._request_id, self._traceparent = _request_ids(tuple(self.metadata() or ()))
        return self._request_id

    def close(self) -> None:
        """The call ended: drop the reference to its metadata (and so to grpc's call
        object), which tasks started during the call would otherwise keep alive in their
        copy of the context. Ids not read by then are not read afterwards."""
        if self._request_id is None:
            self._request_id, self._traceparent = "", ""
        self.metadata = _no_metadata

    @property
    def traceparent_trace_id(self) -> str:
        """The trace id of the call's incoming W3C `traceparent` ('' when it has none)."""
        if self._traceparent is None:
            self._request_id, self._traceparent = _request_ids(tuple(self.metadata() or ()))
        return self._traceparent


def _no_metadata() -> None:
    return None


_call: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("gatehouse_call", default=None)


def enter_call(scope: CallScope) -> contextvars.Token[CallScope | None]:
    return _call.set(scope)


def leave_call(token: contextvars.Token[CallScope | None]) -> None:
    scope = _call.get()
    if scope is not None:
        scope.close()
    _call.reset(token)


def current_call() -> CallScope | None:
    return _call.get()


def current_request_id() -> str | None:
    call = _call.get()
    return call.request_id if call is not None else None


def annotate(**fields: str) -> None:
    """Add fields (the authenticated actor, ...) to the current call's access line."""
    call = _call.get()
    if call is not None:
        if call.fields is None:
            call.fields = {}
        call.fields.update(fields)


def request_id(metadata: Metadata) -> str:
    """`x-request-id` when sane (1-128 printable characters), else the trace id of a W3C
    `traceparent`, else a fresh random id."""
    return _request_ids(metadata)[0]


def _request_ids(metadata: Metadata) -> tuple[str, str]:
    """(request id, traceparent trace id or '')."""
    given = traceparent = ""
    for key, value in metadata:
        if key == "x-request-id" and not given and isinstance(value, str):
            if 0 < len(value) <= MAX_REQUEST_ID and value.isprintable():
                given = value
        elif key == "traceparent" and isinstance(value, str):
            traceparent = parse_traceparent(value)
    return given or traceparent or uuid.uuid4().hex, traceparent


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def parse_traceparent(value: str) -> str:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), '' for
    anything else (and for the all-zero id the spec calls invalid)."""
    match = _TRACEPARENT.match(value.strip())
    if match is None or match[1] == "0" * 32:
        return ""
    return match[1]


def current_trace_id() -> str:
    """The W3C trace id of the active OpenTelemetry span (gatehouse/tracing.py), when one
    is active; else the trace id of the current call's incoming `traceparent` (tracing
    off); else ''."""
    found = tracing.current_trace_id()
    if found:
        return found
    call = _call.get()
    return call.traceparent_trace_id if call is not None else ""


# --- redaction -------------------------------------------------------------------------------

# A Gatehouse API key `gh_<16 hex id>_<secret>`: keep the id, which names the key and is no secret.
_API_KEY = re.compile(r"gh_([0-9a-f]{16})_[A-Za-z0-9_-]+")
# Any other long `gh_` token (the bootstrap key `./dev` makes is `gh_op_<43 characters>`).
_OTHER_KEY = re.compile(r"gh_[A-Za-z0-9_-]{40,}")
# Whatever follows a bearer scheme, up to a quote, backslash, space, comma or semicolon.
_BEARER = re.compile(r"(?i)(bearer)(\s+|%20)[^\s\"'\\,;]+")
_SECRET_NAME = re.compile(r"(?i)secret|passw|token|authoriz|credential|api_?key|operator_key|private")


class Redactor:
    """Removes secrets from formatted lines (see the module)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literal: set[str] = set()
        for secret in secrets:
            if len(secret) >= 8:  # a shorter "secret" would redact ordinary words
                literal.add(secret)
                literal.add(json.dumps(secret, ensure_ascii=False)[1:-1])  # as it appears inside a JSON string
        self._literal = sorted(literal, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._literal:
            line = line.replace(secret, REDACTED)
        if "gh_" in line:
            line = _API_KEY.sub(r"gh_\1_" + REDACTED, line)
            line = _OTHER_KEY.sub("gh_" + REDACTED, line)
        return _BEARER.sub(r"\1 " + REDACTED, line)

    @staticmethod
    def fields(record: logging.LogRecord) -> None:
        """Replace a record field whose name looks secret (`secret`, `token`, ...)."""
        for name in [n for n in record.__dict__ if n not in _STANDARD and _SECRET_NAME.search(n)]:
            setattr(record, name, REDACTED)


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


# --- formats ---------------------------------------------------------------------------------


class CallFields(logging.Filter):
    """Adds `request_id` and `trace_id` (None outside a call) to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = _call.get()
        if not hasattr(record, "request_id"):
            record.request_id = call.request_id if call is not None else None
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id() or None
        return True


class JsonLines(JsonFormatter):
    def __init__(self, redactor: Redactor, static: dict[str, Any]) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields=static,
            timestamp=True,
            json_ensure_ascii=False,
        )
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        Redactor.fields(record)
        return self._redact(super().format(record))


class TextLines(logging.Formatter):
    def __init__(self, redactor: Redactor, worker: int | None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redactor
        self._worker = [f"worker={worker}"] if worker is not None else []

    def format(self, record: logging.LogRecord) -> str:
        Redactor.fields(record)
        line = super().format(record)
        extra = [f"{name}={getattr(record, name)}" for name in TEXT_FIELDS if getattr(record, name, None) not in (None, "")]
        extra += self._worker
        if extra:
            head, newline, rest = line.partition("\n")  # after the message, before a traceback
            line = f"{head} [{' '.join(extra)}]{newline}{rest}"
        return self._redact(line)


def check(log_format: str, log_level: str) -> None:
    """SystemExit naming the setting when the format or level is not one we know."""
    if log_format not in FORMATS:
        raise SystemExit(f"gatehouse: GATEHOUSE_LOG_FORMAT (--log-format) must be text or json, got {log_format!r}")
    if log_level.upper() not in LEVELS:
        raise SystemExit(
            f"gatehouse: GATEHOUSE_LOG_LEVEL (--log-level) must be one of {', '.join(LEVELS)}, got {log_level!r}"
        )


def configure(
    log_format: str = "text",
    log_level: str = "INFO",
    *,
    worker: int | None = None,
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> logging.Handler:
    """Route every logger's records to one handler on `stream` (stderr) in `log_format`,
    at `log_level`, redacted; replaces the root logger's handlers. Returns the handler."""
    check(log_format, log_level)
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        static: dict[str, Any] = {"pid": os.getpid()}
        if worker is not None:
            static["worker"] = worker
        handler.setFormatter(JsonLines(redactor, static))
    else:
        handler.setFormatter(TextLines(redactor, worker))
    handler.addFilter(CallFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    return handler
