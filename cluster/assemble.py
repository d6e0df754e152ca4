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
Raft and gRPC addresses), and the member list is committed at start. With
``failure_detection = "swim"`` (the default) a SWIM member runs beside them
(``membership.py``), and the Raft leader declares dead nodes down.
"""

from __future__ import annotations

from raftmq.node.config import Config

from .admin.service import AdminService
from .forwarding.transport import Forwarder, ForwardingSettings
from .membership import Membership
from .replication.raft import RaftNode, RaftOptions
from .replication.replicated import RaftCluster
from .server import GrpcServer
from .swim.members import MemberMeta
from .swim.settings import SwimSettings
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
    membership = _membership(config) if config.failure_detection == "swim" else None
    if membership is not None and forwarding is None:
        # A publish waits for an unreachable peer until SWIM has it declared down, and
        # is then sent where its sessions went (replication/rehoming.py): no give-up.
        forwarding = ForwardingSettings(hold_for_node_down=True)
    forwarder = Forwarder(config.node_id, grpc_peers, tls=tls, secret=secret, settings=forwarding)
    server = GrpcServer(config.grpc_listen, tls=tls, keepalive=forwarder.settings.keepalive)
    cluster = RaftCluster(
        raft,
        forwarder,
        [config.node_id, *raft_peers],
        services=[server] if membership is None else [membership, server],
        lease=(config.cluster_lease, config.cluster_lease_margin),
        barrier_timeout=config.route_barrier_timeout,
        health=None if membership is None else membership.health,
    )
    server.serve(forwarder.service())
    server.serve(AdminService(cluster, forwarder, secret.encode()).handler())
    return cluster


def _membership(config: Config) -> Membership:
    """This node's SWIM member, on UDP at its Raft address; the peers are its seeds."""
    assert config.raft_listen is not None and config.grpc_listen is not None
    assert config.cluster_secret is not None
    first = config.listen[0]  # Config always has one listener
    mqtt = f"[{first.host}]:{first.port}" if ":" in first.host else f"{first.host}:{first.port}"
    meta = MemberMeta(
        config.node_id, config.raft_listen, config.raft_listen, config.grpc_listen, mqtt
    )
    settings = SwimSettings(
        probe_interval=config.swim_probe_interval,
        probe_timeout=config.swim_probe_timeout,
        suspicion_mult=config.swim_suspicion_mult,
    )
    seeds = [peer.raft for peer in config.peers]
    return Membership(meta, settings, config.cluster_secret.encode(), seeds)
