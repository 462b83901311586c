"""How each gRPC listener is secured: TLS, mutual TLS, or plaintext where that is safe.

The rule, applied before anything binds:

- `--listen` with `--tls-cert-file` and `--tls-key-file` serves TLS. Adding
  `--tls-client-ca-file` makes it mutual TLS: a client that does not present a
  certificate issued by that bundle cannot complete the handshake.
- `--listen` without TLS serves plaintext only on a loopback address (127.0.0.0/8, ::1,
  or a name that resolves only to those), which nothing off this host can reach. Any
  other address (0.0.0.0, ::, a LAN address) is refused unless `--allow-plaintext` says
  the network is trusted some other way (a pod's private network namespace, a mesh that
  encrypts for us).
- `--unix-socket` is always plaintext: only processes allowed to open the socket file can
  connect, so filesystem permissions are its access control and TLS would add nothing.

A bad TLS configuration fails here, at start, naming the setting: half of the
certificate/key pair, an unreadable file, a file that is not PEM, an encrypted key, a key
that does not match its certificate. (grpc itself reports a bad pair only as a failure to
bind the address, which reads like a port conflict.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import NoReturn

import grpc

from gatehouse.settings import Settings

TLS = "TLS"
MUTUAL_TLS = "mutual TLS"
PLAINTEXT = "plaintext"


@dataclass(frozen=True, slots=True)
class Listener:
    """One address to serve on, and how it is secured."""

    address: str  # as grpc takes it: "host:port" or "unix:/path"
    credentials: grpc.ServerCredentials | None  # None = plaintext
    security: str  # TLS, MUTUAL_TLS or PLAINTEXT
    reason: str  # why this listener is secured this way, for the start log line
    exposed: bool = False  # plaintext that other hosts can reach (allowed by opt-in only)

    @property
    def log_level(self) -> int:
        return logging.WARNING if self.exposed else logging.INFO


def plan_listeners(settings: Settings) -> list[Listener]:
    """The listeners `settings` asks for; SystemExit with a clear message when it cannot start."""
    tls = _tls_listener(settings)
    listeners: list[Listener] = []
    if settings.listen:
        listeners.append(tls or _plaintext_tcp_listener(settings))
    elif tls is not None:
        _refuse("--tls-cert-file is set but there is no TCP listener (--listen '') to use it")
    if settings.unix_socket:
        listeners.append(
            Listener(
                f"unix:{settings.unix_socket}",
                None,
                PLAINTEXT,
                "unix socket, filesystem permissions decide who may connect",
            )
        )
    if not listeners:
        _refuse("nothing to listen on: set --listen or --unix-socket")
    return listeners


def bind(server: grpc.aio.Server, listener: Listener) -> str:
    """Add `listener` to `server`; the address it took (with the real port when :0 was asked)."""
    unix_path = listener.address.removeprefix("unix:") if listener.address.startswith("unix:") else None
    if unix_path is not None and os.path.exists(unix_path):
        # A socket file left by a previous run would make the bind fail.
        os.unlink(unix_path)
    try:
        if listener.credentials is None:
            port = server.add_insecure_port(listener.address)
        else:
            port = server.add_secure_port(listener.address, listener.credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        hint = "" if unix_path is not None else " (is another server there?)"
        _refuse(f"cannot listen on {listener.address}{hint}")
    if unix_path is not None:
        return listener.address
    return f"{listener.address.rsplit(':', 1)[0]}:{port}"


def is_loopback(host: str) -> bool:
    """True when only this host can reach `host`: a loopback IP, or a name resolving only to such."""
    host = host.strip("[]")
    if not host:
        return False  # ":50051" binds every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        resolved = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    # grpc binds every address a name resolves to: all of them must be loopback.
    return bool(resolved) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in resolved)


def _plaintext_tcp_listener(settings: Settings) -> Listener:
    host = settings.listen.rpartition(":")[0]
    if is_loopback(host):
        return Listener(settings.listen, None, PLAINTEXT, "loopback address, only this host can connect")
    if settings.allow_plaintext:
        return Listener(
            settings.listen,
            None,
            PLAINTEXT,
            "not a loopback address but GATEHOUSE_ALLOW_PLAINTEXT=1 (--allow-plaintext) allows it: "
            "anything on the network can read and send calls",
            exposed=True,
        )
    _refuse(
        f"refusing plaintext gRPC on {settings.listen}: it is not a loopback address, so other hosts "
        "could read and send calls. Configure TLS with --tls-cert-file and --tls-key-file "
        "(GATEHOUSE_TLS_CERT_FILE, GATEHOUSE_TLS_KEY_FILE), listen on 127.0.0.1, or, when the network "
        "is trusted, opt in with --allow-plaintext (GATEHOUSE_ALLOW_PLAINTEXT=1)"
    )


def _tls_listener(settings: Settings) -> Listener | None:
    """The TLS listener for `--listen` when TLS is configured, after checking every file."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        if cert:
            problem = f"{_setting('tls_cert_file')} is set but {_setting('tls_key_file')} is not"
        elif key:
            problem = f"{_setting('tls_key_file')} is set but {_setting('tls_cert_file')} is not"
        else:
            problem = (
                f"{_setting('tls_client_ca_file')} is set but {_setting('tls_cert_file')} and "
                f"{_setting('tls_key_file')} are not"
            )
        _refuse(f"{problem}: TLS needs the server's certificate and its private key")
    chain = _read_pem("tls_cert_file", cert, b"-----BEGIN CERTIFICATE-----", "certificate")
    private_key = _read_pem("tls_key_file", key, b"PRIVATE KEY-----", "private key")
    _check_pair(cert, key)
    if not client_ca:
        return Listener(
            settings.listen,
            grpc.ssl_server_credentials([(private_key, chain)]),
            TLS,
            f"certificate {cert}, clients are not asked for one",
        )
    roots = _read_pem("tls_client_ca_file", client_ca, b"-----BEGIN CERTIFICATE-----", "CA certificate")
    _check_ca_bundle(client_ca)
    return Listener(
        settings.listen,
        grpc.ssl_server_credentials([(private_key, chain)], root_certificates=roots, require_client_auth=True),
        MUTUAL_TLS,
        f"certificate {cert}, clients must present a certificate issued by {client_ca}",
    )


def _read_pem(setting: str, path: str, marker: bytes, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        _refuse(f"cannot read {_setting(setting)} {path!r}: {exc.strerror or exc}")
    if marker not in data:
        _refuse(f"{_setting(setting)} {path!r} holds no PEM {what}")
    return data


def _check_pair(cert: str, key: str) -> None:
    """Let OpenSSL parse the pair now: grpc rejects a bad pair only as "failed to bind to address"."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        problem = (
            "the key does not match the certificate"
            if exc.reason == "KEY_VALUES_MISMATCH"
            else f"OpenSSL cannot load them ({exc})"
        )
        _refuse(f"{_setting('tls_cert_file')} {cert!r} and {_setting('tls_key_file')} {key!r}: {problem}")
    except _EncryptedKey:
        _refuse(f"{_setting('tls_key_file')} {key!r} is encrypted: grpc needs an unencrypted key")


def _check_ca_bundle(path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        _refuse(f"{_setting('tls_client_ca_file')} {path!r} is not a usable CA bundle: {exc}")


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey


def _setting(name: str) -> str:
    """How an operator sets `name`: its flag and its environment variable."""
    return f"--{name.replace('_', '-')} (GATEHOUSE_{name.upper()})"


def _refuse(message: str) -> NoReturn:
    # The same shape as every other start-up refusal: a message on stderr, exit status 1.
    raise SystemExit(f"gatehouse: {message}")
