"""The application message as it travels through the broker.

A PUBLISH is decoded once into a ``Message``; the same object then reaches
every matching subscriber. It caches its encoded forms so that a fan-out to
N subscribers encodes each distinct outgoing form once, not N times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .encoders import encode_publish_parts
from .packets import Properties

# Properties that describe one hop rather than the message; they are never
# forwarded to subscribers (MQTT 5 §3.3.2.3).
HOP_PROPERTIES = frozenset({"topic_alias", "subscription_identifier"})


@dataclass(slots=True, eq=False)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(default_factory=dict)
    publisher: str | None = None
    """Client id of the publisher, for v5 No Local; None for broker-made messages."""
    expires_at: float | None = None
    """time.monotonic() deadline from message_expiry_interval, or None."""
    origin: str = ""
    """The node it was published on (``MessageStamps``); "" for a node's own ($SYS)."""
    seq: int = 0
    """Its place among the messages published on ``origin``; 0: no identity."""
    _encoded: dict[tuple[int, int, bool], tuple[bytes, bytes]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def create(
        cls,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
        publisher: str | None = None,
    ) -> Message:
        """Build a message from a received PUBLISH, dropping per-hop properties."""
        props = properties or {}
        expires_at = None
        if props:
            if not HOP_PROPERTIES.isdisjoint(props):
                props = {k: v for k, v in props.items() if k not in HOP_PROPERTIES}
            interval = props.get("message_expiry_interval")
            if interval is not None:
                expires_at = time.monotonic() + interval
        return cls(topic, payload, qos, retain, props, publisher, expires_at)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def remaining_properties(self, now: float) -> Properties:
        """Properties for a delivery now: the expiry interval counts down while queued."""
        if self.expires_at is None:
            return self.properties
        remaining = max(1, math.ceil(self.expires_at - now))
        if remaining == self.properties.get("message_expiry_interval"):
            return self.properties
        return {**self.properties, "message_expiry_interval": remaining}

    def encoded(self, protocol_level: int, qos: int, retain: bool) -> tuple[bytes, bytes]:
        """The (head, tail) of this message as a PUBLISH, cached per outgoing form.

        Forms that carry per-subscriber data (subscription identifiers, topic
        aliases, a counted-down expiry) are encoded by the caller instead.
        """
        level = 5 if protocol_level == 5 else 4
        key = (level, qos, retain)
        parts = self._encoded.get(key)
        if parts is None:
            props = self.properties if level == 5 else None
            parts = encode_publish_parts(self.topic, self.payload, qos, retain, False, props, level)
            self._encoded[key] = parts
        return parts


class MessageStamps:
    """Gives every message published on this node its identity: (node id, sequence).

    A session moving between nodes gets some messages twice, once directly and
    once in the hand-over; the identity is how the new node drops the second copy
    (``handover_merge.py``). The sequence starts at the wall clock in microseconds,
    so a restarted node never reuses the numbers of its previous run (unless it
    published over a million messages a second on average).
    """

    __slots__ = ("last", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.last = time.time_ns() // 1000
        """The sequence number of the latest message stamped here."""
