"""Certificates for development and tests: a private CA and the leaf certificates it signs.

Kept apart from the ``raftmq certs`` command so that the ``cryptography``
import (over 100 ms) is paid only when certificates are really made, not by
every ``raftmq`` invocation.

Keys are ECDSA P-256: quick to make and accepted by every TLS stack MQTT
clients use. Private keys are written with mode 0600 from the first byte (never
readable by others, even briefly) and are never printed.

The building blocks (``make_ca``, ``make_certificate``, ``write_key``...) are
also what the tests use to make their own odd certificates: expired ones, ones
from another CA, ones naming a given user.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity Apple's TLS stack accepts for server certificates
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")

FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    key: PrivateKey
    cert: x509.Certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftmq development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str = "raftmq development CA", days: int = CA_DAYS) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = new_key()
    start = _now() - datetime.timedelta(minutes=5)  # tolerate small clock differences
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certificate(
    ca: Issued,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = LEAF_DAYS,
) -> Issued:
    """A leaf certificate signed by ``ca``.

    With ``server_names`` it is a server certificate for those DNS names and
    IP addresses (subject alternative names); with ``client`` a client one.
    ``not_before``/``not_after`` override the validity, e.g. to make an expired
    certificate for a test.
    """
    if not server_names and not client:
        raise ValueError("a certificate needs server_names, client=True, or both")
    key = new_key()
    start = not_before if not_before is not None else _now() - datetime.timedelta(minutes=5)
    end = not_after if not_after is not None else start + datetime.timedelta(days=days)
    usages = []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        names = [_general_name(name) for name in dict.fromkeys(server_names)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with ``mode``, then rename over ``path``.

    mkstemp creates the file 0600 already, so a key is never readable by
    others, not even between creation and chmod.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_key(path: Path, key: PrivateKey) -> None:
    """Write a private key (PKCS#8 PEM, unencrypted) readable by its owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, data, 0o600)


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    _write_atomically(
        path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644
    )


def write_issued(directory: Path, stem: str, issued: Issued) -> None:
    """``stem.crt`` and ``stem.key`` in ``directory``."""
    write_cert(directory / f"{stem}.crt", issued.cert)
    write_key(directory / f"{stem}.key", issued.key)


def init(
    directory: Path,
    names: Sequence[str] = (),
    *,
    client_name: str = "client",
    force: bool = False,
) -> list[Path]:
    """Make the CA, server and client files in ``directory``; return their paths.

    FileExistsError if any of them exists and ``force`` is false: a second run
    must not silently replace a CA that clients already trust.
    """
    paths = [directory / name for name in FILES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist (use --force to replace)")
    directory.mkdir(parents=True, exist_ok=True)
    server_names = [*DEFAULT_SERVER_NAMES, *names]
    ca = make_ca()
    server = make_certificate(ca, names[0] if names else "localhost", server_names=server_names)
    client = make_certificate(ca, client_name, client=True)
    write_issued(directory, "ca", ca)
    write_issued(directory, "server", server)
    write_issued(directory, "client", client)
    return paths
