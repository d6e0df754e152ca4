"""A persistent session follows its client from node to node (three real nodes).

The session's subscriptions live in the Raft log; its queued and in-flight
messages live on the node that held it and move, in order, to the node the
client comes back to (the session hand-over over the forwarding stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from clusterkit import (
    NO_MATCHING_SUBSCRIBERS,
    SESSION_TAKEN_OVER,
    Cluster,
    NodeClients,
    published_once_routed,
    resumed_deliveries,
    start_cluster,
    subscribed,
)
from rawmqtt import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    disconnect,
    publish,
)

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(120), pytest.mark.raftmq_only]

PERSISTENT = {"clean": False, "properties": [(SESSION_EXPIRY_INTERVAL, 600)]}


def test_session_left_on_node1_resumes_on_node3_with_every_missed_message_in_order(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    roamer, connack = node_clients.connect(cluster["n1"], "roamer", **PERSISTENT)
    assert not connack.session_present
    subscribed(roamer, "roam/#", 2)
    roamer.send(disconnect())
    roamer.close()

    publisher = node_clients(cluster["n2"], "roam-publisher")
    missed = [(f"missed {i}".encode(), 1 + i % 2) for i in range(20)]
    for i, (payload, qos) in enumerate(missed):
        published_once_routed(publisher, "roam/t", payload, qos, packet_id=i + 1)

    resumed, connack = node_clients.connect(cluster["n3"], "roamer", **PERSISTENT)
    assert connack.session_present, "the session was kept on node 1"
    got = resumed_deliveries(resumed, len(missed))
    assert [(payload, qos) for payload, qos, _ in got] == missed, "all of them, in order"
    resumed.assert_silent(0.5)

    published_once_routed(publisher, "roam/t", b"after the move", 1, packet_id=100)
    assert resumed_deliveries(resumed, 1) == [(b"after the move", 1, False)]
    resumed.assert_silent(0.5)  # node 1 gave the session up: one copy


def test_unacknowledged_messages_follow_the_client_and_are_resent_with_dup(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    first, _ = node_clients.connect(cluster["n1"], "forgetful", **PERSISTENT)
    subscribed(first, "inflight/#", 1)
    publisher = node_clients(cluster["n2"], "inflight-publisher")
    published_once_routed(publisher, "inflight/t", b"never acked", 1, packet_id=1)
    delivered = first.expect(PUBLISH, timeout=10)
    assert delivered.payload == b"never acked"
    first.close()  # no PUBACK, no DISCONNECT: the message stays in flight on node 1

    again, connack = node_clients.connect(cluster["n2"], "forgetful", **PERSISTENT)
    assert connack.session_present
    assert resumed_deliveries(again, 1) == [(b"never acked", 1, True)]
    again.assert_silent(0.5)


def test_taking_over_a_live_session_on_another_node_moves_it(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    old, _ = node_clients.connect(cluster["n1"], "mover", **PERSISTENT)
    subscribed(old, "move/#", 1)
    new, connack = node_clients.connect(cluster["n2"], "mover", **PERSISTENT)
    assert connack.session_present
    assert [(p.type, p.reason_code) for p in old.read_until_closed(timeout=10)] == [
        (DISCONNECT, SESSION_TAKEN_OVER)
    ]
    publisher = node_clients(cluster["n3"], "move-publisher")
    published_once_routed(publisher, "move/t", b"to the new home", 1, packet_id=1)
    assert resumed_deliveries(new, 1) == [(b"to the new home", 1, False)]
    new.assert_silent(0.5)


def test_a_clean_start_elsewhere_ends_the_session_everywhere(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    first, _ = node_clients.connect(cluster["n1"], "restarter", **PERSISTENT)
    subscribed(first, "clean/#", 1)
    first.send(disconnect())
    first.close()

    fresh, connack = node_clients.connect(
        cluster["n3"], "restarter", properties=[(SESSION_EXPIRY_INTERVAL, 600)]
    )
    assert not connack.session_present, "a clean start resumes nothing"
    fresh.send(disconnect())
    fresh.close()
    again, connack = node_clients.connect(cluster["n2"], "restarter", **PERSISTENT)
    assert connack.session_present, "the new (empty) session persists"
    publisher = node_clients(cluster["n2"], "clean-publisher")
    deadline = time.monotonic() + 10
    while True:  # node 1 drops its route for clean/# once it has ended the old session
        publisher.send(publish("clean/t", b"nobody", qos=1, packet_id=1))
        if publisher.expect(PUBACK, timeout=10).reason_code == NO_MATCHING_SUBSCRIBERS:
            break
        assert time.monotonic() < deadline, "the old subscription outlived its session"
        time.sleep(0.1)
    again.assert_silent(0.5)


def test_a_session_moved_to_a_disk_node_survives_its_kill_9(
    broker_factory: Callable[..., RunningBroker], node_clients: NodeClients
) -> None:
    """What a session brings along (subscriptions, queued messages) is journaled on the node
    it moves to, so that node's crash loses none of it."""
    cluster = start_cluster(broker_factory, durability="disk")
    first, _ = node_clients.connect(cluster["n1"], "durable-roamer", **PERSISTENT)
    subscribed(first, "disk/#", 1)
    first.send(disconnect())
    first.close()
    publisher = node_clients(cluster["n3"], "disk-publisher")
    sent = [f"queued on n1 {i}".encode() for i in range(3)]
    for i, payload in enumerate(sent):
        published_once_routed(publisher, "disk/t", payload, 1, packet_id=i + 1)

    moved, connack = node_clients.connect(cluster["n2"], "durable-roamer", **PERSISTENT)
    assert connack.session_present
    assert moved.expect(PUBLISH, timeout=10).payload == sent[0]  # not acknowledged
    cluster["n2"].kill()
    cluster["n2"].restart()

    back, connack = node_clients.connect(cluster["n2"], "durable-roamer", **PERSISTENT)
    assert connack.session_present, "node 2 kept the session it took over"
    got = resumed_deliveries(back, len(sent))
    assert [payload for payload, _, _ in got] == sent
    assert got[0][2], "the one sent before the crash comes again with DUP"
    published_once_routed(publisher, "disk/t", b"after the crash", 1, packet_id=9)
    assert resumed_deliveries(back, 1) == [(b"after the crash", 1, False)]
