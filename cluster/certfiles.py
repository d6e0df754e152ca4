"""Reading certificate files: a node's configured TLS files, checked at startup, and
the parsing that making certificates (``tools/certgen.py``) shares.

Imported only where certificates are read or made, so that the
``cryptography`` import (over 100 ms) is paid by nodes with node TLS alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from raftmq.node.config import ConfigError

log = logging.getLogger("raftmq.cluster")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""What can sign here: the keys made here are EC; a CA brought by the user may be RSA."""


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def parse_key(data: bytes, where: object) -> PrivateKey:
    """The unencrypted EC or RSA private key in ``data``; ValueError naming ``where``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{where}: the key is encrypted; an unencrypted key is needed") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{where}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{where}: a {type(key).__name__} cannot sign here; use EC or RSA")
    return key


def parse_certificates(data: bytes, where: object) -> list[x509.Certificate]:
    """Every PEM certificate in ``data`` (at least one); ValueError naming ``where``."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{where}: no PEM certificate in it") from None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The names a peer's ``check_identity`` accepts the certificate for: CN and DNS SANs."""
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names += san.get_values_for_type(x509.DNSName)
    return list(dict.fromkeys(names))


@contextmanager
def _blaming(config_key: str) -> Iterator[None]:
    """Turn the ValueError of a file's contents into a ConfigError naming the config key."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"key {config_key!r}: {exc}") from None


def load_node_tls(node_id: str, ca: str, cert: str, key: str) -> tuple[bytes, bytes, bytes]:
    """The bytes of ``cluster_tls_ca``, ``cluster_tls_cert`` and ``cluster_tls_key``, checked.

    gRPC would take unreadable or mismatched files without a word and fail
    every handshake, so they are checked here, at startup: ConfigError names
    the key and the file. A certificate that does not name ``node_id`` or that
    ``ca`` did not sign only gets a warning: the node runs and its peers
    refuse its streams, exactly as they refuse a node that never ran this
    check; the warning tells the operator why before they look at the peers.
    """
    paths = {"cluster_tls_ca": ca, "cluster_tls_cert": cert, "cluster_tls_key": key}
    data: dict[str, bytes] = {}
    for config_key, path in paths.items():
        try:
            data[config_key] = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"key {config_key!r}: cannot read {path!r}: {reason}") from None
    with _blaming("cluster_tls_ca"):
        cas = parse_certificates(data["cluster_tls_ca"], repr(ca))
    with _blaming("cluster_tls_cert"):
        leaf = parse_certificates(data["cluster_tls_cert"], repr(cert))[0]
    with _blaming("cluster_tls_key"):
        private = parse_key(data["cluster_tls_key"], repr(key))
    if not same_public_key(private, leaf):
        raise ConfigError(
            f"key 'cluster_tls_key': {key!r} is not the key of the certificate in {cert!r}"
        )
    names = certificate_names(leaf)
    if node_id not in names:
        log.warning(
            "cluster_tls_cert %r names %s, not this node %r: peers will refuse its streams",
            cert,
            names,
            node_id,
        )
    if not any(issued_by(leaf, authority) for authority in cas):
        log.warning(
            "cluster_tls_cert %r is not signed by cluster_tls_ca %r: peers that trust that CA "
            "will refuse its streams",
            cert,
            ca,
        )
    return data["cluster_tls_ca"], data["cluster_tls_cert"], data["cluster_tls_key"]
