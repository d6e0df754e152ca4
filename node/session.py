"""A client's session: what outlives one network connection.

The session owns the subscriptions, the outgoing in-flight window with its
packet ids, the queue of messages waiting for that window or for the client
to come back, and the ids of incoming QoS 2 messages awaiting PUBREL. The
connection that currently serves it is a separate object; it is swapped on
resume and set to None while the client is away.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .message import Message
from .packets import Will

if TYPE_CHECKING:
    from .connection import MQTTConnection

NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    """The filter as matched (for shared subscriptions, without ``$share/group/``)."""
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None
    share_group: str | None = None


@dataclass(slots=True)
class Delivery:
    """One message on its way to this session, at the QoS granted to it."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Outgoing:
    """A QoS 1/2 delivery sent and not yet completed by the client."""

    delivery: Delivery
    released: bool = False
    """QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP."""


class QueueFull(Exception):
    pass


class Session:
    __slots__ = (
        "client_id",
        "connection",
        "expiry_handle",
        "expiry_interval",
        "incoming_qos2",
        "max_queued",
        "next_packet_id",
        "outgoing",
        "overflow_drops_oldest",
        "queue",
        "queue_qos0",
        "subscriptions",
        "will",
        "will_handle",
    )

    def __init__(
        self,
        client_id: str,
        *,
        max_queued: int,
        overflow_drops_oldest: bool,
        queue_qos0: bool,
    ) -> None:
        self.client_id = client_id
        self.connection: MQTTConnection | None = None
        self.expiry_interval = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.queue: deque[Delivery] = deque()
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming_qos2: set[int] = set()
        self.next_packet_id = 1
        self.will: Will | None = None
        self.will_handle: asyncio.TimerHandle | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.max_queued = max_queued
        self.overflow_drops_oldest = overflow_drops_oldest
        self.queue_qos0 = queue_qos0

    @property
    def persistent(self) -> bool:
        return self.expiry_interval > 0

    def deliver(self, delivery: Delivery) -> bool:
        """Send now if the window allows, else queue. False if the message was dropped.

        A connection whose socket buffer is merely full still takes messages:
        backpressure on the publishers bounds that buffer. Only a stalled one
        (see MQTTConnection.hold) makes messages queue here.
        """
        conn = self.connection
        if conn is not None and not conn.stalled and not self.queue:
            if delivery.qos == 0:
                conn.send_publish(delivery, None, False)
                return True
            if len(self.outgoing) < conn.send_window:
                self._send_tracked(conn, delivery)
                return True
        elif conn is None and delivery.qos == 0 and not self.queue_qos0:
            return False
        return self._enqueue(delivery)

    def _enqueue(self, delivery: Delivery) -> bool:
        """Queue within the bound; False when the overflow policy dropped a message."""
        if len(self.queue) >= self.max_queued:
            if not self.overflow_drops_oldest:
                return False
            self.queue.popleft()
            self.queue.append(delivery)
            return False
        self.queue.append(delivery)
        return True

    def _allocate_packet_id(self) -> int:
        pid = self.next_packet_id
        outgoing = self.outgoing
        while pid in outgoing:
            pid = pid + 1 if pid < 0xFFFF else 1
        self.next_packet_id = pid + 1 if pid < 0xFFFF else 1
        return pid

    def _send_tracked(self, conn: MQTTConnection, delivery: Delivery) -> None:
        pid = self._allocate_packet_id()
        self.outgoing[pid] = Outgoing(delivery)
        conn.send_publish(delivery, pid, False)

    def acknowledge(self, packet_id: int, qos: int) -> bool:
        """PUBACK (qos 1) or PUBCOMP (qos 2) completed ``packet_id``; refill the window."""
        entry = self.outgoing.get(packet_id)
        if entry is None or entry.delivery.qos != qos:
            return False
        del self.outgoing[packet_id]
        self.drain()
        return True

    def received(self, packet_id: int) -> bool:
        """PUBREC for an outgoing QoS 2 message: from now on only PUBREL is resent."""
        entry = self.outgoing.get(packet_id)
        if entry is None or entry.delivery.qos != 2:
            return False
        entry.released = True
        return True

    def drain(self) -> None:
        """Move queued deliveries into the window while the connection can take them."""
        conn = self.connection
        queue = self.queue
        if conn is None:
            return
        now = time.monotonic()
        while queue and not conn.stalled:
            head = queue[0]
            if head.qos and len(self.outgoing) >= conn.send_window:
                return
            queue.popleft()
            if head.message.expired(now):
                continue
            if head.qos:
                self._send_tracked(conn, head)
            else:
                conn.send_publish(head, None, False)

    def resume(self, conn: MQTTConnection) -> None:
        """A client came back to this session: resend what it never completed.

        Unacknowledged PUBLISHes go again with DUP set, PUBREC'd ones get their
        PUBREL again (MQTT 5 §4.4), all in their original order.
        """
        self.connection = conn
        now = time.monotonic()
        for pid, entry in list(self.outgoing.items()):
            if entry.released:
                conn.send_pubrel(pid)
            elif entry.delivery.message.expired(now):
                del self.outgoing[pid]
            else:
                conn.send_publish(entry.delivery, pid, True)
        self.drain()

    def clear_delivery_state(self) -> None:
        self.queue.clear()
        self.outgoing.clear()
        self.incoming_qos2.clear()
