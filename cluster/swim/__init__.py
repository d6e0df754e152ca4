"""SWIM membership (issue 12): failure detection, dissemination and join, sans-I/O.

``core.Swim`` is the protocol of one member, fed the time and the messages that
arrive; ``wire`` encodes its messages, ``seal`` encrypts and authenticates
them (AES-256-GCM, HKDF-derived key, replay window), and ``transport`` drives
it all over one asyncio UDP socket.

Why not the ``swim-protocol`` package (0.6.3, PyPI, evaluated for issue 12):

- no encryption: ``sign.Signatures`` HMACs a pickle (``udp/pack.UdpPack``) in
  the clear, keyed with the raw secret (``uuid.getnode()``, the MAC address,
  when none is given), with no replay protection; and ``pickle.loads`` on
  every authentic packet means a leaked secret is remote code execution;
- no Lifeguard: ``worker.Worker`` has a fixed ``suspect_timeout``, no nacks,
  no local health; states are only online/suspect/offline, so a graceful
  leave cannot be told from a death;
- no test seam: ``Worker`` sleeps and waits on asyncio's clock, ``members``
  stamps ``time.time()`` and draws from the global ``random``, and the only
  transport binds real UDP and TCP sockets.

Each gap alone decides it; so the core is written here.
"""

from .core import Swim
from .errors import DROP_REASONS, BadPacket, Replayed, Unauthenticated, UnknownVersion
from .members import Member, MemberMeta, MembershipEvent, State, Update
from .messages import Ack, Message, Nack, Outgoing, Ping, PingReq, PushPull
from .seal import Sealer
from .settings import SwimSettings

__all__ = [
    "DROP_REASONS",
    "Ack",
    "BadPacket",
    "Member",
    "MemberMeta",
    "MembershipEvent",
    "Message",
    "Nack",
    "Outgoing",
    "Ping",
    "PingReq",
    "PushPull",
    "Replayed",
    "Sealer",
    "State",
    "Swim",
    "SwimSettings",
    "Unauthenticated",
    "UnknownVersion",
    "Update",
]
