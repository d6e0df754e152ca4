"""TLS for the mqtts:// and wss:// listeners: the server context and certificate identities.

One ``ssl.SSLContext`` serves every TLS listener of a node. It is built once at
startup, so a missing or unreadable certificate stops the node with a message
naming the key and the file instead of failing each client's handshake later.
"""

from __future__ import annotations

import ssl
from typing import Any

from .config import Config, ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

# getpeercert() names subject alternative name types like this; these are the
# ones that can name a user. IP addresses and directory names cannot.
_SAN_USERNAME_TYPES = ("DNS", "email", "URI")


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc)


def build_server_context(config: Config) -> ssl.SSLContext:
    """The context every TLS listener of the node uses.

    TLS 1.2 is the floor whatever the system's OpenSSL defaults allow: 1.0 and
    1.1 are deprecated (RFC 8996). With ``tls_require_client_cert`` OpenSSL
    itself refuses, during the handshake, clients without a certificate,
    with one from another CA, or with an expired one, so no such client ever
    reaches the MQTT layer.
    """
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("TLS listeners need both 'tls_cert' and 'tls_key'")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"key 'tls_cert'/'tls_key': cannot load certificate {config.tls_cert!r} "
            f"with key {config.tls_key!r}: {_describe_error(exc)}"
        ) from None
    if config.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=config.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"key 'tls_ca': cannot load CA certificates from {config.tls_ca!r}: "
                f"{_describe_error(exc)}"
            ) from None
        # Ask for a certificate even when not requiring one, so that a client
        # that has one can still be identified by it.
        context.verify_mode = ssl.CERT_OPTIONAL
    if config.tls_require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def username_from_certificate(peercert: dict[str, Any] | None, source: str) -> str | None:
    """The username a verified client certificate stands for, or None if it names none.

    ``peercert`` is what ``SSLSocket.getpeercert()`` returns, which is only
    filled in for certificates OpenSSL verified against ``tls_ca``. ``source``
    is ``"cn"`` (the subject's common name, as Mosquitto's
    ``use_identity_as_username``) or ``"san"`` (the first DNS, email or URI
    subject alternative name, for certificates that carry their identity
    there, as SPIFFE-style ones do).
    """
    if not peercert:
        return None
    if source == "cn":
        for rdn in peercert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName" and value:
                    return str(value)
        return None
    if source == "san":
        for kind, value in peercert.get("subjectAltName", ()):
            if kind in _SAN_USERNAME_TYPES and value:
                return str(value)
        return None
    raise ValueError(f"unknown certificate username source {source!r}")
