"""Where a node keeps what must survive it: the storage hook and its two implementations.

The broker's in-memory objects are always the truth while the node runs.
A ``SessionStore`` is told about every change to the state that must
survive a crash -- persistent sessions with their subscriptions, expiry and
will, their queued and in-flight QoS 1/2 messages, the ids of incoming QoS 2
messages awaiting PUBREL, and retained messages -- and gives that state back
when the node starts.

``MemoryStore`` keeps nothing (``durability = "memory"``). ``SqliteStore``
(``sqlite_store``) journals every change into SQLite in WAL mode
(``durability = "disk"``), committing the changes of one event-loop turn
together. ``make_store`` picks one. The records a store gives back are
defined in ``store_records``.

A packet that reports a change to a client (PUBACK/PUBREC to a publisher,
PUBCOMP, an outgoing QoS 2 PUBLISH with its packet id, a PUBREL, a SUBACK,
a CONNACK) must not leave before the change is durable, or a crash right
after it would break a promise the client relies on. So a client whose
output depends on uncommitted changes is *held* (``hold``, through its
``session.Outbox``): its output stays queued and the store releases it right
after the commit.
Everything held in one turn goes out after one commit; the network never
waits for more than one transaction per turn.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from .message import Message
from .session import Delivery, Outbox, Session, SessionJournal, Subscription
from .sqlite_store import DB_FILE, SqliteStore
from .store_records import StoredState


class SessionStore(SessionJournal, Protocol):
    """The storage hook: told every durable change, gives the state back at start.

    Session-scoped calls (``SessionJournal``) take the ``Session`` so the store
    can hold that session's output until the change is committed.
    """

    durable: bool
    """False: nothing is kept, and the broker does not call the journal methods."""
    pending: bool
    """Changes were recorded that are not committed yet."""

    def open(self, loop: asyncio.AbstractEventLoop | None) -> StoredState:
        """Open (or create) the store; commits are scheduled on ``loop`` (None: by hand)."""

    def close(self) -> None:
        """Commit what is pending and release the store."""

    def commit(self) -> None:
        """Make every recorded change durable, then release the held outboxes."""

    def hold(self, outbox: Outbox) -> None:
        """If changes are pending, ``outbox``'s output waits for their commit."""

    def set_retained(self, topic: str, message: Message | None) -> None: ...


class MemoryStore:
    """``durability = "memory"``: nothing survives the process; the fast option."""

    durable = False
    pending = False

    def open(self, loop: asyncio.AbstractEventLoop | None) -> StoredState:
        return StoredState()

    def close(self) -> None:
        return None

    def commit(self) -> None:
        return None

    def hold(self, outbox: Outbox) -> None:
        return None

    def save_session(self, session: Session) -> None:
        return None

    def delete_session(self, session: Session) -> None:
        return None

    def save_subscription(self, session: Session, full_filter: str, sub: Subscription) -> None:
        return None

    def delete_subscription(self, session: Session, full_filter: str) -> None:
        return None

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        return None

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def add_incoming(self, session: Session, packet_id: int) -> None:
        return None

    def remove_incoming(self, session: Session, packet_id: int) -> None:
        return None

    def set_retained(self, topic: str, message: Message | None) -> None:
        return None


def make_store(durability: str, data_dir: str) -> SessionStore:
    """The store ``durability`` names, for a node whose data dir is ``data_dir``."""
    if durability == "memory":
        return MemoryStore()
    return SqliteStore(os.path.join(data_dir, DB_FILE))
