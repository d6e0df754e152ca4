"""A client's session: what outlives one network connection.

The session owns the subscriptions, the outgoing in-flight window with its
packet ids, the queue of messages waiting for that window or for the client
to come back, and the ids of incoming QoS 2 messages awaiting PUBREL. The
connection that currently serves it is a separate object; it is swapped on
resume and set to None while the client is away.

A persistent session on a node with ``durability = "disk"`` has a ``store``
that is told every change to its QoS 1/2 deliveries and incoming QoS 2 ids,
so that they survive a crash (see ``store``); otherwise ``store`` is None and
costs one attribute test.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from .acl import ClientRights
from .message import Message
from .packets import Will
from .stats import Stats

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
    seq: int = 0
    """Its place in the session's stored deliveries; 0 while it is not stored."""


@dataclass(slots=True)
class Outgoing:
    """A QoS 1/2 delivery sent and not yet completed by the client."""

    delivery: Delivery
    released: bool = False
    """QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP."""


class Outbox(Protocol):
    """The connected client a session sends to (``protocol.ClientProtocol``)."""

    send_window: int
    """How many QoS 1/2 deliveries may be in flight to the client."""
    stalled: bool
    """The client reads nothing: deliveries queue instead."""
    epoch: int
    """The cluster claim the connection holds for the client id."""
    rights: ClientRights | None
    """What the ACL lets its client do; None without an ACL."""
    awaiting_commit: bool
    """Its output waits for the store's commit (``store.SessionStore.hold``)."""
    write_paused: bool
    """Its socket buffer is full: publishers feeding it should be held back."""

    def hold(self, publisher: Any) -> None:
        """Stop reading ``publisher`` (another client) until this one drains."""

    def disconnect(self, reason: int, detail: str = "") -> None: ...

    def release_output(self) -> None:
        """The store committed: what waited may go out."""

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None: ...

    def send_pubrel(self, packet_id: int) -> None: ...


class DropObserver(Protocol):
    """Told of each message a session drops (``extensions.Extensions``); false when idle."""

    def __len__(self) -> int: ...

    def dropped(self, client_id: str, message: Message, reason: str) -> None: ...


class SessionJournal(Protocol):
    """Where a persistent session writes every change that must survive a crash.

    ``store.SessionStore`` implements it; a session without one keeps no journal.
    """

    def save_session(self, session: Session) -> None: ...

    def delete_session(self, session: Session) -> None:
        """The session ended: forget it with its subscriptions and deliveries."""

    def save_subscription(self, session: Session, full_filter: str, sub: Subscription) -> None: ...

    def delete_subscription(self, session: Session, full_filter: str) -> None: ...

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        """``delivery`` waits in the session's queue."""

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        """``delivery`` went out as ``packet_id`` and waits for its acknowledgement."""

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        """QoS 2: the client's PUBREC came; only PUBREL is resent from now on."""

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        """``delivery`` is done (acknowledged, expired or dropped)."""

    def add_incoming(self, session: Session, packet_id: int) -> None: ...

    def remove_incoming(self, session: Session, packet_id: int) -> None: ...


