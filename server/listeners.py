"""How each listener is secured: TLS, mutual TLS, or plaintext where that is safe.

The gRPC listeners (`plan_listeners`) and the AuthZEN HTTP listener
(`plan_http_listener`, GATEHOUSE_AUTHZEN_LISTEN) follow the same rule with the same
files (`tls_files`, `plaintext_reason`): one set of checks, two transports.

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


def host_port(value: str, *, empty_host: bool = False) -> tuple[str, int] | None:
    """"host:port" or "[v6]:port" as (host, port), the port ASCII digits from 0 to 65535;
    None when it is not that. Every listen setting is read through this one rule. With
    `empty_host`, ":port" (every interface, as grpc reads it) is taken too."""
    host, sep, port = value.rpartition(":")
    if not sep or not (host or empty_host) or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


def plan_listeners(settings: Settings) -> list[Listener]:
    """The listeners `settings` asks for; SystemExit with a clear message when it cannot start."""
    tls = _tls_listener(settings)
    listeners: list[Listener] = []
    if settings.listen and host_port(settings.listen, empty_host=True) is None:
        _refuse(f"{_setting('listen')} must be host:port (e.g. 127.0.0.1:50051), got {settings.listen!r}")
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
    reason, exposed = plaintext_reason(settings.listen, settings, "gRPC")
    return Listener(settings.listen, None, PLAINTEXT, reason, exposed=exposed)


def plaintext_reason(address: str, settings: Settings, protocol: str) -> tuple[str, bool]:
    """(why plaintext on `address` is allowed, whether other hosts can reach it); SystemExit
    when it is not: a non-loopback address without GATEHOUSE_ALLOW_PLAINTEXT=1. The one
    rule for every TCP listener (`protocol` names it in the refusal: gRPC, AuthZEN HTTP)."""
    host = address.rpartition(":")[0]
    if is_loopback(host):
        return "loopback address, only this host can connect", False
    if settings.allow_plaintext:
        return (
            "not a loopback address but GATEHOUSE_ALLOW_PLAINTEXT=1 (--allow-plaintext) allows it: "
            "anything on the network can read and send calls",
            True,
        )
    _refuse(
        f"refusing plaintext {protocol} on {address}: it is not a loopback address, so other hosts "
        "could read and send calls. Configure TLS with --tls-cert-file and --tls-key-file "
        "(GATEHOUSE_TLS_CERT_FILE, GATEHOUSE_TLS_KEY_FILE), listen on 127.0.0.1, or, when the network "
        "is trusted, opt in with --allow-plaintext (GATEHOUSE_ALLOW_PLAINTEXT=1)"
    )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The TLS settings with every file checked: paths (for messages and ssl) and contents."""

    cert: str
    key: str
    client_ca: str  # "" = clients are not asked for a certificate
    chain: bytes
    private_key: bytes
    roots: bytes  # b"" without a client CA

    @property
    def security(self) -> str:
        return MUTUAL_TLS if self.client_ca else TLS

    @property
    def reason(self) -> str:
        if self.client_ca:
            return f"certificate {self.cert}, clients must present a certificate issued by {self.client_ca}"
        return f"certificate {self.cert}, clients are not asked for one"


def tls_files(settings: Settings) -> TlsFiles | None:
    """The TLS files the settings name, each checked (see the module); None when TLS is
    not configured. SystemExit naming the setting when one is missing or unusable."""
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
    roots = b""
    if client_ca:
        roots = _read_pem("tls_client_ca_file", client_ca, b"-----BEGIN CERTIFICATE-----", "CA certificate")
        _check_ca_bundle(client_ca)
    return TlsFiles(cert, key, client_ca, chain, private_key, roots)


def _tls_listener(settings: Settings) -> Listener | None:
    """The TLS listener for `--listen` when TLS is configured, after checking every file."""
    files = tls_files(settings)
    if files is None:
        return None
    if not files.client_ca:
        credentials = grpc.ssl_server_credentials([(files.private_key, files.chain)])
    else:
        credentials = grpc.ssl_server_credentials(
            [(files.private_key, files.chain)], root_certificates=files.roots, require_client_auth=True
        )
    return Listener(settings.listen, credentials, files.security, files.reason)


@dataclass(frozen=True, slots=True)
class HttpListener:
    """The AuthZEN HTTP listener: where, and its TLS context (None = plaintext)."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    security: str
    reason: str
    exposed: bool = False

    @property
    def log_level(self) -> int:
        return logging.WARNING if self.exposed else logging.INFO


def plan_http_listener(settings: Settings, address: str, setting: str) -> HttpListener:
    """The HTTP listener on `address` ("host:port", "[::1]:port"), secured by the same
    rule and the same TLS files as the gRPC listener: TLS (mutual TLS with a client CA)
    when --tls-cert-file is set, else plaintext on loopback only unless
    GATEHOUSE_ALLOW_PLAINTEXT=1. SystemExit naming `setting` for an address that is no
    host:port."""
    parsed = host_port(address)
    if parsed is None:
        _refuse(f"{_setting(setting)} must be host:port (e.g. 127.0.0.1:8181), got {address!r}")
    host, port = parsed
    files = tls_files(settings)
    if files is None:
        reason, exposed = plaintext_reason(address, settings, "AuthZEN HTTP")
        return HttpListener(host, port, None, PLAINTEXT, reason, exposed)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key, password=_no_password)
    if files.client_ca:
        context.load_verify_locations(cafile=files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return HttpListener(host, port, context, files.security, files.reason)


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
