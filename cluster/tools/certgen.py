"""Making certificates: a private CA and the leaf certificates it signs, for
development, tests and cluster nodes.

Kept apart from the ``raftmq certs`` command so that the ``cryptography``
import (over 100 ms) is paid only when certificates are really made, not by
every ``raftmq`` invocation.

Keys are ECDSA P-256: quick to make and accepted by every TLS stack MQTT
clients use. Private keys are written with mode 0600 from the first byte (never
readable by others, even briefly) and are never printed.

The building blocks (``make_ca``, ``make_certificate``, ``write_key``...) are
also what the tests use to make their own odd certificates: expired ones, ones
from another CA, ones naming a given user.

Node certificates (``raftmq certs node``, ``raftmq cluster up``) authenticate
both ends of the forwarding streams between nodes, so each names its node id
(CN and DNS SAN, which ``handshake.check_identity`` and gRPC's target name check
look at) and carries both server and client authentication.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftmq.node.config import NODE_ID_ALLOWED, NODE_ID_PATTERN
from raftmq.node.files import write_atomically

from ..certfiles import PrivateKey, issued_by, parse_certificates, parse_key, same_public_key

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity Apple's TLS stack accepts for server certificates
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
FILES = (CA_CERT, CA_KEY, "server.crt", "server.key", "client.crt", "client.key")
RESERVED_NODE_IDS = ("ca",)
"""Node ids whose ``<id>.crt``/``<id>.key`` would be the CA's own files."""
IF_EXISTS = ("refuse", "replace", "keep")


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


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs) only; a leaf signs TLS handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


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
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _general_name(name: str | x509.GeneralName) -> x509.GeneralName:
    if isinstance(name, x509.GeneralName):
        return name
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certificate(
    ca: Issued,
    common_name: str,
    *,
    server_names: Sequence[str | x509.GeneralName] = (),
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = LEAF_DAYS,
) -> Issued:
    """A leaf certificate signed by ``ca``.

    With ``server_names`` it is a server certificate for those DNS names and
    IP addresses (subject alternative names; a string that parses as an IP
    address is one); with ``client`` a client one.
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
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        names = list(dict.fromkeys(_general_name(name) for name in server_names))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def write_key(path: Path, key: PrivateKey) -> None:
    """Write a private key (PKCS#8 PEM, unencrypted) readable by its owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, data, 0o600)


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    write_atomically(
        path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644
    )


def write_issued(directory: Path, stem: str, issued: Issued) -> None:
    """``stem.crt`` and ``stem.key`` in ``directory``."""
    write_cert(directory / f"{stem}.crt", issued.cert)
    write_key(directory / f"{stem}.key", issued.key)


def _refuse_existing(paths: Iterable[Path]) -> None:
    """FileExistsError naming those of ``paths`` that exist, before anything is written."""
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist (use --force to replace)")


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
    if not force:
        _refuse_existing(paths)
    directory.mkdir(parents=True, exist_ok=True)
    server_names = [*DEFAULT_SERVER_NAMES, *names]
    ca = make_ca()
    server = make_certificate(ca, names[0] if names else "localhost", server_names=server_names)
    client = make_certificate(ca, client_name, client=True)
    write_issued(directory, "ca", ca)
    write_issued(directory, "server", server)
    write_issued(directory, "client", client)
    return paths


# -- node certificates ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """The files a node's ``cluster_tls_ca``, ``cluster_tls_cert`` and ``cluster_tls_key`` name."""

    ca: Path
    cert: Path
    key: Path


def node_files(directory: Path, node_id: str) -> NodeFiles:
    """Where ``issue_node_files`` keeps ``node_id``'s files: ``<id>.crt``, ``<id>.key``."""
    cert, key = (directory / f"{node_id}{suffix}" for suffix in (".crt", ".key"))
    return NodeFiles(directory / CA_CERT, cert, key)


def check_node_id(node_id: str) -> str:
    """``node_id`` if a node may have it and its files leave the CA's alone; else ValueError."""
    if not re.fullmatch(NODE_ID_PATTERN, node_id):
        raise ValueError(f"invalid node id {node_id!r}: must be {NODE_ID_ALLOWED}")
    if node_id in RESERVED_NODE_IDS:
        raise ValueError(
            f"node id {node_id!r} cannot get a certificate: {node_id}.crt and {node_id}.key "
            "are the CA's files"
        )
    return node_id


def make_node_certificate(ca: Issued, node_id: str, names: Sequence[str] = ()) -> Issued:
    """A certificate for node ``node_id``: CN and DNS SAN the node id, then ``names``.

    Server authentication for the streams the node accepts, client
    authentication for those it dials. The node id is a DNS SAN even when it
    looks like an IP address: gRPC compares the name it expects with every SAN
    as text, and ``check_identity`` reads the DNS SANs.
    """
    check_node_id(node_id)
    return make_certificate(ca, node_id, server_names=[x509.DNSName(node_id), *names], client=True)


def load_ca(directory: Path) -> Issued:
    """The CA in ``directory`` (``ca.crt``, ``ca.key``); OSError or ValueError naming the file."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    cert = parse_certificates(cert_path.read_bytes(), cert_path)[0]
    key = parse_key(key_path.read_bytes(), key_path)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(f"{cert_path}: not a CA certificate")
    if not same_public_key(key, cert):
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return Issued(key, cert)


def issue_node_files(
    directory: Path,
    node_ids: Sequence[str],
    names: Sequence[str] = (),
    *,
    if_exists: str = "refuse",
) -> list[Path]:
    """Certificates for ``node_ids`` in ``directory``, signed by its CA; the paths written.

    The CA is ``ca.crt``/``ca.key`` as ``init`` writes them; when neither
    exists it is made first, so one command equips a new cluster. Every
    certificate also gets ``names`` as SANs. When a node's files exist,
    ``if_exists`` says what happens: "refuse" raises FileExistsError before
    anything is written (a running node may use them), "replace" makes new
    ones, and "keep" leaves them if the certificate was signed by this CA and
    the key is there (else makes new ones): how ``raftmq cluster up`` reuses
    what an earlier run made.
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS)}, got {if_exists!r}")
    ids = list(dict.fromkeys(check_node_id(node_id) for node_id in node_ids))
    if not ids:
        raise ValueError("no node id given")
    wanted = {node_id: node_files(directory, node_id) for node_id in ids}
    if if_exists == "refuse":
        _refuse_existing(p for f in wanted.values() for p in (f.cert, f.key))
    ca_paths = [directory / CA_CERT, directory / CA_KEY]
    written: list[Path] = []
    if any(p.exists() for p in ca_paths):
        ca = load_ca(directory)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        ca = make_ca("raftmq cluster CA")
        write_issued(directory, "ca", ca)
        written += ca_paths
    for node_id, files in wanted.items():
        if if_exists == "keep" and _still_valid(files, ca):
            continue
        node = make_node_certificate(ca, node_id, names)
        write_cert(files.cert, node.cert)
        write_key(files.key, node.key)
        written += [files.cert, files.key]
    return written


def _still_valid(files: NodeFiles, ca: Issued) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = parse_certificates(files.cert.read_bytes(), files.cert)[0]
    except (OSError, ValueError):
        return False
    return issued_by(cert, ca.cert)
