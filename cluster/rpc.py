"""The gRPC surface of forwarding: method path, frame envelope, handshake, credentials.

Why no generated code: the service has one method whose message is one
``bytes`` field, so protobuf would only add a runtime dependency and a
generated module to keep in sync. The method is registered by path with a
generic handler, and the envelope (field 1, length-delimited) is written by
hand. ``proto/raftmq.proto`` still describes the wire exactly; a unit test
compiles it with grpcio-tools and compares protobuf's bytes with ours.

Peers prove who they are in two independent ways, each used when configured:

- TLS (``NodeTLS``): mutual TLS with node certificates from one CA. The
  server requires a client certificate and checks that it names (CN or SAN)
  the node id the client claims; the client checks that the server's
  certificate names the peer it meant to reach (``ssl_target_name_override``).
  Node certificates must therefore carry the node id as CN or DNS SAN.
- The cluster secret: each side sends an HMAC-SHA256 over both node ids and
  incarnations, keyed from the secret, in its metadata. Without TLS this
  keeps out nodes of another cluster and misconfigured ones, but not an
  attacker on the network path (nothing is encrypted): use TLS for that.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .frames import MAX_FRAME_BYTES, FrameError

if TYPE_CHECKING:
    from raftmq.node.config import Config

SERVICE = "raftmq.forwarding.v1.Forwarding"
METHOD = "Stream"
PATH = f"/{SERVICE}/{METHOD}"

NODE_KEY = "raftmq-node"
INCARNATION_KEY = "raftmq-incarnation"
AUTH_KEY = "raftmq-auth"

_FRAME_TAG = 0x0A  # field 1, wire type 2 (length-delimited)
_ENVELOPE_SLACK = 16  # tag + length varint


class PeerRejected(Exception):
    """A peer's handshake failed: wrong cluster secret, identity or direction."""


# -- envelope -----------------------------------------------------------------


def wrap(frame: bytes) -> bytes:
    """The protobuf ``Frame`` message holding ``frame`` in field ``capnp``."""
    length = len(frame)
    head = bytearray((_FRAME_TAG,))
    while length >= 0x80:
        head.append((length & 0x7F) | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head) + frame


def unwrap(message: bytes) -> bytes:
    """The Cap'n Proto bytes inside a protobuf ``Frame``; ``FrameError`` if malformed.

    A copy on purpose: Cap'n Proto refuses data that is not word-aligned,
    and the payload starts 2 to 6 bytes into the gRPC message.
    """
    view = memoryview(message)
    if len(view) < 2 or view[0] != _FRAME_TAG:
        raise FrameError(f"gRPC message of {len(view)} bytes is not a Frame envelope")
    length = 0
    shift = 0
    pos = 1
    while True:
        if pos >= len(view) or shift > 28:
            raise FrameError("Frame envelope has a malformed length")
        byte = view[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if pos + length != len(view):
        raise FrameError(f"Frame envelope announces {length} bytes, carries {len(view) - pos}")
    return bytes(view[pos:])


# -- handshake ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Hello:
    node_id: str
    incarnation: int


def keyed_proof(secret: bytes, purpose: str, fields: Sequence[str]) -> str:
    """HMAC-SHA256 over ``fields`` with a key derived from ``secret`` for ``purpose`` alone.

    The raw secret (also the Raft password) never serves as a key, and a proof
    made for one purpose (forwarding, admin) never passes for another's.
    """
    key = hashlib.sha256(f"raftmq {purpose}\0".encode() + secret).digest()
    text = "\n".join([f"raftmq-{purpose}-v1", *fields])
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _proof(
    secret: bytes, role: str, sender: str, receiver: str, incarnations: Sequence[int]
) -> str:
    return keyed_proof(secret, "forwarding", [role, sender, receiver, *map(str, incarnations)])


def text_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The text entries of gRPC metadata by key; binary (``-bin``) values are left out."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def hello_metadata(
    role: str,
    sender: str,
    receiver: str,
    incarnations: Sequence[int],
    secret: bytes | None,
) -> tuple[tuple[str, str], ...]:
    """Metadata introducing ``sender`` to ``receiver``.

    ``role`` is "dial" or "accept" so that one side's proof cannot be
    reflected back as the other's; ``incarnations`` starts with the sender's
    (the acceptor also binds the dialer's, tying its answer to this stream).
    """
    metadata = [(NODE_KEY, sender), (INCARNATION_KEY, str(incarnations[0]))]
    if secret is not None:
        metadata.append((AUTH_KEY, _proof(secret, role, sender, receiver, incarnations)))
    return tuple(metadata)


