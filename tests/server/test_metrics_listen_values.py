"""`GATEHOUSE_METRICS_LISTEN` values that are no port: refused with the setting's name
(SystemExit, one line), never a traceback from the socket layer once the relay or serve
has started."""

from __future__ import annotations

import pytest

from gatehouse.server.metrics_setup import parse_listen


@pytest.mark.parametrize("value", ["127.0.0.1:65536", "127.0.0.1:99999", "[::1]:100000", "127.0.0.1:٣٣٣٣", "127.0.0.1:９４６４"])
def test_a_port_out_of_range_or_not_ascii_digits_is_refused_naming_the_setting(value: str) -> None:
    # Before: 65536 and more passed and bind() raised OverflowError (a traceback, exit 1);
    # Arabic-Indic or full-width digits were read as a port.
    with pytest.raises(SystemExit, match="GATEHOUSE_METRICS_LISTEN"):
        parse_listen(value)


def test_the_edges_of_the_port_range_are_taken() -> None:
    assert parse_listen("127.0.0.1:65535") == ("127.0.0.1", 65535)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
