"""The bookkeeping behind the node's limits: counters of refusals and a token bucket.

Each limit in the config is enforced where the packet it concerns is handled
(broker, connection, session); this module only holds what those places
share. ``LimitCounters`` has one field per limit, and each field becomes
``$SYS/broker/limits/<field>``, so adding a limit here is what makes it
visible to monitoring.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import Message


@dataclass(slots=True)
class LimitCounters:
    """How often each limit was hit since the node started."""

    connections: int = 0
    """CONNECTs refused at max_connections, plus sockets closed at accept when far over it."""
    connect_timeout: int = 0
    """Connections closed for not completing CONNECT within connect_timeout."""
    packet_size: int = 0
    """Inbound packets over max_packet_size (the connection is closed)."""
    client_id_length: int = 0
    """CONNECTs refused for a client id over max_client_id_length."""
    topic_levels: int = 0
    """Topics and filters (PUBLISH, SUBSCRIBE, will) over max_topic_levels."""
    receive_maximum: int = 0
    """v5 clients closed for more unacknowledged QoS 1/2 PUBLISHes than receive_maximum."""
    queued_messages: int = 0
    """Messages dropped because a session queue held max_queued_messages."""
    queued_bytes: int = 0
    """Messages dropped because a session queue held max_queued_bytes of payload."""
    retained_messages: int = 0
    """Retained messages not stored because max_retained_messages were stored already."""
    retained_bytes: int = 0
    """Retained messages not stored because they would pass max_retained_bytes."""
    publish_rate: int = 0
    """Clients closed for publishing faster than max_publish_rate."""

    def items(self) -> list[tuple[str, int]]:
        """(name, count) pairs, in declaration order, for $SYS."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def retained_size(message: Message | None) -> int:
    """What a retained message counts against max_retained_bytes: topic plus payload.

    The topic counts too: otherwise one-byte payloads under 64 KiB topics
    would pass a byte limit while costing the node memory.
    """
    if message is None:
        return 0
    return len(message.topic.encode()) + len(message.payload)


class TokenBucket:
    """Allows ``rate`` events per second on average, bursts of up to ``burst`` at once.

    The caller passes the current time rather than the bucket reading a
    clock: the connection already has the time its bytes arrived, and the
    PUBLISH path should not pay for a second clock read.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        tokens = self.tokens
        if now != self.stamp:
            tokens += (now - self.stamp) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
