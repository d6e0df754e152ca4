"""The forwarding stream's handshake: who dials, who accepts, and how each proves it.

Peers prove who they are in two independent ways, each used when configured:

- TLS (``tls.NodeTLS``): mutual TLS with node certificates from one CA. The
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

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..rpc import keyed_proof, text_metadata

SERVICE = "raftmq.forwarding.v1.Forwarding"
METHOD = "Stream"
PATH = f"/{SERVICE}/{METHOD}"

NODE_KEY = "raftmq-node"
INCARNATION_KEY = "raftmq-incarnation"
AUTH_KEY = "raftmq-auth"


class PeerRejected(Exception):
    """A peer's handshake failed: wrong cluster secret, identity or direction."""


@dataclass(slots=True, frozen=True)
class Hello:
    node_id: str
    incarnation: int


def _proof(
    secret: bytes, role: str, sender: str, receiver: str, incarnations: Sequence[int]
) -> str:
    return keyed_proof(secret, "forwarding", [role, sender, receiver, *map(str, incarnations)])


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
