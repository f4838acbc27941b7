"""Generated TLS for secure mode: a private CA and a server certificate signed by it.

``rollout up --secure --tls`` writes these under DATA_DIR/secure/tls/ (keys mode 0600)
and points nats-server at them. Clients trust the CA through ``SSL_CERT_FILE`` (the
Python ``ssl`` default context reads it, and nats-py uses that context for ``tls://``
URLs), so no client code changes. ECDSA P-256: small, fast handshakes, accepted by Go's
TLS stack in nats-server. The CA lives only on this machine; delete the directory to
rotate everything.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rollout_engine.engine.stack.private_files import PrivateDir

__all__ = ["write_certificates"]

_VALID_DAYS = 365


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rollout-engine"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: Iterable[str]) -> list[object]:
    from cryptography import x509

    names: list[object] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in hosts:
        try:
            entry: object = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def write_certificates(directory: Path, hosts: Iterable[str] = ("127.0.0.1",)) -> dict[str, Path]:
    """Create ``ca.pem``, ``server.pem`` and ``server-key.pem`` (0600) unless they exist.

    Returns the paths as ``{"ca": ..., "cert": ..., "key": ...}``. ``hosts`` become the
    certificate's subject alternative names (loopback names are always included). The
    directory must be this user's with no group or world access (it is created so).
    """
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    with PrivateDir(directory) as private:
        if all(private.exists(p.name) for p in paths.values()):
            return paths
        _generate(private, hosts)
    return paths


def _generate(private: Any, hosts: Iterable[str]) -> None:
    """Make the CA and the server certificate; the CA's key is never written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("rollout-engine local CA"))
        .issuer_name(_name("rollout-engine local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("rollout-engine nats-server"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private.write("server-key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode())
    private.write("server.pem", cert.public_bytes(pem).decode())
    private.write("ca.pem", ca_cert.public_bytes(pem).decode())
