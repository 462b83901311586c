"""Logging pieces on their own: redaction, request and trace ids, the call scope, the
decision log's modes and bounds, the access log's interceptor (README "Logs")."""

from __future__ import annotations

import io
import json
import os
import logging
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from gatehouse import logs
from gatehouse.engine.decision import Decision
from gatehouse.engine.model import Reason
from gatehouse.server.call_log import CallLog
from gatehouse.server.decision_log import DecisionLog, DecisionRecord, format_line
from tests.logcapture import configured_logs

TENANT = "0b0e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured into a buffer (json), restored afterwards."""
    with configured_logs("json", "DEBUG", worker=3, secrets=["operator-bootstrap-secret"]) as out:
        yield out


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    """Gatehouse's lines (not asyncio's own debug lines, say)."""
    return [line for line in map(json.loads, out.getvalue().splitlines()) if line["logger"].startswith("gatehouse")]


def test_redaction_keeps_key_ids_and_removes_secrets() -> None:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    redact = logs.Redactor(["operator-bootstrap-secret"])
    line = redact(
        f"key gh_{key_id}_{secret}, header 'Bearer abc.def', op gh_op_{secret}, "
        f"raw operator-bootstrap-secret, BEARER%20xyz"
    )
    assert secret not in line and "abc.def" not in line and "operator-bootstrap-secret" not in line
    assert "xyz" not in line
    assert f"gh_{key_id}_[REDACTED]" in line and "Bearer [REDACTED]" in line
    # Ordinary text stays as it was (database names, short secrets are not guessed at).
    assert logs.Redactor(["short"])("gh_test_abc short") == "gh_test_abc short"


def test_json_lines_have_the_fields_and_no_secrets(captured: io.StringIO) -> None:
    token = f"gh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    log = logging.getLogger("gatehouse.test")
    log.info("refused %s", token, extra={"api_key": "anything", "method": "/x/Y"})
    try:
        raise ValueError(f"Bearer {token}")
    except ValueError:
        log.exception("failed with operator-bootstrap-secret")
    text = captured.getvalue()
    assert token[len("gh_0123456789abcdef_"):] not in text and "operator-bootstrap-secret" not in text
    first, second = _lines(captured)
    for line in (first, second):
        assert set(logs.REQUIRED_FIELDS) <= set(line)
        assert line["worker"] == 3 and line["request_id"] is None and line["trace_id"] is None
    assert first["api_key"] == "[REDACTED]" and first["method"] == "/x/Y" and first["logger"] == "gatehouse.test"
    assert second["level"] == "ERROR" and "ValueError" in second["exc_info"]


def test_lines_in_a_call_carry_its_request_and_trace_ids(captured: io.StringIO) -> None:
    trace = secrets.token_hex(16)
    metadata = (("x-request-id", "req-1"), ("traceparent", f"00-{trace}-{secrets.token_hex(8)}-01"))
    token = logs.enter_call(logs.CallScope("/svc/M", lambda: metadata))
    try:
        logging.getLogger("gatehouse.test").warning("inside")
        assert logs.current_request_id() == "req-1" and logs.current_trace_id() == trace
    finally:
        logs.leave_call(token)
    logging.getLogger("gatehouse.test").warning("outside")
    inside, outside = _lines(captured)
    assert (inside["request_id"], inside["trace_id"]) == ("req-1", trace)
    assert (outside["request_id"], outside["trace_id"]) == (None, None)


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((("x-request-id", "abc-123"),), "abc-123"),
        ((("x-request-id", "x" * 129), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")), "a" * 32),
        ((("x-request-id", "bad\nid"),), None),
        ((("traceparent", "00-" + "0" * 32 + "-" + "b" * 16 + "-01"),), None),  # the invalid all-zero id
        ((("traceparent", "nonsense"),), None),
        # Characters that would forge fields in a text line or the audit trail: refused.
        ((("x-request-id", "fake] code=OK tenant=evil"),), None),
        ((("x-request-id", 'a"b'),), None),
        # A key in it is redacted before it goes anywhere (log, decision log, audit row).
        ((("x-request-id", "req-gh_0123456789abcdef_s3cretS3cretS3cret"),), "req-gh_0123456789abcdef_[REDACTED]"),
        # W3C Trace Context: version ff, version 00 with more fields, an all-zero parent id
        # are invalid (OpenTelemetry's propagator refuses them too); a later version may add fields.
        ((("traceparent", "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"),), None),
        ((("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01-extra"),), None),
        ((("traceparent", "00-" + "a" * 32 + "-" + "0" * 16 + "-01"),), None),
        ((("traceparent", "01-" + "a" * 32 + "-" + "b" * 16 + "-01-extra"),), "a" * 32),
    ],
)
def test_request_id_rule(metadata: tuple[tuple[str, str], ...], expected: str | None) -> None:
    found = logs.request_id(metadata)
    if expected is None:
        assert len(found) == 32 and found.isalnum() and found != logs.request_id(metadata)  # fresh each time
    else:
        assert found == expected


