"""Where a forwarder hands what its peers send: the node's cluster (``RaftCluster``).

A protocol of its own, so that the replication side names it without
importing the transport, and tests give a recorder instead.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from raftmq.node.hooks import RouteKey
from raftmq.node.message import Message

from .frames import Handover


class PeerInbox(Protocol):
    """Where what peers send goes (``RaftCluster``). Called on the event loop.

    Synchronous on purpose: a frame is acknowledged once these have returned
    for each of its items, and a stream can break only between frames, never
    half way through one. An exception is logged and the item counted as
    handled, so one bad item cannot wedge the stream.
    """

    def publish_from_peer(
        self, origin: str, message: Message, shared_groups: tuple[RouteKey, ...]
    ) -> None:
        """Deliver to local subscribers only (and to ``shared_groups`` here)."""

    def kick_from_peer(self, origin: str, client_id: str, epoch: int) -> None: ...

    def handover_from_peer(self, origin: str, handover: Handover) -> None: ...

    def barrier_from_peer(self, origin: str, token: int, applied: int) -> None:
        """Reply (``Forwarder.reply_barrier``) once ``applied`` commands are applied here."""

    def barrier_reply_from_peer(self, origin: str, token: int) -> None: ...

    def applied_count(self) -> int:
        """This node's ``ClusterState.applied``: what frames it sends say they follow."""

    def catch_up(self, applied: int) -> Awaitable[None]:
        """Done once this node has applied ``applied`` commands, or after a bounded wait:
        a frame is handled only then (``Frame.applied``)."""
