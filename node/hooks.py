"""The one boundary between a node and the cluster it belongs to.

A node never decides alone who owns a client id, which nodes want a topic, or
what is retained: it asks its ``ClusterHooks``. ``LocalCluster`` answers for a
cluster of one, in process, without I/O. ``raftmq.cluster`` provides the
replicated implementation; ``node/`` never imports it.

The cluster talks back through ``NodeEvents``, which the broker implements:
give up a client (and its session) that connected elsewhere, deliver a
publish forwarded by a peer, apply a retained message committed anywhere in
the cluster, adopt the persistent session of a dead node's client.

A persistent session moves in two parts: its ``SessionTransfer``
(subscriptions, expiry) comes from the replicated state at once, so the new
node routes its subscriptions before anything else; its ``SessionMessages``
come from the node that held it, and go before anything that arrived since.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .message import Message
from .packets import Will
from .session import Delivery, Outgoing, Subscription


class RouteKey(NamedTuple):
    """What a route is for: a topic filter, with the share group of its subscribers.

    ``share_group`` is the group of ``$share/<group>/<filter>`` subscribers, or
    None for plain subscribers of the filter. The order is the one
    ``ClusterHooks.add_route`` takes its arguments in.
    """

    share_group: str | None
    topic_filter: str


class ClusterUnavailable(Exception):
    """The cluster could not commit a change in time (no quorum, partitioned).

    The node answers the client with "server unavailable" (v5 0x88, v3 rc 3).
    """


@dataclass(slots=True, frozen=True)
class Claim:
    """The result of claiming a client id: who owned it before, and our epoch."""

    epoch: int
    previous_owner: str | None
    previous_epoch: int | None = None
    """The epoch of the claim this one replaced, when the cluster keeps it."""
    session: object | None = None
    """The replicated persistent session the client left on any node, when the cluster
    keeps one; opaque to the node (its shape belongs to the cluster implementation)."""


@dataclass(slots=True, frozen=True)
class SessionTransfer:
    """The replicated part of a persistent session moving between nodes."""

    expiry_interval: int
    subscriptions: dict[str, Subscription]
    """By full topic filter (``$share/group/...`` included)."""


@dataclass(slots=True)
class SessionMessages:
    """What a session's previous node still held for its client, handed to the next."""

    queued: list[Delivery] = field(default_factory=list)
    """Not yet sent, oldest first."""
    outgoing: dict[int, Outgoing] = field(default_factory=dict)
    """Sent at QoS 1/2 and not completed, by packet id."""
    incoming_qos2: set[int] = field(default_factory=set)
    """Ids of QoS 2 publishes from the client awaiting its PUBREL."""
    seen: dict[str, int] = field(default_factory=dict)
    """Per origin node, the highest message sequence the previous node had received
    when it let go: the new node already had the session's messages up to there
    through it, so its own copies of them are duplicates (``handover_merge.py``)."""


class NodeEvents(Protocol):
    """What the cluster asks of the node."""

    def kick_client(self, client_id: str, epoch: int) -> None:
        """Another node (or a newer epoch here) now owns ``client_id``."""

    def surrender_session(self, client_id: str, epoch: int, resumed: bool) -> bool:
        """Another node claimed ``client_id`` at ``epoch``: disconnect it here (0x8E).

        ``resumed``: the new connection resumes the session. Then the session
        stays here, offline, until ``release_session``, and the result is True
        if there is one; otherwise it ends here as a clean start would end it.
        """

    def release_session(self, client_id: str, final: bool) -> SessionMessages | None:
        """What a surrendered session holds, for its new owner (None: it is gone
        already, or its client came back here). ``final``: it ends; otherwise it
        stays, offline, to catch what still comes, given up by the next call."""

    def take_late_handover(self, client_id: str, messages: SessionMessages) -> bool:
        """Messages handed over after the session resumed here: add them as new. False
        when this node has no such session."""

    def adopt_session(self, client_id: str, epoch: int, transfer: SessionTransfer) -> None:
        """Hold a persistent session whose node died (subscribe, queue) until its client returns.

        A session this node holds already (restored from its own store) is kept as it is.
        """

    def deliver_forwarded(
        self, message: Message, shared_groups: Collection[RouteKey] | None = None
    ) -> None:
        """A publish from another node whose topic matches our subscribers.

        ``shared_groups`` are the share groups (``RouteKey`` with a group) this node
        was chosen to serve for the message: only those get it here, so that each
        group gets it once cluster-wide. None serves every local group.
        """

    def apply_retained(self, topic: str, message: Message | None) -> None:
        """A retained message was set (or cleared, with None) cluster-wide."""

    def cluster_lost(self) -> None:
        """This node heard from no cluster majority for its lease: other nodes may now
        serve its clients, so it must stop (disconnect them with 0x88)."""

    def publish_will(self, will: Will) -> None:
        """Publish a will as this node publishes its own clients' (a dead node's client's)."""