def _record(allowed: bool) -> DecisionRecord:
    decision = Decision(allowed, Reason.ALLOWED if allowed else Reason.NO_GRANT, 7, "reader" if allowed else "", "emea")
    return DecisionRecord.of(TENANT, "user/alice", "invoice.read", "emea/de", decision)


def test_decision_log_modes() -> None:
    denials = DecisionLog("denials")
    denials.offer(_record(True), remembered=False)
    denials.offer(_record(False), remembered=True)
    assert denials.stats()["queued"] == 1
    every = DecisionLog("all")
    every.offer(_record(True), remembered=False)
    every.offer(_record(False), remembered=False)
    assert every.stats()["queued"] == 2
    chances = iter([0.5, 0.001, 0.2, 0.009])
    sampled = DecisionLog("sampled", sample_rate=0.01, chance=lambda: next(chances))
    for _ in range(4):
        sampled.offer(_record(True), remembered=False)
    assert sampled.stats()["queued"] == 2


def test_decision_log_is_bounded_and_counts_what_it_drops() -> None:
    log = DecisionLog("all", max_queue=3)  # no writer running: nothing leaves the queue
    for _ in range(10):
        log.offer(_record(False), remembered=False)
    assert log.stats() == {"written": 0, "dropped": 7, "failed": 0, "queued": 3}


def test_decision_log_writer_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog("all", path=str(path), flush_interval=0.01, clock=lambda: 1_700_000_000.5)
    log.start()
    token = logs.enter_call(logs.CallScope("/gatehouse.v1.AccessService/CheckAccess", lambda: [("x-request-id", "r1")]))
    try:
        log.offer(_record(True), remembered=True)
    finally:
        logs.leave_call(token)
    log.offer(_record(False), remembered=False)
    log.stop()
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert first == {
        "time": "2023-11-14T22:13:20.500Z", "tenant": TENANT, "subject": "user/alice", "permission": "invoice.read",
        "scope": "emea/de", "allowed": True, "reason": "ALLOWED", "revision": 7, "granted_by": "reader@emea",
        "feature": "", "remembered": True, "method": "/gatehouse.v1.AccessService/CheckAccess", "request_id": "r1",
        "trace_id": None,
    }
    assert (second["allowed"], second["reason"], second["granted_by"], second["method"]) == (False, "NO_GRANT", "", "")
    assert log.stats()["written"] == 2


