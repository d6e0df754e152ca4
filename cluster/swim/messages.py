"""The messages members exchange. Every one carries piggybacked ``updates``, which is
how news spreads: no message is sent for gossip alone.

``sender`` is the node id of the member that sent the message, except in an
ack relayed for a ping-req, where it names the member that was probed (the
requester checks that the ack is of the member it probes).
"""

from __future__ import annotations

from dataclasses import dataclass

from .members import Update


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there, ``target``? A member answers only pings addressed to it, so a
    stale address now used by another member does not pass as the old one alive."""

    seq: int
    target: str
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ping ``target`` at ``target_addr`` for me, and relay its ack (or a nack)."""

    seq: int
    target: str
    target_addr: str
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to the ping (or the ping-req) with this ``seq``."""

    seq: int
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the member asked to relay a ping got no ack in time. A requester that
    gets neither ack nor nack from its relays suspects its own connectivity."""

    seq: int
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PushPull:
    """A share of ``sender``'s full state, every record with its meta; ``want_reply``
    asks for the receiver's full state back (at join, and periodically)."""

    sender: str
    want_reply: bool
    records: tuple[Update, ...]
    updates: tuple[Update, ...] = ()


Message = Ping | PingReq | Ack | Nack | PushPull


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the transport to send to ``addr`` ("host:port"); ``to`` is the node
    id of the member it is for, when known (it is told first what is said of it)."""

    addr: str
    message: Message
    to: str | None = None
