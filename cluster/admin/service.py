"""The admin service of a node: ``Status`` and ``NodeDown``.

It is served on the node's gRPC port beside the forwarding stream (the
assembly registers both on one server), by path with generic handlers, so no
generated code is needed. Without node TLS nothing is encrypted (status goes
over the wire in clear); with it, the client presents a node certificate and
checks the node's, as peers do.

``NodeDown`` is taken by the Raft leader only, so that the wills of the dead
node's clients are published by the one node that commits the command (see
``RaftCluster.node_down``); any other node answers FAILED_PRECONDITION and
names the leader, which the client then asks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import grpc
from grpc import aio

from raftmq.node.hooks import ClusterUnavailable

from ..forwarding.frames import FrameError
from ..forwarding.peer_status import PeerStatus
from ..replication.raft import CommandRejected
from ..replication.replicated import RaftCluster
from ..rpc import unwrap, wrap
from .calls import (
    LEADER_KEY,
    NODE_DOWN,
    SERVICE,
    STATUS,
    AdminRejected,
    CallChecker,
    Metadata,
    Report,
)

log = logging.getLogger("raftmq.cluster.admin")

ROUTE_LIMIT = 1000
"""Routes listed in a status reply; the rest are only counted."""


# -- what a node reports ---------------------------------------------------------------


class StreamHealth(Protocol):
    """Where a node's forwarding-stream health comes from (the ``Forwarder``)."""

    def status(self) -> Mapping[str, PeerStatus]: ...


def status_report(
    cluster: RaftCluster, streams: StreamHealth, route_limit: int = ROUTE_LIMIT
) -> Report:
    """This node's view of the cluster, as the ``Status`` reply carries it."""
    summary = cluster.status()
    raft = summary.raft
    state = cluster.state
    clients_by_node: dict[str, int] = {}
    for owner in state.owners.values():
        clients_by_node[owner.node_id] = clients_by_node.get(owner.node_id, 0) + 1
    sessions_by_node: dict[str, int] = {}
    for client_id in state.sessions:
        owner = state.owners.get(client_id)
        if owner is not None:
            sessions_by_node[owner.node_id] = sessions_by_node.get(owner.node_id, 0) + 1
    routes = sorted(state.routes.items(), key=lambda item: (item[0][1], item[0][0] or ""))
    return {
        "node": raft.node_id,
        "role": raft.role,
        "leader": raft.leader,
        "term": raft.term,
        "commit_index": raft.commit_index,
        "last_applied": raft.last_applied,
        "has_quorum": raft.has_quorum,
        "listener_failures": raft.listener_failures,
        "members": list(summary.members),
        "down": list(summary.down),
        "raft_peers": dict(sorted(raft.peers.items())),
        "counts": {
            "clients": summary.clients,
            "persistent_sessions": summary.persistent_sessions,
            "routes": summary.routes,
            "retained": summary.retained,
            "wills": summary.wills,
        },
        "clients_by_node": dict(sorted(clients_by_node.items())),
        "sessions_by_node": dict(sorted(sessions_by_node.items())),
        "routes": [
            {"filter": topic_filter, "share_group": group, "nodes": sorted(nodes)}
            for (group, topic_filter), nodes in routes[:route_limit]
        ],
        "routes_more": max(0, len(routes) - route_limit),
        "health": {
            node_id: {
                "state": member.state,
                "incarnation": member.incarnation,
                "rtt_ms": None if member.rtt is None else round(member.rtt * 1000, 3),
                "last_alive_s": round(max(0.0, time.monotonic() - member.last_alive), 3),
            }
            for node_id, member in sorted(cluster.health().items())
        },
        "streams": {
            node_id: {
                "address": peer.address,
                "connected": peer.connected,
                "unreachable": peer.unreachable,
                "queued": peer.queued,
                "unacked": peer.unacked,
                "frames_sent": peer.frames_sent,
                "frames_received": peer.frames_received,
                "resends": peer.resends,
                "duplicates": peer.duplicates,
                "dropped": peer.dropped,
                "last_error": peer.last_error,
            }
            for node_id, peer in sorted(streams.status().items())
        },
    }


