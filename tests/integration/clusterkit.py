"""Clusters of real `raftmq node` processes on loopback, and raw MQTT clients for them.

Raft and gRPC ports must be known to every node before any starts, so they
come from a run of free ports below the kernel's ephemeral range (the bench's
``free_port_run``). MQTT listeners use port 0 as everywhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rawmqtt import (
    CONNACK,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    Packet,
    RawClient,
    ack,
    connect,
    publish,
    subscribe,
)

from raftmq.cluster.tools.bench.brokers import free_port_run

if TYPE_CHECKING:
    from conftest import RunningBroker

SECRET = "integration-test-cluster-secret"
IDS = ("n1", "n2", "n3")
READY_TIMEOUT = 30.0
"""Leader election and the first commits, on a loaded 2-core machine."""
NO_MATCHING_SUBSCRIBERS = 0x10
SERVER_UNAVAILABLE = 0x88
SESSION_TAKEN_OVER = 0x8E


@dataclass
class Cluster:
    """Running nodes by id, and the Raft and gRPC address of each."""

    nodes: dict[str, RunningBroker]
    raft: dict[str, str]
    grpc: dict[str, str]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, node_id: str) -> RunningBroker:
        return self.nodes[node_id]


def start_cluster(
    broker_factory: Callable[..., RunningBroker],
    ids: tuple[str, ...] = IDS,
    per_node: Callable[[str], dict[str, Any]] | None = None,
    *,
    grpc_via: Callable[[str, str, str], str] | None = None,
    **extra: Any,
) -> Cluster:
    """Nodes (durability memory unless ``extra`` says otherwise), each knowing the others.

    ``extra`` keys go into every node's config, then ``per_node(node_id)``'s (its own
    certificate, say); the factory stops the nodes after the test.
    ``grpc_via(node_id, peer_id, address)`` is the gRPC address ``node_id`` is given for
    ``peer_id``, whose own is ``address`` (a proxy in front of it, say); by default
    ``address`` itself.
    """
    base = free_port_run(2 * len(ids))
    raft = {node_id: f"127.0.0.1:{base + 2 * i}" for i, node_id in enumerate(ids)}
    grpc = {node_id: f"127.0.0.1:{base + 2 * i + 1}" for i, node_id in enumerate(ids)}
    cluster = Cluster({}, raft, grpc)
    via = grpc_via or (lambda _node_id, _peer_id, address: address)
    for node_id in ids:
        config: dict[str, Any] = {
            "node_id": node_id,
            "listen": ["tcp://127.0.0.1:0"],
            "durability": "memory",
            "sys_interval": 0,
            "cluster_secret": SECRET,
            "raft_listen": raft[node_id],
            "grpc_listen": grpc[node_id],
            "peers": [
                f"{other}={raft[other]},{via(node_id, other, grpc[other])}"
                for other in ids
                if other != node_id
            ],
            **extra,
            **(per_node(node_id) if per_node is not None else {}),
        }
        cluster.configs[node_id] = dict(config)
        cluster.nodes[node_id] = broker_factory(**config)
    return cluster


class NodeClients:
    """Raw v5 clients of cluster nodes, retrying CONNECT while the cluster elects a
    leader; every one is closed after the test."""

    def __init__(self, opened: ExitStack) -> None:
        self._opened = opened

    def open(self, node: RunningBroker, level: int = 5) -> RawClient:
        client = RawClient(node.host, node.port, level)
        self._opened.callback(client.close)
        return client

    def connect(
        self, node: RunningBroker, client_id: str, *, level: int = 5, **connect_args: Any
    ) -> tuple[RawClient, Any]:
        """A connected client and its CONNACK (reason 0), retried until ``READY_TIMEOUT``."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            client = self.open(node, level)
            client.send(connect(client_id, level=level, **connect_args))
            connack = client.expect(CONNACK, timeout=READY_TIMEOUT)
            if connack.reason_code == 0:
                return client, connack
            client.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"CONNECT of {client_id!r} refused: {connack}")
            time.sleep(0.2)

    def __call__(self, node: RunningBroker, client_id: str, **connect_args: Any) -> RawClient:
        return self.connect(node, client_id, **connect_args)[0]


def subscribed(client: RawClient, topic_filter: str, qos: int, packet_id: int = 1) -> None:
    client.send(subscribe(packet_id, [(topic_filter, qos)]))
    suback = client.expect(SUBACK, timeout=10)
    assert suback.reason_codes == [qos], suback


def wait_for_route(publisher: RawClient, subscriber: RawClient, topic: str) -> None:
    """Until the publisher's node knows the subscriber's node wants ``topic``.

    A v5 QoS 1 PUBLISH that no node wants is acknowledged 0x10: probe until
    it is not, then take the probe that reached the subscriber.
    """
    deadline = time.monotonic() + 10
    packet_id = 1000
    while True:
        packet_id += 1
        publisher.send(publish(topic, b"probe", qos=1, packet_id=packet_id))
        puback = publisher.expect(PUBACK, timeout=10)
        if puback.reason_code != NO_MATCHING_SUBSCRIBERS:
            break
        assert time.monotonic() < deadline, f"route for {topic!r} never reached the publisher"
        time.sleep(0.05)
    probe = subscriber.expect(PUBLISH)
    assert probe.payload == b"probe"
    if probe.qos:
        assert probe.packet_id is not None
        subscriber.send(ack(PUBACK, probe.packet_id))


