"""Counters the node keeps for `$SYS/broker/...` (``sys_topics.py``).

Plain integer attributes, bumped inline on the hot path: an attribute
increment is the cheapest bookkeeping Python offers. Anything that can be
derived from these, or read from the node's state, is computed when `$SYS`
is published instead (``sys_topics.sys_tree``), never per packet.

"Message" means an MQTT application message, that is, a PUBLISH; "packet"
means an MQTT control packet of any type (Mosquitto's `messages/...` topics
count those).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .limits import LimitCounters


@dataclass(slots=True)
class Stats:
    started_at: float = field(default_factory=time.monotonic)
    clients_connected: int = 0
    clients_maximum: int = 0
    """The most clients connected at once since the node started."""
    clients_expired: int = 0
    """Sessions that ended because their expiry interval passed with the client away."""
    connects: int = 0
    """CONNECTs accepted."""
    sockets_opened: int = 0
    """Sockets accepted, before any limit or CONNECT."""
    subscribes: int = 0
    packets_received: int = 0
    """Whole control packets decoded, PUBLISH included; counted per read, not per packet."""
    control_packets_sent: int = 0
    """Control packets sent other than PUBLISH (acks, CONNACK, SUBACK, PINGRESP, ...)."""
    messages_received: int = 0
    """PUBLISHes accepted from clients."""
    messages_sent: int = 0
    """PUBLISHes sent to clients."""
    messages_dropped: int = 0
    """PUBLISHes a session dropped: offline QoS 0, or its queue's overflow."""
    message_bytes_received: int = 0
    """Payload bytes of the PUBLISHes in ``messages_received``."""
    message_bytes_sent: int = 0
    """Payload bytes of the PUBLISHes in ``messages_sent``."""
    bytes_received: int = 0
    bytes_sent: int = 0
    protocol_errors: int = 0
    deliveries_denied: int = 0
    """Messages not delivered to a subscriber because the ACL denies it the topic."""
    wills_published: int = 0
    handover_duplicates: int = 0
    """Copies of a moving session's messages that reached it both directly and in the
    hand-over, delivered once (``handover_merge.py``)."""
    late_handovers: int = 0
    """Hand-overs that came after their session had resumed here, added to it then."""
    retained_bytes: int = 0
    """Topic + payload bytes of every retained message, counted against max_retained_bytes."""
    limits: LimitCounters = field(default_factory=LimitCounters)

    @property
    def uptime(self) -> int:
        return int(time.monotonic() - self.started_at)

    @property
    def packets_sent(self) -> int:
        """Control packets of any type sent: PUBLISHes are counted apart, as messages."""
        return self.control_packets_sent + self.messages_sent

    def client_connected(self) -> None:
        """A CONNECT was accepted: one more client now, and maybe a new maximum.

        The maximum is kept here, at the moment it happens, because a peak
        between two `$SYS` updates would be missed by sampling.
        """
        self.connects += 1
        connected = self.clients_connected + 1
        self.clients_connected = connected
        if connected > self.clients_maximum:
            self.clients_maximum = connected