class AdminError(Exception):
    """A call the node refuses: a gRPC status code, and the leader's id when it matters."""

    def __init__(self, code: grpc.StatusCode, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader


async def declare_node_down(
    cluster: RaftCluster, streams: StreamHealth, node_id: str, force: bool = False
) -> Report:
    """Commit ``node_down(node_id)`` from the leader; what it did, as the reply carries it.

    A node this node's SWIM sees alive (or only suspects) is refused unless
    ``force``: declaring a running node down kicks its clients and publishes
    their wills while they are still connected."""
    raft = cluster.raft.status()
    me = cluster.node_id
    if raft.role != "leader":
        where = f"the leader is node {raft.leader}" if raft.leader else "no leader is known"
        raise AdminError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"node {me!r} is not the Raft leader ({where}); only the leader takes node-down",
            raft.leader,
        )
    members = cluster.state.members
    if node_id not in members:
        raise AdminError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node_id!r} is not a member of the cluster ({', '.join(members) or 'none'})",
        )
    if node_id == me:
        raise AdminError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node {node_id!r} is the Raft leader answering this call, so it is not down",
        )
    member = cluster.health().get(node_id)
    if member is not None and member.state in ("alive", "suspect") and not force:
        raise AdminError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"node {node_id!r} is {member.state} as SWIM sees it from node {me!r} "
            f"(incarnation {member.incarnation}); declaring a running node down disconnects "
            "its clients and publishes their wills: use --force to do it anyway",
        )
    already_down = node_id in cluster.state.down
    peer = streams.status().get(node_id)
    log.info("admin: declaring node %r down%s", node_id, " (forced)" if force else "")
    last_seen = None
    if member is not None:
        last_seen = time.time() - max(0.0, time.monotonic() - member.last_alive)
    try:
        incarnation = 0 if member is None else member.incarnation
        result = await cluster.node_down(node_id, last_seen, incarnation)
    except ClusterUnavailable as exc:
        raise AdminError(grpc.StatusCode.UNAVAILABLE, f"node-down not committed: {exc}") from exc
    except CommandRejected as exc:
        raise AdminError(grpc.StatusCode.INTERNAL, f"node-down rejected: {exc}") from exc
    return {
        "node": node_id,
        "leader": me,
        "already_down": already_down,
        "stream_connected": peer is not None and peer.connected,
        "wills": [client_id for client_id, _ in result.wills],
        "delayed_wills": list(result.delayed),
        "rehomed": {client_id: owner.node_id for client_id, owner in result.rehomed},
        "released": list(result.released),
    }


# -- the service -------------------------------------------------------------------------


class AdminService:
    """``Status`` and ``NodeDown`` of one node, for the node's ``GrpcServer`` to serve."""

    def __init__(self, cluster: RaftCluster, streams: StreamHealth, secret: bytes) -> None:
        self._cluster = cluster
        self._streams = streams
        self.checker = CallChecker(cluster.node_id, secret)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            STATUS: grpc.unary_unary_rpc_method_handler(self._status),
            NODE_DOWN: grpc.unary_unary_rpc_method_handler(self._node_down),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def _status(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return await self._answer(STATUS, request, context, self._do_status)

    async def _node_down(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return await self._answer(NODE_DOWN, request, context, self._do_node_down)

    async def _do_status(self, _body: Report) -> Report:
        return status_report(self._cluster, self._streams)

    async def _do_node_down(self, body: Report) -> Report:
        node_id = body.get("node")
        if not isinstance(node_id, str) or not node_id:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "NodeDown needs a node id")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "NodeDown's force is a boolean")
        return await declare_node_down(self._cluster, self._streams, node_id, force)

    async def _answer(
        self,
        method: str,
        request: bytes,
        context: aio.ServicerContext,
        work: Callable[[Report], Awaitable[Report]],
    ) -> bytes:
        """Authenticate, decode, do ``work``, encode; every failure becomes a gRPC status."""
        try:
            body = self._request_body(method, request, context.invocation_metadata())
            return wrap(json.dumps(await work(body)).encode())
        except AdminRejected as exc:
            log.warning("admin: refused a %s call from %s: %s", method, context.peer(), exc)
            code, details, trailing = grpc.StatusCode.UNAUTHENTICATED, str(exc), ()
        except AdminError as exc:
            code, details = exc.code, str(exc)
            trailing = () if exc.leader is None else ((LEADER_KEY, exc.leader),)
        await context.abort(code, details, trailing_metadata=trailing)

    def _request_body(self, method: str, request: bytes, metadata: Metadata | None) -> Report:
        try:
            raw = unwrap(request)
        except FrameError as exc:
            raise AdminError(
                grpc.StatusCode.INVALID_ARGUMENT, f"not an AdminMessage: {exc}"
            ) from None
        self.checker.check(method, metadata, raw)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"bad request JSON: {exc}") from None
        if not isinstance(body, dict):
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "request JSON is not an object")
        return body
