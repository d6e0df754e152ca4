"""Assembling the replicated ``ClusterHooks`` of one node from its config.

``raftmq node`` with ``cluster_secret`` set runs its broker on a
``NodeCluster``: a ``RaftCluster`` that also owns the node's ``Forwarder``
(started before Raft, so that routes committed at startup can be served at
once) and hands what peers forward to the broker. Without ``cluster_secret``
the broker keeps its ``LocalCluster``.

Membership is static: every node is configured with all the others (their
Raft and gRPC addresses), and the member list is committed at start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from raftmq.node.config import Config
from raftmq.node.hooks import NodeEvents
from raftmq.node.message import Message

from .admin.service import AdminService
from .forwarding.frames import Handover, SharedGroup
from .forwarding.transport import Forwarder, ForwardingSettings
from .replication.raft import RaftNode, RaftOptions
from .replication.replicated import RaftCluster
from .server import GrpcServer
from .tls import NodeTLS

log = logging.getLogger("raftmq.cluster")


class PeerEvents:
    """``ForwardingHandlers`` that pass what peers send on to this node's broker
    (publishes, kicks) and cluster (session hand-overs)."""

    def __init__(self) -> None:
        self.node: NodeEvents | None = None
        self.cluster: RaftCluster | None = None

    def on_publish(
        self, origin: str, message: Message, shared_groups: tuple[SharedGroup, ...]
    ) -> None:
        if self.node is not None:
            self.node.deliver_forwarded(message, shared_groups)

    def on_kick(self, origin: str, client_id: str, epoch: int) -> None:
        if self.node is not None:
            self.node.kick_client(client_id, epoch)

    def on_handover(self, origin: str, handover: Handover) -> None:
        if self.cluster is not None:
            self.cluster.receive_handover(origin, handover)


class NodeCluster(RaftCluster):
    """A ``RaftCluster`` that starts and stops its forwarder and feeds its peers' frames
    to the broker it is attached to."""

    def __init__(
        self,
        raft: RaftNode,
        forwarder: Forwarder,
        events: PeerEvents,
        peer_grpc: dict[str, str],
        members: Sequence[str],
        listen: str,
        tls: NodeTLS | None,
    ) -> None:
        super().__init__(raft, forwarder, members)
        self.forwarder = forwarder
        self._events = events
        self._peer_grpc = peer_grpc
        services = [forwarder.service()]
        if forwarder.secret is not None:  # admin callers prove they know it
            services.append(AdminService(self, forwarder, forwarder.secret).handler())
        keepalive = forwarder.settings.keepalive
        self.server = GrpcServer(listen, services, tls=tls, keepalive=keepalive)

    def attach(self, node: NodeEvents) -> None:
        super().attach(node)
        self._events.node = node
        self._events.cluster = self

    async def start(self) -> None:
        await self.server.start()
        for node_id, address in sorted(self._peer_grpc.items()):
            self.forwarder.add_peer(node_id, address)
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await self.server.stop()
            await self.forwarder.stop()


def build_cluster(
    config: Config,
    raft_options: RaftOptions | None = None,
    forwarding: ForwardingSettings | None = None,
) -> NodeCluster:
    """The cluster hooks ``config`` describes; the caller checked ``cluster_secret`` is set."""
    secret = config.cluster_secret
    if secret is None or config.raft_listen is None or config.grpc_listen is None:
        raise ValueError("build_cluster needs cluster_secret, raft_listen and grpc_listen")
    tls = NodeTLS.of_node(config)  # checked before Raft starts anything
    raft_peers = {peer.node_id: peer.raft for peer in config.peers}
    raft = RaftNode(
        config.node_id, config.raft_listen, raft_peers, config.data_dir, secret, raft_options
    )
    events = PeerEvents()
    forwarder = Forwarder(config.node_id, events, tls=tls, secret=secret, settings=forwarding)
    members = [config.node_id, *raft_peers]
    peer_grpc = {peer.node_id: peer.grpc for peer in config.peers}
    return NodeCluster(raft, forwarder, events, peer_grpc, members, config.grpc_listen, tls)
