"""The node's extension interface: observers of what happens to clients and messages.

An ``Extension`` overrides the events it cares about; every method is a no-op
by default, so a new event never breaks an extension. The node keeps its
extensions in one ``Extensions`` list, registered before it starts
(``Broker.extensions.append(...)``). Every call site tests the list first
(``if extensions:``), so a node with none pays one truth test per event and
builds no arguments.

Metrics and the message log plug in here. ``published`` may return an
awaitable: a QoS 1/2 publish is acknowledged only once it completes (a log
that must make the record durable first), exactly as the acknowledgement
already waits for the other nodes of a cluster. Events are called on the
node's event loop, on the PUBLISH path: an extension must not block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from .message import Message
from .session import Subscription


class Extension:
    """Override what you observe; see the module docstring."""

    def connected(
        self, client_id: str, username: str | None, peer: str, protocol_level: int
    ) -> None:
        """A CONNECT was accepted (CONNACK sent)."""

    def disconnected(self, client_id: str, clean: bool) -> None:
        """A connected client's connection ended; ``clean`` when it sent DISCONNECT."""

    def published(self, message: Message) -> Awaitable[None] | None:
        """A client's PUBLISH was accepted for routing. An awaitable delays its ack."""
        return None

    def delivered(self, client_id: str, message: Message, qos: int) -> None:
        """``message`` was handed to ``client_id``'s session at ``qos`` (sent or queued)."""

    def dropped(self, client_id: str, message: Message, reason: str) -> None:
        """A message for ``client_id`` was dropped; ``reason`` as counted in the limits."""

    def subscribed(self, client_id: str, full_filter: str, subscription: Subscription) -> None:
        """A subscription was granted (SUBACK with a success code)."""

    def unsubscribed(self, client_id: str, full_filter: str) -> None: ...

    def session_ended(self, client_id: str) -> None:
        """The client's session is gone from this node (expired, clean start, moved)."""


class Extensions(list[Extension]):
    """The registered extensions, called in order; false while empty."""

    def connected(
        self, client_id: str, username: str | None, peer: str, protocol_level: int
    ) -> None:
        for extension in self:
            extension.connected(client_id, username, peer, protocol_level)

    def disconnected(self, client_id: str, clean: bool) -> None:
        for extension in self:
            extension.disconnected(client_id, clean)

    def published(self, message: Message) -> Awaitable[None] | None:
        """What the acknowledgement must wait for: None, or one awaitable for all."""
        waits = [w for w in (extension.published(message) for extension in self) if w is not None]
        if not waits:
            return None
        return waits[0] if len(waits) == 1 else asyncio.gather(*waits)

    def delivered(self, client_id: str, message: Message, qos: int) -> None:
        for extension in self:
            extension.delivered(client_id, message, qos)

    def dropped(self, client_id: str, message: Message, reason: str) -> None:
        for extension in self:
            extension.dropped(client_id, message, reason)

    def subscribed(self, client_id: str, full_filter: str, subscription: Subscription) -> None:
        for extension in self:
            extension.subscribed(client_id, full_filter, subscription)

    def unsubscribed(self, client_id: str, full_filter: str) -> None:
        for extension in self:
            extension.unsubscribed(client_id, full_filter)

    def session_ended(self, client_id: str) -> None:
        for extension in self:
            extension.session_ended(client_id)
