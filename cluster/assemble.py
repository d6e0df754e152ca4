"""Assembling the replicated ``ClusterHooks`` of one node from its config.

``raftmq node`` with ``cluster_secret`` set runs its broker on a
``RaftCluster`` built here from its parts: the ``RaftNode``, the
``Forwarder`` that carries messages to the peers, and the node's gRPC server
(``GrpcServer``), which serves the forwarding stream and the admin service
side by side. The cluster starts them: the forwarder hands what peers send
to the cluster (``RaftCluster.publish_from_peer`` and the like, which pass it
on to the broker), then the server, then Raft, so that routes committed at
startup can be served at once. Without ``cluster_secret`` the broker keeps
its ``LocalCluster``.

Membership is static: every node is configured with all the others (their
Raft and gRPC addresses), and the member list is committed at start.
"""

from __future__ import annotations

from raftmq.node.config import Config

from .admin.service import AdminService
from .forwarding.transport import Forwarder, ForwardingSettings
from .replication.raft import RaftNode, RaftOptions
from .replication.replicated import RaftCluster
from .server import GrpcServer
from .tls import NodeTLS


def build_cluster(
    config: Config,
    raft_options: RaftOptions | None = None,
    forwarding: ForwardingSettings | None = None,
) -> RaftCluster:
    """The cluster hooks ``config`` describes; the caller checked ``cluster_secret`` is set."""
    secret = config.cluster_secret
    if secret is None or config.raft_listen is None or config.grpc_listen is None:
        raise ValueError("build_cluster needs cluster_secret, raft_listen and grpc_listen")
    tls = NodeTLS.of_node(config)  # checked before Raft starts anything
    raft_peers = {peer.node_id: peer.raft for peer in config.peers}
    raft = RaftNode(
        config.node_id, config.raft_listen, raft_peers, config.data_dir, secret, raft_options
    )
    grpc_peers = {peer.node_id: peer.grpc for peer in config.peers}
    forwarder = Forwarder(config.node_id, grpc_peers, tls=tls, secret=secret, settings=forwarding)
    server = GrpcServer(config.grpc_listen, tls=tls, keepalive=forwarder.settings.keepalive)
    cluster = RaftCluster(
        raft,
        forwarder,
        [config.node_id, *raft_peers],
        services=[server],
        lease=(config.cluster_lease, config.cluster_lease_margin),
        barrier_timeout=config.route_barrier_timeout,
    )
    server.serve(forwarder.service())
    server.serve(AdminService(cluster, forwarder, secret.encode()).handler())
    return cluster