class Session:
    __slots__ = (
        "client_id",
        "connection",
        "drops",
        "expires_at",
        "expiry_handle",
        "expiry_interval",
        "first_direct",
        "incoming_qos2",
        "max_queued",
        "max_queued_bytes",
        "next_packet_id",
        "next_seq",
        "outgoing",
        "overflow_drops_oldest",
        "queue",
        "queue_qos0",
        "queued_bytes",
        "read_filter",
        "stats",
        "store",
        "subscriptions",
        "will",
        "will_at",
        "will_handle",
    )

    def __init__(
        self,
        client_id: str,
        *,
        max_queued: int,
        overflow_drops_oldest: bool,
        queue_qos0: bool,
        max_queued_bytes: int = 0,
        stats: Stats | None = None,
        drops: DropObserver | None = None,
    ) -> None:
        self.client_id = client_id
        self.drops = drops
        """Told of every drop, when extensions are registered."""
        self.connection: Outbox | None = None
        self.expiry_interval = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.queue: deque[Delivery] = deque()
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming_qos2: set[int] = set()
        self.next_packet_id = 1
        self.will: Will | None = None
        self.will_handle: asyncio.TimerHandle | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None
        self.store: SessionJournal | None = None
        """Set while the session persists on a node that keeps state on disk."""
        self.next_seq = 1
        self.expires_at: float | None = None
        """time.time() at which the session ends, while its client is away (for the store)."""
        self.will_at: float | None = None
        """time.time() at which its delayed will is due (for the store)."""
        self.max_queued = max_queued
        self.overflow_drops_oldest = overflow_drops_oldest
        self.queue_qos0 = queue_qos0
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        """Payload bytes in ``queue``, bounded by max_queued_bytes (0: unbounded)."""
        self.stats = stats if stats is not None else Stats()
        """Where this session counts the messages it drops (the node's Stats)."""
        self.first_direct: dict[str, int] | None = None
        """While the session has just moved here: per origin node, the sequence of the
        first message that reached it directly. From there on every message of that
        origin came directly, so a late hand-over's copy of it is a duplicate
        (``handover_merge.late``). None otherwise: one attribute test per delivery."""
        self.read_filter: ClientRights | None = None
        """The ACL's per-message check on what this client receives (``read_rights``);
        None when none is needed. Applied again as queued messages go out, so a
        queue filled while the client was away is judged by its rights now."""

    @property
    def persistent(self) -> bool:
        return self.expiry_interval > 0

    def deliver(self, delivery: Delivery) -> bool:
        """Send now if the window allows, else queue. False if the message was dropped.

        A connection whose socket buffer is merely full still takes messages:
        backpressure on the publishers bounds that buffer. Only a stalled one
        (see the driver's hold, connection.py) makes messages queue here.
        """
        first_direct = self.first_direct
        if first_direct is not None:
            message = delivery.message
            if message.origin not in first_direct:
                first_direct[message.origin] = message.seq
        read_filter = self.read_filter
        if read_filter is not None:  # the cached decision inline: this runs per delivery
            topic = delivery.message.topic
            allowed = read_filter.reads.get(topic)
            if allowed is None:
                allowed = read_filter.may_read(topic)
            if not allowed:
                self._count_denied(delivery)
                return False
        conn = self.connection
        if conn is not None and not conn.stalled and not self.queue:
            if delivery.qos == 0:
                conn.send_publish(delivery, None, False)
                return True
            if len(self.outgoing) < conn.send_window:
                self._send_tracked(conn, delivery)
                return True
        elif conn is None and delivery.qos == 0 and not self.queue_qos0:
            self.stats.messages_dropped += 1
            if self.drops:
                self.drops.dropped(self.client_id, delivery.message, "offline_qos0")
            return False
        return self._enqueue(delivery)

    def _enqueue(self, delivery: Delivery) -> bool:
        """Queue within both bounds; False when the overflow policy dropped a message."""
        queue = self.queue
        size = len(delivery.message.payload)
        max_bytes = self.max_queued_bytes
        fits = not max_bytes or self.queued_bytes + size <= max_bytes
        if fits and len(queue) < self.max_queued:
            queue.append(delivery)
            self.queued_bytes += size
            if self.store is not None and delivery.qos:
                self.store.queue_delivery(self, delivery)
            return True
        return self._overflow(delivery, size)

    def _overflow(self, delivery: Delivery, size: int) -> bool:
        """The queue is full for ``delivery``: drop it, or (drop_oldest) make room for it.

        drop_oldest may have to drop several small messages to make room for
        one large one; a message larger than the whole byte bound is dropped
        itself rather than emptying the queue for nothing.
        """
        queue = self.queue
        max_bytes = self.max_queued_bytes
        limit = self._full(size)
        assert limit is not None
        if not self.overflow_drops_oldest or (max_bytes and size > max_bytes):
            self._count_drop(limit, delivery)
            return False
        store = self.store
        while limit is not None and queue:
            dropped = queue.popleft()
            self.queued_bytes -= len(dropped.message.payload)
            if store is not None:
                store.remove_delivery(self, dropped)
            self._count_drop(limit, dropped)
            limit = self._full(size)
        queue.append(delivery)
        self.queued_bytes += size
        if store is not None and delivery.qos:
            store.queue_delivery(self, delivery)
        return False

    def _full(self, size: int) -> str | None:
        """Which bound a message of ``size`` payload bytes would pass, if any."""
        if len(self.queue) >= self.max_queued:
            return "queued_messages"
        if self.max_queued_bytes and self.queued_bytes + size > self.max_queued_bytes:
            return "queued_bytes"
        return None

    def _count_drop(self, limit: str, dropped: Delivery) -> None:
        stats = self.stats
        stats.messages_dropped += 1
        if limit == "queued_messages":
            stats.limits.queued_messages += 1
        else:
            stats.limits.queued_bytes += 1
        if self.drops:
            self.drops.dropped(self.client_id, dropped.message, limit)

    def _count_denied(self, denied: Delivery) -> None:
        """The ACL does not let the client read this topic: not delivered, and counted."""
        self.stats.deliveries_denied += 1
        if self.drops:
            self.drops.dropped(self.client_id, denied.message, "acl_denied")

    def _allocate_packet_id(self) -> int:
        pid = self.next_packet_id
        outgoing = self.outgoing
        while pid in outgoing:
            pid = pid + 1 if pid < 0xFFFF else 1
        self.next_packet_id = pid + 1 if pid < 0xFFFF else 1
        return pid

    def _send_tracked(self, conn: Outbox, delivery: Delivery) -> None:
        pid = self._allocate_packet_id()
        self.outgoing[pid] = Outgoing(delivery)
        if self.store is not None:
            self.store.send_delivery(self, delivery, pid)
        conn.send_publish(delivery, pid, False)

    def acknowledge(self, packet_id: int, qos: int) -> bool:
        """PUBACK (qos 1) or PUBCOMP (qos 2) completed ``packet_id``; refill the window."""
        entry = self.outgoing.get(packet_id)
        if entry is None or entry.delivery.qos != qos:
            return False
        del self.outgoing[packet_id]
        if self.store is not None:
            self.store.remove_delivery(self, entry.delivery)
        self.drain()
        return True

    def received(self, packet_id: int) -> bool:
        """PUBREC for an outgoing QoS 2 message: from now on only PUBREL is resent."""
        entry = self.outgoing.get(packet_id)
        if entry is None or entry.delivery.qos != 2:
            return False
        entry.released = True
        if self.store is not None:
            self.store.release_delivery(self, entry.delivery)
        return True

    def drain(self) -> None:
        """Move queued deliveries into the window while the connection can take them."""
        conn = self.connection
        queue = self.queue
        if conn is None:
            return
        now = time.monotonic()
        read_filter = self.read_filter
        while queue and not conn.stalled:
            head = queue[0]
            if head.qos and len(self.outgoing) >= conn.send_window:
                return
            queue.popleft()
            self.queued_bytes -= len(head.message.payload)
            denied = read_filter is not None and not read_filter.may_read(head.message.topic)
            if denied or head.message.expired(now):
                if self.store is not None:
                    self.store.remove_delivery(self, head)
                if denied:
                    self._count_denied(head)
                continue
            if head.qos:
                self._send_tracked(conn, head)
            else:
                conn.send_publish(head, None, False)

    def resume(self, conn: Outbox) -> None:
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
                if self.store is not None:
                    self.store.remove_delivery(self, entry.delivery)
            else:
                conn.send_publish(entry.delivery, pid, True)
        self.drain()

    def add_incoming(self, packet_id: int) -> None:
        """A QoS 2 PUBLISH was taken: a resend with this id must not be delivered again."""
        self.incoming_qos2.add(packet_id)
        if self.store is not None:
            self.store.add_incoming(self, packet_id)

    def release_incoming(self, packet_id: int) -> bool:
        """PUBREL for an incoming QoS 2 message; False if the id was not awaiting one."""
        if packet_id not in self.incoming_qos2:
            return False
        self.incoming_qos2.discard(packet_id)
        if self.store is not None:
            self.store.remove_incoming(self, packet_id)
        return True

    def clear_delivery_state(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0
        self.outgoing.clear()
        self.incoming_qos2.clear()
