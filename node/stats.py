"""Counters the node keeps for $SYS and `raftmq cluster status`.

Plain integer attributes, bumped inline on the hot path: an attribute
increment is the cheapest bookkeeping Python offers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .limits import LimitCounters


@dataclass(slots=True)
class Stats:
    started_at: float = field(default_factory=time.monotonic)
    clients_connected: int = 0
    connects: int = 0
    subscribes: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    protocol_errors: int = 0
    deliveries_denied: int = 0
    """Messages not delivered to a subscriber because the ACL denies it the topic."""
    wills_published: int = 0
    retained_bytes: int = 0
    """Topic + payload bytes of every retained message, counted against max_retained_bytes."""
    limits: LimitCounters = field(default_factory=LimitCounters)

    @property
    def uptime(self) -> int:
        return int(time.monotonic() - self.started_at)
