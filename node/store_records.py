"""What a store gives back when the node starts, and the error it raises when it cannot.

These records are shared by the storage hook (``store``) and the SQLite
implementation (``sqlite_store``); they live apart from both so that
``store.make_store`` can import the implementation without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .message import Message
from .packets import Will
from .session import Delivery, Subscription


class StoreError(OSError):
    """The store cannot be opened or read: the node must not start without its state.

    An OSError because, like a port that cannot be bound, it is a problem of
    the machine the node runs on, and the CLI reports it the same way.
    """


@dataclass(slots=True)
class StoredDelivery:
    delivery: Delivery
    packet_id: int | None
    """Set once the message was sent: it is in flight with this id."""
    released: bool
    """QoS 2: PUBREC received, PUBREL sent."""


@dataclass(slots=True)
class StoredSession:
    """A persistent session as the store last saw it."""

    client_id: str
    expiry_interval: int
    connected: bool
    """The client was connected when this was written: if the node crashed, it lost it."""
    expires_at: float | None
    """time.time() deadline of a disconnected session; None while connected or never."""
    will: Will | None
    will_at: float | None
    """time.time() at which a delayed will is due; None when no will is pending."""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    deliveries: list[StoredDelivery] = field(default_factory=list)
    """Queued and in-flight QoS 1/2 messages, in delivery order."""
    incoming_qos2: set[int] = field(default_factory=set)


@dataclass(slots=True)
class StoredState:
    sessions: list[StoredSession] = field(default_factory=list)
    retained: list[tuple[str, Message]] = field(default_factory=list)