def check_hello(
    metadata: Sequence[tuple[str, str | bytes]] | None,
    role: str,
    receiver: str,
    secret: bytes | None,
    receiver_incarnation: int | None = None,
) -> Hello:
    """Parse and authenticate the metadata a peer sent us; ``PeerRejected`` if it fails."""
    values = text_metadata(metadata)
    sender = values.get(NODE_KEY)
    raw_incarnation = values.get(INCARNATION_KEY, "")
    if not sender:
        raise PeerRejected(f"no {NODE_KEY} in the {role} metadata")
    digits = raw_incarnation.isascii() and raw_incarnation.isdigit() and len(raw_incarnation) <= 20
    if not digits or int(raw_incarnation) >= 1 << 64:
        raise PeerRejected(f"node {sender!r}: bad {INCARNATION_KEY} {raw_incarnation[:24]!r}")
    incarnation = int(raw_incarnation)
    if secret is not None:
        incarnations = [incarnation]
        if receiver_incarnation is not None:
            incarnations.append(receiver_incarnation)
        expected = _proof(secret, role, sender, receiver, incarnations)
        if not hmac.compare_digest(values.get(AUTH_KEY, ""), expected):
            raise PeerRejected(f"node {sender!r} does not know the cluster secret")
    return Hello(sender, incarnation)


def check_identity(claimed: str, auth_context: Mapping[str, Sequence[bytes]]) -> None:
    """The peer's verified TLS certificate must name (CN or SAN) the node id it claims."""
    names = list(
        dict.fromkeys(
            name.decode(errors="replace")
            for key in ("x509_common_name", "x509_subject_alternative_name")
            for name in auth_context.get(key, ())
        )
    )
    if claimed not in names:
        raise PeerRejected(f"node {claimed!r} presented a certificate for {names or 'nobody'}")


# -- credentials and channel options ---------------------------------------------


@dataclass(slots=True, frozen=True)
class NodeTLS:
    """This node's certificate and key, and the CA that signs every node's."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> NodeTLS:
        return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())

    @classmethod
    def of_node(cls, config: Config) -> NodeTLS | None:
        """The node TLS ``config`` names (cluster_tls_*), checked; None when it names none."""
        if not (config.cluster_tls_ca and config.cluster_tls_cert and config.cluster_tls_key):
            return None
        # Imported here: only nodes with node TLS load cryptography.
        from .certgen import load_node_tls

        files = (config.cluster_tls_ca, config.cluster_tls_cert, config.cluster_tls_key)
        return cls(*load_node_tls(config.node_id, *files))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def common_options(keepalive_s: float) -> list[tuple[str, int | str]]:
    """Options for both ends: frames up to MAX_FRAME_BYTES, dead peers noticed by keepalive."""
    limit = MAX_FRAME_BYTES + _ENVELOPE_SLACK
    keepalive_ms = int(keepalive_s * 1000)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
    ]


def channel_options(
    peer_id: str, tls: NodeTLS | None, keepalive_s: float, backoff: tuple[float, float]
) -> list[tuple[str, int | str]]:
    options = common_options(keepalive_s)
    low, high = (int(s * 1000) for s in backoff)
    options += [
        ("grpc.initial_reconnect_backoff_ms", low),
        ("grpc.min_reconnect_backoff_ms", low),
        ("grpc.max_reconnect_backoff_ms", high),
    ]
    if tls is not None:
        options.append(("grpc.ssl_target_name_override", peer_id))
    return options
