"""The admin service of a node (``Status``, ``NodeDown``) and its client.

It is served on the node's gRPC (forwarding) port, registered by path with
generic handlers like the forwarding stream, so no generated code is needed:
both methods take and return an ``AdminMessage`` (one ``bytes`` field, the
same envelope as ``Frame``) holding a JSON object. ``proto/raftmq.proto``
documents the methods, the JSON and the metadata.

Who may call: whoever knows the cluster secret. Each call carries an
HMAC-SHA256 over the method, the node it is meant for, the caller's clock,
a random nonce and the request body, keyed from the secret with a label of
its own (so neither the raw secret, which is also the Raft password, nor the
forwarding key serves here). A node accepts a call only within
``CLOCK_WINDOW`` of its own clock and never the same nonce twice, so a
recorded call cannot be played again. Without node TLS nothing is encrypted
(status goes over the wire in clear); with it, the client presents a node
certificate and checks the node's, as peers do.

``NodeDown`` is taken by the Raft leader only, so that the wills of the dead
node's clients are published by the one node that commits the command (see
``RaftCluster.node_down``); any other node answers FAILED_PRECONDITION and
names the leader, which the client then asks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from grpc import aio

from raftmq.node.hooks import ClusterUnavailable

from .forwarding import PeerStatus
from .frames import FrameError
from .raft import CommandRejected
from .replicated import RaftCluster
from .rpc import NodeTLS, keyed_proof, text_metadata, unwrap, wrap

log = logging.getLogger("raftmq.cluster.admin")

SERVICE = "raftmq.forwarding.v1.Admin"
"""In the package of the one .proto file, beside Forwarding: both are served on one port."""
STATUS = "Status"
NODE_DOWN = "NodeDown"

NODE_KEY = "raftmq-admin-node"
TIME_KEY = "raftmq-admin-time"
NONCE_KEY = "raftmq-admin-nonce"
AUTH_KEY = "raftmq-admin-auth"
LEADER_KEY = "raftmq-leader"
"""Trailing metadata of a FAILED_PRECONDITION NodeDown: the leader's node id."""

CLOCK_WINDOW = 30.0
"""Seconds a call's timestamp may be away from the node's clock."""
NONCE_HEX = 32
MAX_REMEMBERED_NONCES = 100_000
"""Calls within two clock windows beyond which a node refuses more (only callers
that know the secret can fill it)."""
ROUTE_LIMIT = 1000
"""Routes listed in a status reply; the rest are only counted."""

Metadata = Sequence[tuple[str, str | bytes]]
Report = dict[str, Any]


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


# -- authentication ------------------------------------------------------------------


class AdminRejected(Exception):
    """An admin call failed authentication; the message says which check failed."""


def _proof(secret: bytes, method: str, node_id: str, stamp: str, nonce: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    return keyed_proof(secret, "admin", [method, node_id, stamp, nonce, digest])


def call_metadata(
    secret: bytes, method: str, node_id: str, body: bytes, now: float | None = None
) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates one call of ``method`` on ``node_id`` with ``body``."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(NONCE_HEX // 2)
    return (
        (NODE_KEY, node_id),
        (TIME_KEY, stamp),
        (NONCE_KEY, nonce),
        (AUTH_KEY, _proof(secret, method, node_id, stamp, nonce, body)),
    )


class CallChecker:
    """Checks the metadata of admin calls made to one node; remembers nonces it accepted."""

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        window: float = CLOCK_WINDOW,
        clock: Callable[[], float] = time.time,
        capacity: int = MAX_REMEMBERED_NONCES,
    ) -> None:
        self.node_id = node_id
        self._secret = secret
        self._window = window
        self._clock = clock
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        """Accepted nonce -> when it can be forgotten (its timestamp is out of the window)."""

    def check(self, method: str, metadata: Metadata | None, body: bytes) -> None:
        """Return if the call is authentic, fresh and new; else raise ``AdminRejected``."""
        values = text_metadata(metadata)
        missing = [k for k in (NODE_KEY, TIME_KEY, NONCE_KEY, AUTH_KEY) if not values.get(k)]
        if missing:
            raise AdminRejected(f"no {missing[0]} in the call's metadata")
        node_id, stamp, nonce = values[NODE_KEY], values[TIME_KEY], values[NONCE_KEY]
        if node_id != self.node_id:
            raise AdminRejected(
                f"call meant for node {node_id[:64]!r} reached node {self.node_id!r}"
            )
        expected = _proof(self._secret, method, node_id, stamp, nonce, body)
        if not hmac.compare_digest(values[AUTH_KEY], expected):
            raise AdminRejected("the caller does not know the cluster secret")
        now = self._clock()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise AdminRejected(f"bad {TIME_KEY} {stamp[:24]!r}")
        if len(nonce) != NONCE_HEX:
            raise AdminRejected(f"{NONCE_KEY} must be {NONCE_HEX} hex digits")
        skew = int(stamp) - now
        if abs(skew) > self._window:
            raise AdminRejected(
                f"the call's timestamp is {skew:+.0f} s from the clock of node "
                f"{self.node_id!r} (at most {self._window:g} s allowed)"
            )
        self._forget_expired(now)
        if nonce in self._seen:
            raise AdminRejected("a replayed call (its nonce was used before)")
        if len(self._seen) >= self._capacity:
            raise AdminRejected(
                f"more than {self._capacity} admin calls within {2 * self._window:g} s"
            )
        # Its timestamp is at most `window` ahead of now, so it is accepted until at
        # most now + 2 * window: remember the nonce that long.
        self._seen[nonce] = now + 2 * self._window

    def _forget_expired(self, now: float) -> None:
        seen = self._seen
        while seen:
            nonce, until = next(iter(seen.items()))
            if until >= now:
                return
            del seen[nonce]


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


