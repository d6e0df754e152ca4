"""The three-node RaftCluster harness of the replicated-cluster tests: recording
NodeEvents stand in for the brokers, an in-process forwarder for gRPC; Raft is real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from raft_trio import FAST, IDS, Trio, eventually

from raftmq.cluster.forwarding.frames import Handover, Item
from raftmq.cluster.forwarding.link import Waiter
from raftmq.cluster.replication.raft import RaftOptions
from raftmq.cluster.replication.replicated import RaftCluster
from raftmq.node.hooks import (
    RouteKey,
    SessionMessages,
    SessionTransfer,
)
from raftmq.node.message import Message
from raftmq.node.packets import Will


class RecordingNode:
    """NodeEvents that remember what the cluster asked; ``sessions`` are what
    ``release_session`` gives up."""

    def __init__(self) -> None:
        self.kicks: list[tuple[str, int]] = []
        self.surrendered: list[tuple[str, int, bool]] = []
        self.sessions: dict[str, SessionMessages] = {}
        self.forwarded: list[Message] = []
        self.retained: dict[str, Message] = {}
        self.retained_calls: list[tuple[str, Message | None]] = []
        self.adopted: list[tuple[str, int, SessionTransfer]] = []
        self.late: list[tuple[str, SessionMessages]] = []
        self.not_yet_taken: set[str] = set()
        self.hooks: RaftCluster | None = None

    def kick_client(self, client_id: str, epoch: int) -> None:
        self.kicks.append((client_id, epoch))

    def deliver_forwarded(self, message: Message) -> None:
        self.forwarded.append(message)

    def publish_will(self, will: Will) -> None:
        """As a broker publishes one: here, to the routes, and retained when asked."""
        assert self.hooks is not None
        message = Message.create(will.topic, will.payload, will.qos, will.retain, will.properties)
        self.deliver_forwarded(message)
        self.hooks.forward(message)
        if will.retain:
            asyncio.get_running_loop().create_task(self.hooks.set_retained(will.topic, message))

    def apply_retained(self, topic: str, message: Message | None) -> None:
        self.retained_calls.append((topic, message))
        if message is None:
            self.retained.pop(topic, None)
        else:
            self.retained[topic] = message

    def surrender_session(self, client_id: str, epoch: int, resumed: bool) -> bool:
        self.surrendered.append((client_id, epoch, resumed))
        return resumed and client_id in self.sessions

    def release_session(self, client_id: str, final: bool) -> SessionMessages | None:
        return self.sessions.pop(client_id, None) if final else SessionMessages()

    def take_late_handover(self, client_id: str, messages: SessionMessages) -> bool:
        if client_id in self.not_yet_taken:
            return False  # its CONNECT has not taken the session here yet
        self.late.append((client_id, messages))
        return True

    def adopt_session(self, client_id: str, epoch: int, transfer: SessionTransfer) -> None:
        self.adopted.append((client_id, epoch, transfer))


@dataclass
class LoopbackForwarder:
    """Hands each message to the target nodes' events, kicks and hand-overs to their
    clusters as peers' frames, and records who sent what where."""

    nodes: dict[str, RecordingNode] = field(default_factory=dict)
    clusters: dict[str, RaftCluster] = field(default_factory=dict)
    sent: list[tuple[tuple[str, ...], str, dict[str, tuple[RouteKey, ...]]]] = field(
        default_factory=list
    )
    handovers: list[tuple[str, Handover]] = field(default_factory=list)
    held: dict[str, list[tuple[Item, Waiter | None]]] = field(default_factory=dict)
    """Per peer, what its link holds, handed back when the peer is declared down."""

    def start(self, inbox: RaftCluster) -> None:
        self.clusters[inbox.node_id] = inbox

    async def stop(self) -> None:
        return None

    def kick(self, node_id: str, client_id: str, epoch: int) -> asyncio.Future[None]:
        self.clusters[node_id].kick_from_peer("?", client_id, epoch)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def hand_over(self, node_id: str, handover: Handover) -> asyncio.Future[None]:
        self.handovers.append((node_id, handover))
        self.clusters[node_id].handover_from_peer("?", handover)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def declared_down(self, node_id: str) -> list[tuple[Item, Waiter | None]]:
        return self.held.pop(node_id, [])

    def send(
        self,
        node_ids: Collection[str],
        message: Message,
        shared_groups: Mapping[str, tuple[RouteKey, ...]] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((tuple(node_ids), message.topic, dict(shared_groups or {})))
        for node_id in node_ids:
            self.nodes[node_id].deliver_forwarded(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class NodeLinks:
    """One node's side of the loopback forwarder: a barrier's answer names who asked."""

    forwarder: LoopbackForwarder
    node_id: str

    def __getattr__(self, name: str) -> object:
        return getattr(self.forwarder, name)

    def barrier(self, node_id: str, token: int, applied: int) -> None:
        peer = self.forwarder.clusters.get(node_id)
        if peer is not None and peer.raft.running:
            peer.barrier_from_peer(self.node_id, token, applied)

    def reply_barrier(self, node_id: str, token: int) -> None:
        self.forwarder.clusters[node_id].barrier_reply_from_peer(self.node_id, token)

    def hand_over(self, node_id: str, handover: Handover) -> asyncio.Future[None]:
        """As over a stream: handled once the receiver has applied what the sender had."""
        self.forwarder.handovers.append((node_id, handover))
        receiver = self.forwarder.clusters[node_id]
        applied = self.forwarder.clusters[self.node_id].applied_count()

        async def deliver() -> None:
            await receiver.catch_up(applied)
            receiver.handover_from_peer(self.node_id, handover)

        return asyncio.ensure_future(deliver())


@dataclass
class Cluster:
    trio: Trio
    forwarder: LoopbackForwarder
    hooks: dict[str, RaftCluster] = field(default_factory=dict)
    nodes: dict[str, RecordingNode] = field(default_factory=dict)

    def add(self, node_id: str) -> RaftCluster:
        """A RaftCluster for ``node_id`` on a new RaftNode (its data dir is kept)."""
        links = NodeLinks(self.forwarder, node_id)
        hooks = RaftCluster(self.trio.make(node_id), links, members=IDS)  # type: ignore[arg-type]
        node = self.forwarder.nodes[node_id] = self.nodes[node_id] = RecordingNode()
        hooks.attach(node)
        node.hooks = self.hooks[node_id] = hooks
        return hooks

    async def start(self, *ids: str) -> None:
        for node_id in ids or IDS:
            await self.add(node_id).start()
        await self.trio.leader(among=ids or IDS)
        await eventually(
            lambda: all(h.state.members == IDS for h in self.running()), 10, "members committed"
        )

    def running(self) -> list[RaftCluster]:
        return [h for h in self.hooks.values() if h.raft.running]

    async def stop(self, *ids: str) -> None:
        for node_id in ids or tuple(self.hooks):
            await self.hooks[node_id].stop()


async def started(tmp_path: Path, options: RaftOptions = FAST) -> Cluster:
    cluster = Cluster(Trio(tmp_path, options), LoopbackForwarder())
    try:
        await cluster.start()
    except BaseException:
        await cluster.stop()
        raise
    return cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    running = await started(tmp_path)
    try:
        yield running
    finally:
        await running.stop()