def published(
    client: RawClient,
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int = 1,
    *,
    retain: bool = False,
) -> int:
    """Publish at ``qos`` (v5) and finish the publisher's side of the exchange.

    Returns the broker's reason code: PUBACK's, or PUBREC's once PUBREL has
    been answered with PUBCOMP; 0 for QoS 0, which has no answer.
    """
    pid = packet_id if qos else None
    client.send(publish(topic, payload, qos=qos, packet_id=pid, retain=retain))
    if not qos:
        return 0
    reply = client.expect(PUBACK if qos == 1 else PUBREC, timeout=10)
    assert reply.packet_id == packet_id, f"answer to PUBLISH {packet_id} on {topic!r}: {reply}"
    assert reply.reason_code is not None
    if qos == 2 and reply.reason_code < 0x80:
        client.send(ack(PUBREL, packet_id))
        pubcomp = client.expect(PUBCOMP, timeout=10)
        assert (pubcomp.packet_id, pubcomp.reason_code) == (packet_id, 0), pubcomp
    return reply.reason_code


def published_once_routed(
    client: RawClient, topic: str, payload: bytes, qos: int, packet_id: int = 1
) -> None:
    """Publish (QoS 1 or 2) until some node takes it.

    A 0x10 answer means no node had a route for ``topic`` yet (the publisher's
    node applies route commits a moment after they happen elsewhere), and
    that nothing was delivered, so sending it again duplicates nothing.
    """
    deadline = time.monotonic() + 10
    while True:
        reason = published(client, topic, payload, qos, packet_id)
        if reason != NO_MATCHING_SUBSCRIBERS:
            assert reason == 0, f"PUBLISH {packet_id} on {topic!r} refused: {reason:#x}"
            return
        assert time.monotonic() < deadline, f"no node ever routed {topic!r}"
        time.sleep(0.05)


def received(client: RawClient, count: int, timeout: float = 10.0) -> list[Packet]:
    """The next ``count`` PUBLISHes, each acknowledged as a subscriber must.

    QoS 1 is answered with PUBACK; QoS 2 with PUBREC, and the call returns
    only once the broker's PUBREL for each has come and been answered with
    PUBCOMP. A PUBLISH beyond ``count`` while PUBRELs are awaited, or any
    other packet, fails the test.
    """
    deadline = time.monotonic() + timeout
    publishes: list[Packet] = []
    awaiting_pubrel: set[int] = set()
    while len(publishes) < count or awaiting_pubrel:
        try:
            pkt = client.read(max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise AssertionError(
                f"{len(publishes)} of {count} PUBLISHes in {timeout} s, PUBREL still awaited "
                f"for packet ids {sorted(awaiting_pubrel)}; got {publishes}"
            ) from None
        if pkt.type == PUBLISH:
            assert len(publishes) < count, f"PUBLISH beyond the {count} expected: {pkt}"
            publishes.append(pkt)
            if pkt.qos == 1:
                assert pkt.packet_id is not None
                client.send(ack(PUBACK, pkt.packet_id))
            elif pkt.qos == 2:
                assert pkt.packet_id is not None
                assert pkt.packet_id not in awaiting_pubrel, f"packet id reused: {pkt}"
                awaiting_pubrel.add(pkt.packet_id)
                client.send(ack(PUBREC, pkt.packet_id))
        elif pkt.type == PUBREL:
            assert pkt.packet_id in awaiting_pubrel, f"PUBREL for no PUBREC: {pkt}"
            awaiting_pubrel.discard(pkt.packet_id)
            client.send(ack(PUBCOMP, pkt.packet_id))
        else:
            raise AssertionError(f"expected PUBLISH or PUBREL, got {pkt}")
    return publishes


def resumed_deliveries(client: RawClient, count: int) -> list[tuple[bytes, int, bool]]:
    """``count`` PUBLISHes to a resumed session as (payload, qos, dup), each acknowledged
    through to the end; PUBRELs of deliveries its previous connection had PUBREC'd are
    answered on the way."""
    got = []
    awaiting_pubrel: set[int] = set()
    while len(got) < count or awaiting_pubrel:
        packet = client.read(timeout=10)
        packet_id = packet.packet_id
        if packet.type == PUBREL:
            assert packet_id is not None
            awaiting_pubrel.discard(packet_id)
            client.send(ack(PUBCOMP, packet_id))
            continue
        assert packet.type == PUBLISH, packet
        got.append((packet.payload, packet.qos, packet.dup))
        if packet.qos == 1:
            assert packet_id is not None
            client.send(ack(PUBACK, packet_id))
        elif packet.qos == 2:
            assert packet_id is not None
            awaiting_pubrel.add(packet_id)
            client.send(ack(PUBREC, packet_id))
    return got