class ClusterHooks(Protocol):
    """What the node asks of the cluster. Every change is committed before it returns."""

    node_id: str

    def attach(self, node: NodeEvents) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def leave(self) -> None:
        """A graceful stop, once the node's clients are disconnected: its persistent
        sessions, with what they hold, go to nodes that stay (a cluster of one keeps
        them for its restart)."""

    async def claim_client(
        self,
        client_id: str,
        *,
        clean_start: bool = True,
        expiry_interval: int = 0,
        will: Will | None = None,
    ) -> Claim:
        """Own ``client_id`` here; its persistent session record and will change with it.

        A clean start ends the session the client had anywhere; an expiry
        interval above zero keeps (or starts) a persistent one.
        """

    def take_session(self, client_id: str, claim: Claim) -> SessionTransfer | None:
        """The replicated session ``claim`` resumes; None when there is none."""

    async def handed_over(self, client_id: str, claim: Claim) -> SessionMessages | None:
        """The messages the node that held the session ``claim`` resumes hands over.

        Waits (bounded) for them when that was another node; None when there
        are none to wait for, or they did not come in time.
        """

    async def release_client(self, client_id: str, epoch: int) -> None:
        """The client's session ended here: the id, its session and its will are let go."""

    async def save_subscriptions(
        self, client_id: str, epoch: int, subscriptions: Mapping[str, Subscription]
    ) -> None:
        """Add (or update) subscriptions of a persistent session, by full topic filter."""

    async def forget_subscriptions(
        self, client_id: str, epoch: int, topic_filters: Sequence[str]
    ) -> None:
        """Remove subscriptions of a persistent session."""

    async def add_route(self, share_group: str | None, topic_filter: str) -> None:
        """The first local subscriber of ``topic_filter`` (in ``share_group``) appeared here."""

    async def remove_route(self, share_group: str | None, topic_filter: str) -> None:
        """The last local subscriber of ``topic_filter`` (in ``share_group``) went away."""

    async def set_retained(self, topic: str, message: Message | None) -> None: ...

    async def register_will(self, client_id: str, will: Will | None) -> None:
        """Record (or, with None, clear) a client's will so a peer can publish it."""

    def forward(self, message: Message) -> Awaitable[None] | None:
        """Send ``message`` to every other node with matching routes.

        Returns an awaitable that completes when every target node has taken
        the message, or None when no other node wants it (the common case for
        a cluster of one, kept allocation-free on the hot path).
        """


class LocalCluster:
    """A cluster of one node: every commit is immediate and local."""

    def __init__(self, node_id: str = "node1") -> None:
        self.node_id = node_id
        self._node: NodeEvents | None = None
        self._epochs: dict[str, int] = {}
        self._owners: dict[str, str] = {}
        self.routes: set[RouteKey] = set()
        self.wills: dict[str, Will] = {}

    def attach(self, node: NodeEvents) -> None:
        self._node = node

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def leave(self) -> None:
        return None

    async def claim_client(
        self,
        client_id: str,
        *,
        clean_start: bool = True,
        expiry_interval: int = 0,
        will: Will | None = None,
    ) -> Claim:
        epoch = self._epochs.get(client_id, 0) + 1
        self._epochs[client_id] = epoch
        previous = self._owners.get(client_id)
        self._owners[client_id] = self.node_id
        self._set_will(client_id, will)
        return Claim(epoch, previous)

    def take_session(self, client_id: str, claim: Claim) -> SessionTransfer | None:
        return None  # the node's own sessions are all there is

    async def handed_over(self, client_id: str, claim: Claim) -> SessionMessages | None:
        return None

    async def save_subscriptions(
        self, client_id: str, epoch: int, subscriptions: Mapping[str, Subscription]
    ) -> None:
        return None

    async def forget_subscriptions(
        self, client_id: str, epoch: int, topic_filters: Sequence[str]
    ) -> None:
        return None

    async def release_client(self, client_id: str, epoch: int) -> None:
        if self._epochs.get(client_id) == epoch:
            self._owners.pop(client_id, None)

    async def add_route(self, share_group: str | None, topic_filter: str) -> None:
        self.routes.add(RouteKey(share_group, topic_filter))

    async def remove_route(self, share_group: str | None, topic_filter: str) -> None:
        self.routes.discard(RouteKey(share_group, topic_filter))

    async def set_retained(self, topic: str, message: Message | None) -> None:
        assert self._node is not None, "LocalCluster used before attach()"
        self._node.apply_retained(topic, message)

    async def register_will(self, client_id: str, will: Will | None) -> None:
        self._set_will(client_id, will)

    def _set_will(self, client_id: str, will: Will | None) -> None:
        if will is None:
            self.wills.pop(client_id, None)
        else:
            self.wills[client_id] = will

    def forward(self, message: Message) -> Awaitable[None] | None:
        return None