async def declare_node_down(cluster: RaftCluster, streams: StreamHealth, node_id: str) -> Report:
    """Commit ``node_down(node_id)`` from the leader; what it did, as the reply carries it."""
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
    already_down = node_id in cluster.state.down
    peer = streams.status().get(node_id)
    log.info("admin: declaring node %r down", node_id)
    try:
        result = await cluster.node_down(node_id)
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
        "rehomed": {client_id: owner.node_id for client_id, owner in result.rehomed},
        "released": list(result.released),
    }


# -- the service -------------------------------------------------------------------------


class AdminService:
    """``Status`` and ``NodeDown`` of one node, for ``Forwarder.add_service``."""

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
        return await declare_node_down(self._cluster, self._streams, node_id)

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


# -- the client ---------------------------------------------------------------------------


class AdminCallFailed(Exception):
    """An admin call did not succeed; the message names the node and its address."""

    def __init__(
        self,
        node_id: str,
        address: str,
        code: grpc.StatusCode,
        details: str,
        leader: str | None = None,
    ) -> None:
        super().__init__(f"node {node_id} at {address}: {code.name}: {details}")
        self.node_id = node_id
        self.code = code
        self.leader = leader


class AdminClient:
    """Calls one node's admin service; use ``async with``."""

    def __init__(
        self,
        node_id: str,
        address: str,
        secret: bytes,
        tls: NodeTLS | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._secret = secret
        self._timeout = timeout
        if tls is None:
            self._channel = aio.insecure_channel(address)
        else:
            options = [("grpc.ssl_target_name_override", node_id)]
            credentials = tls.channel_credentials()
            self._channel = aio.secure_channel(address, credentials, options=options)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._channel.close()

    async def status(self) -> Report:
        return await self._call(STATUS, {})

    async def node_down(self, node_id: str) -> Report:
        return await self._call(NODE_DOWN, {"node": node_id})

    async def _call(self, method: str, body: Report) -> Report:
        raw = json.dumps(body).encode()
        metadata = call_metadata(self._secret, method, self.node_id, raw)
        call = self._channel.unary_unary(path(method))
        try:
            answer = await call(wrap(raw), metadata=metadata, timeout=self._timeout)
        except aio.AioRpcError as exc:
            trailing = text_metadata(exc.trailing_metadata())
            details = exc.details() or "no details"
            raise AdminCallFailed(
                self.node_id, self.address, exc.code(), details, trailing.get(LEADER_KEY) or None
            ) from None
        try:
            reply = json.loads(unwrap(answer))
            if not isinstance(reply, dict):
                raise ValueError("not a JSON object")
        except (FrameError, ValueError) as exc:
            raise AdminCallFailed(
                self.node_id, self.address, grpc.StatusCode.INTERNAL, f"bad {method} reply: {exc}"
            ) from None
        return reply
