"""Three real `raftmq node` processes on loopback, one cluster: clients on different
nodes see one broker.

Raft and gRPC ports must be known to every node before any starts, so the
test asks the OS for six free ports at once and releases them just before the
nodes bind them. MQTT listeners use port 0 as everywhere else.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest
from rawmqtt import (
    CONNACK,
    DISCONNECT,
    PINGREQ_BYTES,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Closed,
    RawClient,
    ack,
    connect,
    publish,
    subscribe,
)

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]

SECRET = "integration-test-cluster-secret"
IDS = ("n1", "n2", "n3")
READY_TIMEOUT = 30.0
"""Leader election and the first commits, on a loaded 2-core machine."""
NO_MATCHING_SUBSCRIBERS = 0x10
SESSION_TAKEN_OVER = 0x8E


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports the OS just handed out (held together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def cluster(broker_factory: Callable[..., RunningBroker]) -> dict[str, RunningBroker]:
    """Three nodes (durability memory), each knowing the other two; stopped by broker_factory."""
    ports = iter(free_ports(2 * len(IDS)))
    raft = {node_id: f"127.0.0.1:{next(ports)}" for node_id in IDS}
    grpc = {node_id: f"127.0.0.1:{next(ports)}" for node_id in IDS}
    nodes = {}
    for node_id in IDS:
        nodes[node_id] = broker_factory(
            node_id=node_id,
            listen=["tcp://127.0.0.1:0"],
            durability="memory",
            sys_interval=0,
            cluster_secret=SECRET,
            raft_listen=raft[node_id],
            grpc_listen=grpc[node_id],
            peers=[f"{other}={raft[other]},{grpc[other]}" for other in IDS if other != node_id],
        )
    return nodes


@pytest.fixture
def clients() -> Iterator[Callable[[RunningBroker, str], RawClient]]:
    """Connect v5 clients, retrying while the cluster has no leader yet; all closed after."""
    with ExitStack() as opened:

        def connected(node: RunningBroker, client_id: str) -> RawClient:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                client = RawClient(node.host, node.port)
                opened.callback(client.close)
                client.send(connect(client_id))
                connack = client.expect(CONNACK, timeout=READY_TIMEOUT)
                if connack.reason_code == 0:
                    return client
                if time.monotonic() > deadline:
                    raise AssertionError(f"CONNECT of {client_id!r} refused: {connack}")
                time.sleep(0.2)

        yield connected


def subscribed(client: RawClient, topic_filter: str, qos: int) -> None:
    client.send(subscribe(1, [(topic_filter, qos)]))
    suback = client.expect(SUBACK, timeout=10)
    assert suback.reason_codes == [qos], suback


def wait_for_route(publisher: RawClient, subscriber: RawClient, topic: str) -> None:
    """Until the publisher's node knows the subscriber's node wants ``topic``.

    SUBACK means the route is committed, but a follower applies a commit only
    when the leader next tells it (one heartbeat later). A v5 QoS 1 PUBLISH that
    no node wants is acknowledged 0x10: probe until it is not, then drop the
    probes that reached the subscriber.
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


def test_publish_on_node1_reaches_subscriber_on_node2_at_qos0_and_qos1(
    cluster: dict[str, RunningBroker], clients: Callable[[RunningBroker, str], RawClient]
) -> None:
    subscriber = clients(cluster["n2"], "sub-on-n2")
    subscribed(subscriber, "cross/#", 1)
    publisher = clients(cluster["n1"], "pub-on-n1")
    wait_for_route(publisher, subscriber, "cross/probe")

    publisher.send(publish("cross/zero", b"qos0 from n1"))
    got = subscriber.expect(PUBLISH)
    assert (got.topic, got.payload, got.qos) == ("cross/zero", b"qos0 from n1", 0)

    publisher.send(publish("cross/one", b"qos1 from n1", qos=1, packet_id=7))
    puback = publisher.expect(PUBACK)
    assert (puback.packet_id, puback.reason_code) == (7, 0)
    got = subscriber.expect(PUBLISH)
    assert (got.topic, got.payload, got.qos) == ("cross/one", b"qos1 from n1", 1)
    assert got.packet_id is not None
    subscriber.send(ack(PUBACK, got.packet_id))
    subscriber.assert_silent(0.5)  # one copy each, nothing else


def test_retained_message_set_on_node1_is_served_by_node3(
    cluster: dict[str, RunningBroker], clients: Callable[[RunningBroker, str], RawClient]
) -> None:
    publisher = clients(cluster["n1"], "retainer")
    publisher.send(publish("kept/topic", b"retained on n1", qos=1, packet_id=3, retain=True))
    assert publisher.expect(PUBACK, timeout=10).packet_id == 3
    # Committed before the PUBACK; node 3 applies it within a heartbeat or so.
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        attempt += 1
        reader = clients(cluster["n3"], f"reader-{attempt}")
        subscribed(reader, "kept/#", 0)
        try:
            got = reader.expect(PUBLISH, timeout=0.5)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "node 3 never served the retained message"
    assert (got.topic, got.payload, got.retain) == ("kept/topic", b"retained on n1", True)


def test_client_id_taken_over_on_node2_disconnects_node1_with_0x8e(
    cluster: dict[str, RunningBroker], clients: Callable[[RunningBroker, str], RawClient]
) -> None:
    first = clients(cluster["n1"], "roaming")
    second = clients(cluster["n2"], "roaming")
    received = first.read_until_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in received] == [(DISCONNECT, SESSION_TAKEN_OVER)]
    with pytest.raises(Closed):
        first.read(timeout=0.1)
    second.send(PINGREQ_BYTES)  # the new connection is alive
    second.expect(PINGRESP)
