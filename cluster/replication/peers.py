"""What a ``RaftCluster`` runs on besides Raft: the links to its peers and its services.

Protocols only, so that the cluster is tested over a loopback forwarder
(``tests/unit/replicated_kit.py``) as well as the real one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from raftmq.node.hooks import RouteKey
from raftmq.node.message import Message

from ..forwarding.frames import Handover, Item
from ..forwarding.link import Waiter
from .barriers import BarrierLinks

if TYPE_CHECKING:
    from ..forwarding.inbox import PeerInbox


class Peers(BarrierLinks, Protocol):
    """What carries this node's messages to the others (``forwarding.transport.Forwarder``)."""

    def start(self, inbox: PeerInbox) -> None:
        """Open the streams to the peers; what they send from now on goes to ``inbox``."""

    async def stop(self) -> None: ...

    def send(
        self,
        node_ids: Collection[str],
        message: Message,
        shared_groups: Mapping[str, tuple[RouteKey, ...]] | None = None,
    ) -> Awaitable[None] | None:
        """Queue ``message`` for each node; the awaitable completes when all have taken it.

        A target delivers to its plain subscribers, and to the members of the
        share groups ``shared_groups`` names for it: no others, so that each
        group gets a message once cluster-wide.
        """

    def hand_over(self, node_id: str, handover: Handover) -> Awaitable[None]:
        """Move a session's messages to ``node_id``; done when it has taken them."""

    def kick(self, node_id: str, client_id: str, epoch: int) -> Awaitable[None]:
        """Tell ``node_id`` that ``client_id`` is now owned at ``epoch``; done when applied."""

    def declared_down(self, node_id: str) -> Sequence[tuple[Item, Waiter | None]]:
        """``node_id`` is declared dead: what was on its way to it, for ``rehoming.py``."""


class Service(Protocol):
    """Something the node runs beside Raft (its gRPC server)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
