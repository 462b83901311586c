"""Listen values that are no port (`GATEHOUSE_LISTEN`, `GATEHOUSE_AUTHZEN_LISTEN`,
`GATEHOUSE_METRICS_LISTEN`): refused at start naming the setting (SystemExit, one line),
never a traceback from the socket layer, and never a port read from non-ASCII digits.
All three read host:port through `server.listeners.host_port`."""

from __future__ import annotations

import dataclasses
from typing import Callable

import pytest

from gatehouse.server.listeners import host_port, plan_http_listener, plan_listeners
from gatehouse.server.metrics_setup import parse_listen
from gatehouse.settings import Settings

BAD = ["127.0.0.1:65536", "127.0.0.1:99999", "[::1]:100000", "127.0.0.1:٣٣٣٣", "127.0.0.1:９４６４", "127.0.0.1:abc",
       "127.0.0.1:-1", ":99999", "127.0.0.1"]  # fmt: skip


def grpc_listen(value: str) -> object:
    return plan_listeners(dataclasses.replace(Settings(), listen=value))


def authzen_listen(value: str) -> object:
    return plan_http_listener(Settings(), value, "authzen_listen")


SETTINGS: dict[str, Callable[[str], object]] = {
    "GATEHOUSE_LISTEN": grpc_listen,
    "GATEHOUSE_AUTHZEN_LISTEN": authzen_listen,
    "GATEHOUSE_METRICS_LISTEN": parse_listen,
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("value", BAD)
def test_a_port_out_of_range_or_not_ascii_digits_is_refused_naming_the_setting(setting: str, value: str) -> None:
    # Before: 65536 and more passed and bind() raised OverflowError (a traceback, exit 1);
    # Arabic-Indic or full-width digits were read as a port; gRPC's listen was not read at all.
    with pytest.raises(SystemExit, match=setting):
        SETTINGS[setting](value)


def test_the_edges_of_the_port_range_are_taken() -> None:
    assert host_port("127.0.0.1:65535") == ("127.0.0.1", 65535)
    assert host_port("[::1]:0") == ("::1", 0)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert grpc_listen("127.0.0.1:0")
    # gRPC's ":port" is every interface (then refused as plaintext off loopback, as before).
    assert host_port(":50051", empty_host=True) == ("", 50051) and host_port(":50051") is None
