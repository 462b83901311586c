"""Certificates made in the test run with trustme: a CA the sidecar trusts, and one it does not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme


@dataclass(frozen=True)
class Pki:
    """Two CAs and the files a sidecar is configured with.

    `ca` issued the server's certificate and the trusted client's; `stranger_ca` is a
    second, unrelated CA (a client certificate from it must be rejected).
    """

    ca: trustme.CA
    stranger_ca: trustme.CA
    server_cert_file: Path  # chain, server certificate first
    server_key_file: Path
    ca_file: Path  # `ca`'s certificate: the client-CA bundle for mutual TLS
    client: trustme.LeafCert
    stranger_client: trustme.LeafCert

    def credentials(
        self, *, trust: trustme.CA | None = None, present: trustme.LeafCert | None = None
    ) -> grpc.ChannelCredentials:
        """Client credentials trusting `trust` (default: the right CA), presenting `present` if given."""
        roots = (trust or self.ca).cert_pem.bytes()
        if present is None:
            return grpc.ssl_channel_credentials(roots)
        chain = b"".join(pem.bytes() for pem in present.cert_chain_pems)
        return grpc.ssl_channel_credentials(roots, present.private_key_pem.bytes(), chain)


def issue_pki(directory: Path) -> Pki:
    """Make the CAs and certificates, writing the server's files into `directory`."""
    ca, stranger_ca = trustme.CA(), trustme.CA()
    # Clients dial 127.0.0.1 (or localhost): the certificate must name both.
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    server_cert_file = directory / "server.pem"
    server_key_file = directory / "server.key"
    ca_file = directory / "client-ca.pem"
    server.private_key_pem.write_to_path(str(server_key_file))
    server_cert_file.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(
        ca=ca,
        stranger_ca=stranger_ca,
        server_cert_file=server_cert_file,
        server_key_file=server_key_file,
        ca_file=ca_file,
        client=ca.issue_cert("billing@clients.example"),
        stranger_client=stranger_ca.issue_cert("billing@clients.example"),
    )


def issue_leaf(ca: trustme.CA, *, uri: str) -> trustme.LeafCert:
    """A client certificate from `ca` naming `uri` (a SPIFFE id, as Istio's and Envoy's
    certificates do) as its only subject alternative name; trustme makes DNS, IP and
    e-mail names only."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return trustme.LeafCert(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
        [ca.cert_pem.bytes()],
    )
