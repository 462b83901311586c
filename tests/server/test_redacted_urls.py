"""A password in the Redis or Postgres URL never reaches a log line or a start-up error
(README "Logs": no key or secret reaches a line, whatever logged it)."""

from __future__ import annotations

import logging
import socket

import pytest

from gatehouse import logs
from gatehouse.redis_client import check_mode, shown_url, url_passwords
from tests.logcapture import configured_logs


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:pw123456@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:p%40ss@h:1/0", "redis://user:***@h:1/0"),
        ("redis://h:6379", "redis://h:6379"),
        ("unix:///tmp/redis.sock?db=1&password=abc", "unix:///tmp/redis.sock?db=1&password=***"),
        ("redis://:pw@[::1]:6380/2", "redis://:***@[::1]:6380/2"),
    ],
)
def test_shown_url_hides_the_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_url_passwords_as_written_and_decoded() -> None:
    assert sorted(url_passwords("postgresql://app:s3cr%2Ft@h/db")) == ["s3cr%2Ft", "s3cr/t"]
    assert url_passwords("redis://127.0.0.1:6379/0") == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_redis_is_logged_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:SuperSecretRedisPw@127.0.0.1:{_closed_port()}/0"
    with caplog.at_level(logging.WARNING, logger="gatehouse.redis_client"):
        assert await check_mode(url, cluster=False, timeout=1.0) is None
    assert caplog.records, "the unreachable Redis is reported"
    assert "SuperSecretRedisPw" not in caplog.text
    assert "redis://:***@127.0.0.1" in caplog.text


def test_the_serve_redactor_knows_the_url_passwords() -> None:
    with configured_logs("json", "INFO", secrets=url_passwords("redis://:SuperSecretRedisPw@h/0")) as out:
        logging.getLogger("gatehouse.test").warning("connect failed: AUTH SuperSecretRedisPw refused")
    assert "SuperSecretRedisPw" not in out.getvalue()
    assert logs.REDACTED in out.getvalue()
