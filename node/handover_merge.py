"""Putting a moved session's handed-over messages together with what reached it directly.

While a session moves, its messages reach both nodes for a while: the old
one keeps the session until every node routes to the new one
(``cluster/replication/releases.py``), and the new one routes it from its
claim on. The hand-over carries, per origin node, the highest message
sequence the old node had received (``SessionMessages.seen``). Every message
for the session up to there went through the old node: delivered there, or in
the hand-over. So a direct copy at or below that mark is a duplicate, and
everything after it came only here. The result, per publisher, is the old
node's messages in their order and then the new node's in theirs, each once.

Pure functions of a session and a hand-over: tested without sockets or clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .hooks import SessionMessages
from .session import Delivery, Session


def had(delivery: Delivery, seen: dict[str, int]) -> bool:
    """Whether the old node had ``delivery``'s message (by its identity)."""
    message = delivery.message
    return bool(message.seq) and message.seq <= seen.get(message.origin, 0)


def marks(deliveries: Iterable[Delivery]) -> dict[str, int]:
    """Per origin node, the highest message sequence among ``deliveries``."""
    highest: dict[str, int] = {}
    for delivery in deliveries:
        message = delivery.message
        if message.seq > highest.get(message.origin, 0):
            highest[message.origin] = message.seq
    return highest


def late(held: SessionMessages, direct_from: dict[str, int]) -> list[Delivery]:
    """What of a late hand-over to deliver: what was in flight and not yet released
    (a released QoS 2 message reached the client's application already), then what
    was queued; without what reached the session directly (``Session.first_direct``:
    from an origin's first direct arrival on, all of its messages came directly)."""
    resent = (entry.delivery for entry in held.outgoing.values() if not entry.released)
    return [
        delivery
        for delivery in (*resent, *held.queued)
        if not delivery.message.seq
        or delivery.message.seq < direct_from.get(delivery.message.origin, delivery.message.seq + 1)
    ]


def merge(session: Session, held: SessionMessages) -> list[Delivery]:
    """Put ``held`` in front of what reached ``session`` directly; return the direct
    copies dropped as duplicates (the caller counts them)."""
    seen = held.seen
    kept: deque[Delivery] = deque()
    duplicates: list[Delivery] = []
    for delivery in session.queue:
        (duplicates if had(delivery, seen) else kept).append(delivery)
    for packet_id, entry in held.outgoing.items():
        session.outgoing[packet_id] = entry
        session.next_packet_id = packet_id % 0xFFFF + 1
    kept.extendleft(reversed(held.queued))
    session.queue = kept
    session.queued_bytes = sum(len(d.message.payload) for d in kept)
    session.incoming_qos2 |= held.incoming_qos2
    return duplicates