def test_a_stuck_destination_never_blocks_the_offer() -> None:
    """A writer blocked on its output (a full pipe) fills the queue; offers keep returning."""
    release = threading.Event()

    class Stuck(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(5)
            return len(text)

    log = DecisionLog("all", max_queue=5, flush_interval=0.01)
    stuck = Stuck()
    writer = threading.Thread(target=log._drain, args=(stuck,), daemon=True)
    log.offer(_record(False), remembered=False)
    writer.start()
    for _ in range(100):
        log.offer(_record(False), remembered=False)
    assert log.stats()["dropped"] >= 95
    release.set()
    writer.join(5)


def test_bad_decision_log_settings_are_refused() -> None:
    with pytest.raises(SystemExit, match="GATEHOUSE_DECISION_LOG "):
        DecisionLog("some")
    with pytest.raises(SystemExit, match="SAMPLE_RATE"):
        DecisionLog("sampled", sample_rate=1.5)
    with pytest.raises(SystemExit, match="GATEHOUSE_LOG_FORMAT"):
        logs.check("xml", "INFO")


def test_format_line_escapes_what_it_is_given() -> None:
    record = DecisionRecord(TENANT, 'user/"x"\n', "p", "", False, "NO_GRANT", 1, "", "")
    line = format_line((0.0, record, False, "m", "r\n", ""))
    assert line.endswith("\n") and line.count("\n") == 1 and json.loads(line)["subject"] == 'user/"x"\n'


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def code(self) -> Any:
        return grpc.StatusCode.PERMISSION_DENIED

    def cancelled(self) -> bool:
        return False


async def _handler(request: Any, context: Any) -> bytes:
    logs.annotate(actor="api_key/0123456789abcdef")
    return b"ok"


async def test_call_log_costs_the_hot_path_nothing_unless_asked(captured: io.StringIO) -> None:
    hot = "/gatehouse.v1.AccessService/CheckAccess"
    assert CallLog().unary(hot, _handler) is _handler
    assert CallLog(scope_hot=True).unary(hot, _handler) is not _handler
    wrapped = CallLog(hot=True).unary(hot, _handler)
    from gatehouse_client.v1 import access_pb2

    body = access_pb2.CheckAccessRequest(tenant_id=TENANT).SerializeToString()
    assert await wrapped(body, _Context((("x-request-id", "r2"),))) == b"ok"
    (line,) = _lines(captured)
    assert (line["method"], line["code"], line["tenant"], line["request_id"]) == (hot, "OK", TENANT, "r2")
    assert line["actor"] == "api_key/0123456789abcdef" and line["peer"] == "ipv4:127.0.0.1:5000"


async def test_every_admin_call_gets_an_access_line_even_when_it_fails(captured: io.StringIO) -> None:
    async def failing(request: Any, context: Any) -> bytes:
        raise RuntimeError("aborted")

    wrapped = CallLog().unary("/gatehouse.v1.AdminService/GetTenant", failing)
    with pytest.raises(RuntimeError):
        await wrapped(b"\xff\xff", _Context(()))
    (line,) = _lines(captured)
    assert line["code"] == "PERMISSION_DENIED" and "tenant" not in line and line["duration_ms"] >= 0


def test_decision_lines_are_redacted_like_log_lines(captured: io.StringIO) -> None:
    """A key the caller put into `x-request-id` reaches the decision log redacted, as it
    reaches the JSON log (its id kept, its secret not); so does the bootstrap secret."""
    key = "gh_0123456789abcdef_" + "S3cretPart" * 4
    record = DecisionRecord(TENANT, "user/alice", "invoice.read", "", False, "NO_GRANT", 1, "", "")
    line = format_line((0.0, record, False, "m", f"req-{key} operator-bootstrap-secret", ""))
    assert "S3cretPart" not in line and "operator-bootstrap-secret" not in line
    assert json.loads(line)["request_id"] == f"req-gh_0123456789abcdef_{logs.REDACTED} {logs.REDACTED}"


def test_a_decision_log_file_that_cannot_be_opened_is_refused_at_start(tmp_path: Path) -> None:
    """`serve` with a decision-log path it cannot append to refuses to start, naming the
    setting (it used to serve, log one ERROR line, and log no decision at all)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEHOUSE_", "OTEL_"))}
    command = [
        sys.executable, "-m", "gatehouse.server.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "1",
        "--metrics-listen", "off", "--decision-log", "all", "--decision-log-path", str(tmp_path / "absent" / "d.jsonl"),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode not in (0, None) and "serving on" not in out, (out, err[-1000:])
    assert "GATEHOUSE_DECISION_LOG_PATH" in err and "Traceback" not in err, err[-1000:]
