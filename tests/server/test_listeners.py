"""TLS, mutual TLS and the plaintext rule, against a real sidecar with certificates made here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from gatehouse.server.app import Sidecar
from gatehouse.server.listeners import MUTUAL_TLS, PLAINTEXT, TLS, is_loopback, plan_listeners
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, common_pb2
from tests.certs import Pki
from tests.client import make_client

UNKNOWN_TENANT = "00000000-0000-0000-0000-00000000000f"


def tls_settings(base: Settings, pki: Pki, *, mutual: bool = False, **changes: Any) -> Settings:
    return dataclasses.replace(
        base,
        tls_cert_file=str(pki.server_cert_file),
        tls_key_file=str(pki.server_key_file),
        tls_client_ca_file=str(pki.ca_file) if mutual else "",
        **changes,
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Sidecar]:
    sidecar = Sidecar(settings)
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop(grace=0.2)


@pytest.fixture
async def tls_sidecar(sidecar_settings: Settings, pki: Pki) -> AsyncIterator[Sidecar]:
    async with running(tls_settings(sidecar_settings, pki)) as sidecar:
        yield sidecar


@pytest.fixture
async def mtls_sidecar(sidecar_settings: Settings, pki: Pki) -> AsyncIterator[Sidecar]:
    async with running(tls_settings(sidecar_settings, pki, mutual=True)) as sidecar:
        yield sidecar


async def check(target: str, credentials: grpc.ChannelCredentials | None) -> access_pb2.CheckAccessResponse:
    """One real CheckAccess (an unknown tenant: the decision path, no data needed) over a new channel."""
    client = make_client(target, "unused", credentials)
    try:
        return await client.access.CheckAccess(
            access_pb2.CheckAccessRequest(
                tenant_id=UNKNOWN_TENANT, subject=common_pb2.Subject(type="user", id="alice"), permission="doc.read"
            ),
            timeout=10,
        )
    finally:
        await client.channel.close()


async def refused(sidecar: Sidecar, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await check(sidecar.addresses[0], credentials)
    return failure.value.code()


# --- TLS -------------------------------------------------------------------------------


async def test_tls_answers_a_client_that_trusts_the_ca(tls_sidecar: Sidecar, pki: Pki) -> None:
    response = await check(tls_sidecar.addresses[0], pki.credentials())
    assert response.reason == access_pb2.DECISION_REASON_TENANT_NOT_FOUND


async def test_tls_refuses_a_client_that_does_not_trust_the_ca(tls_sidecar: Sidecar, pki: Pki) -> None:
    assert await refused(tls_sidecar, pki.credentials(trust=pki.stranger_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_tls_refuses_a_plaintext_client(tls_sidecar: Sidecar) -> None:
    assert await refused(tls_sidecar, None) == grpc.StatusCode.UNAVAILABLE


async def test_tls_without_client_ca_does_not_ask_for_a_client_certificate(
    tls_sidecar: Sidecar, pki: Pki
) -> None:
    # A client that presents one anyway is served the same.
    response = await check(tls_sidecar.addresses[0], pki.credentials(present=pki.stranger_client))
    assert response.reason == access_pb2.DECISION_REASON_TENANT_NOT_FOUND


# --- mutual TLS ------------------------------------------------------------------------


async def test_mtls_answers_a_client_with_a_certificate_from_the_client_ca(
    mtls_sidecar: Sidecar, pki: Pki
) -> None:
    response = await check(mtls_sidecar.addresses[0], pki.credentials(present=pki.client))
    assert response.reason == access_pb2.DECISION_REASON_TENANT_NOT_FOUND


async def test_mtls_rejects_a_client_without_a_certificate(mtls_sidecar: Sidecar, pki: Pki) -> None:
    assert await refused(mtls_sidecar, pki.credentials()) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_rejects_a_certificate_from_another_ca(mtls_sidecar: Sidecar, pki: Pki) -> None:
    assert await refused(mtls_sidecar, pki.credentials(present=pki.stranger_client)) == grpc.StatusCode.UNAVAILABLE


# --- what the server says at start -----------------------------------------------------


@pytest.mark.parametrize("mode", ["plaintext", "tls", "mtls"])
async def test_start_logs_one_line_per_listener_saying_how_it_is_secured(
    sidecar_settings: Settings, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    socket_path = tmp_path / "gatehouse.sock"
    settings = dataclasses.replace(sidecar_settings, unix_socket=str(socket_path))
    if mode != "plaintext":
        settings = tls_settings(settings, pki, mutual=mode == "mtls")
    expected = {
        "plaintext": "plaintext; loopback address, only this host can connect",
        "tls": f"TLS; certificate {pki.server_cert_file}, clients are not asked for one",
        "mtls": f"mutual TLS; certificate {pki.server_cert_file}, clients must present a certificate issued by "
        f"{pki.ca_file}",
    }[mode]
    caplog.set_level(logging.INFO, logger="gatehouse")
    async with running(settings) as sidecar:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("listening on ")]
        assert lines == [
            f"listening on {sidecar.addresses[0]}: {expected}",
            f"listening on unix:{socket_path}: plaintext; unix socket, filesystem permissions decide who may connect",
        ]


async def test_the_unix_socket_stays_plaintext_when_tcp_is_tls(
    sidecar_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    socket_path = tmp_path / "gatehouse.sock"
    async with running(tls_settings(sidecar_settings, pki, mutual=True, unix_socket=str(socket_path))) as sidecar:
        assert sidecar.addresses[1] == f"unix:{socket_path}"
        response = await check(sidecar.addresses[1], None)
        assert response.reason == access_pb2.DECISION_REASON_TENANT_NOT_FOUND


# --- the plan: which listeners may start, and how ---------------------------------------


def plan(**values: Any) -> list[tuple[str, str]]:
    """(address, security) of each listener these settings start."""
    return [(listener.address, listener.security) for listener in plan_listeners(Settings(**values))]


def refusal(**values: Any) -> str:
    """The message these settings stop the server with."""
    with pytest.raises(SystemExit) as stopped:
        plan_listeners(Settings(**values))
    message = str(stopped.value.code)
    assert message.startswith("gatehouse: ")
    return message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "[::1]", "::1", "localhost"])
def test_loopback_serves_plaintext_by_default(host: str) -> None:
    assert is_loopback(host)
    assert plan(listen=f"{host}:50051") == [(f"{host}:50051", PLAINTEXT)]


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:50051", ":50051", "10.1.2.3:50051", "192.168.0.7:50051"])
def test_plaintext_on_a_non_loopback_address_is_refused_unless_allowed(listen: str) -> None:
    message = refusal(listen=listen)
    assert f"refusing plaintext gRPC on {listen}" in message
    for remedy in ("--allow-plaintext", "GATEHOUSE_ALLOW_PLAINTEXT=1", "--tls-cert-file", "127.0.0.1"):
        assert remedy in message
    [listener] = plan_listeners(Settings(listen=listen, allow_plaintext=1))
    assert listener.security == PLAINTEXT and listener.exposed
    assert "GATEHOUSE_ALLOW_PLAINTEXT=1" in listener.reason


def test_tls_may_listen_anywhere(pki: Pki) -> None:
    files = {"tls_cert_file": str(pki.server_cert_file), "tls_key_file": str(pki.server_key_file)}
    assert plan(listen="0.0.0.0:50051", **files) == [("0.0.0.0:50051", TLS)]
    assert plan(listen="[::]:50051", tls_client_ca_file=str(pki.ca_file), **files) == [("[::]:50051", MUTUAL_TLS)]


def test_a_unix_socket_alone_is_plaintext() -> None:
    assert plan(listen="", unix_socket="/run/gh.sock") == [("unix:/run/gh.sock", PLAINTEXT)]


def test_nothing_to_listen_on_is_refused() -> None:
    assert "nothing to listen on" in refusal(listen="")


def test_certificate_without_key_is_refused(pki: Pki) -> None:
    message = refusal(tls_cert_file=str(pki.server_cert_file))
    assert "--tls-cert-file (GATEHOUSE_TLS_CERT_FILE) is set but --tls-key-file (GATEHOUSE_TLS_KEY_FILE) is not" in (
        message
    )


def test_key_without_certificate_is_refused(pki: Pki) -> None:
    message = refusal(tls_key_file=str(pki.server_key_file))
    assert "--tls-key-file (GATEHOUSE_TLS_KEY_FILE) is set but --tls-cert-file (GATEHOUSE_TLS_CERT_FILE) is not" in (
        message
    )


def test_client_ca_without_a_server_certificate_is_refused(pki: Pki) -> None:
    message = refusal(tls_client_ca_file=str(pki.ca_file))
    assert "--tls-client-ca-file (GATEHOUSE_TLS_CLIENT_CA_FILE) is set but" in message


def test_tls_without_a_tcp_listener_is_refused(pki: Pki) -> None:
    message = refusal(
        listen="",
        unix_socket="/run/gh.sock",
        tls_cert_file=str(pki.server_cert_file),
        tls_key_file=str(pki.server_key_file),
    )
    assert "no TCP listener" in message


@pytest.mark.parametrize("setting", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
@pytest.mark.parametrize("problem", ["missing", "directory", "not pem"])
def test_an_unusable_file_is_refused_naming_its_setting(pki: Pki, tmp_path: Path, setting: str, problem: str) -> None:
    bad = tmp_path / "bad.pem"
    if problem == "directory":
        bad.mkdir()
    elif problem == "not pem":
        bad.write_text("this is not a certificate\n")
    values = {
        "tls_cert_file": str(pki.server_cert_file),
        "tls_key_file": str(pki.server_key_file),
        "tls_client_ca_file": str(pki.ca_file),
        setting: str(bad),
    }
    message = refusal(**values)
    flag = "--" + setting.replace("_", "-")
    assert f"{flag} (GATEHOUSE_{setting.upper()}) '{bad}'" in message
    expected = {"missing": "cannot read", "directory": "cannot read", "not pem": "holds no PEM"}[problem]
    assert expected in message


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    other_key = tmp_path / "other.key"
    pki.ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    message = refusal(tls_cert_file=str(pki.server_cert_file), tls_key_file=str(other_key))
    assert "the key does not match the certificate" in message


def test_an_encrypted_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server_key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    message = refusal(tls_cert_file=str(pki.server_cert_file), tls_key_file=str(encrypted))
    assert "is encrypted" in message


def test_a_client_ca_bundle_must_hold_a_certificate(pki: Pki, tmp_path: Path) -> None:
    # A PEM certificate header with a broken body gets past the marker check; OpenSSL does not.
    broken = tmp_path / "broken-ca.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    message = refusal(
        tls_cert_file=str(pki.server_cert_file), tls_key_file=str(pki.server_key_file), tls_client_ca_file=str(broken)
    )
    assert "not a usable CA bundle" in message


def test_settings_read_tls_from_the_environment_and_allow_plaintext_as_a_bare_flag() -> None:
    settings = Settings.from_env(
        {"GATEHOUSE_TLS_CERT_FILE": "/c.pem", "GATEHOUSE_TLS_KEY_FILE": "/k.pem", "GATEHOUSE_TLS_CLIENT_CA_FILE": "/ca"}
    )
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == ("/c.pem", "/k.pem", "/ca")
    assert settings.allow_plaintext == 0
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    assert Settings.from_args(parser.parse_args(["--allow-plaintext"])).allow_plaintext == 1
    assert Settings.from_args(parser.parse_args(["--allow-plaintext", "0"])).allow_plaintext == 0
    assert Settings.from_env({"GATEHOUSE_ALLOW_PLAINTEXT": "1"}).allow_plaintext == 1

