"""Three real `raftmq node` processes on loopback, one cluster: clients on different
nodes see one broker (see clusterkit.py for how the cluster is started).

A SUBACK means the route is committed; the publisher's node applies that
commit a moment later, so tests publishing across nodes first wait for the
route there (``wait_for_route``).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from clusterkit import (
    IDS,
    SERVER_UNAVAILABLE,
    SESSION_TAKEN_OVER,
    Cluster,
    NodeClients,
    published,
    received,
    start_cluster,
    subscribed,
    wait_for_route,
)
from rawmqtt import (
    CONNACK,
    DISCONNECT,
    PINGREQ_BYTES,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Closed,
    Packet,
    RawClient,
    Will,
    ack,
    connect,
    disconnect,
    subscribe,
)

from raftmq.cluster.replication.raft import RaftOptions

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]

QOS_LEVELS = (0, 1, 2)
V3_SERVER_UNAVAILABLE = 3
"""CONNACK return code 3 of MQTT 3.1.1, "server unavailable"."""
REFUSAL_TIMEOUT = 2 * RaftOptions().commit_timeout + 10
"""A cut-off node gives up on a commit after the Raft commit timeout (no config key
sets it); two commits may queue one behind the other, plus slack for a loaded machine."""


# -- cross-node delivery ------------------------------------------------------------


@pytest.mark.parametrize(
    ("publisher_node", "subscriber_node"),
    [("n1", "n2"), ("n2", "n1")],
    ids=["n1-to-n2", "n2-to-n1"],
)
def test_cross_node_delivery_at_every_publish_and_subscribe_qos(
    cluster: Cluster, node_clients: NodeClients, publisher_node: str, subscriber_node: str
) -> None:
    """Each (publish QoS, subscription QoS) pair arrives once, at the lower of the two,
    with both sides' QoS 2 exchanges (PUBREC/PUBREL/PUBCOMP) completed."""
    subscriber = node_clients(cluster[subscriber_node], "flow-subscriber")
    for sub_qos in QOS_LEVELS:
        subscribed(subscriber, f"flow/s{sub_qos}/#", sub_qos, packet_id=sub_qos + 1)
    publisher = node_clients(cluster[publisher_node], "flow-publisher")
    for sub_qos in QOS_LEVELS:
        wait_for_route(publisher, subscriber, f"flow/s{sub_qos}/probe")

    expected = []
    for packet_id, (pub_qos, sub_qos) in enumerate(
        itertools.product(QOS_LEVELS, QOS_LEVELS), start=1
    ):
        topic = f"flow/s{sub_qos}/p{pub_qos}"
        payload = f"qos {pub_qos} from {publisher_node}".encode()
        assert published(publisher, topic, payload, pub_qos, packet_id) == 0, topic
        expected.append((topic, payload, min(pub_qos, sub_qos)))

    got = received(subscriber, len(expected))
    assert sorted((p.topic, p.payload, p.qos) for p in got) == sorted(expected)
    subscriber.assert_silent(0.5)  # one copy each, nothing else


# -- retained messages ----------------------------------------------------------------


def retained_from(
    node_clients: NodeClients, cluster: Cluster, node_id: str, reader: str
) -> Packet | None:
    """The retained message a fresh QoS 1 subscriber to ``kept/#`` on ``node_id`` is
    sent, or None. Retained messages follow the SUBACK at once, so a second is ample."""
    client = node_clients(cluster[node_id], reader)
    subscribed(client, "kept/#", 1)
    try:
        got = client.expect(PUBLISH, timeout=1.0)
    except TimeoutError:
        return None
    finally:
        client.close()
    return got


def served_retained(
    node_clients: NodeClients, cluster: Cluster, node_id: str, payload: bytes | None
) -> Packet | None:
    """What ``node_id`` serves as retained once it serves ``payload`` (None: nothing);
    every node applies the commit within a heartbeat or so of the publisher's."""
    deadline = time.monotonic() + 10
    phase = "cleared" if payload is None else "set"
    attempts = itertools.count()
    while True:
        got = retained_from(node_clients, cluster, node_id, f"{phase}-{node_id}-{next(attempts)}")
        if (got.payload if got is not None else None) == payload:
            return got
        assert time.monotonic() < deadline, f"node {node_id} serves {got}, not {payload!r}"


def test_retained_message_set_on_node1_is_served_then_cleared_on_every_node(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    setter = node_clients(cluster["n1"], "retainer")
    # Accepted: 0, or 0x10 when nobody subscribes right now; refusals are 0x80 and up.
    assert published(setter, "kept/topic", b"retained on n1", 1, retain=True) < 0x80
    for node_id in IDS:
        got = served_retained(node_clients, cluster, node_id, b"retained on n1")
        assert got is not None
        assert (got.topic, got.retain, got.qos) == ("kept/topic", True, 1), node_id

    assert published(setter, "kept/topic", b"", 1, packet_id=2, retain=True) < 0x80
    for node_id in IDS:
        served_retained(node_clients, cluster, node_id, None)


# -- takeover -------------------------------------------------------------------------


def test_takeover_from_node1_to_node2_cuts_the_old_connection_for_good(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    first = node_clients(cluster["n1"], "roaming")
    subscribed(first, "roam/#", 1)
    second, connack = node_clients.connect(cluster["n2"], "roaming")
    assert not connack.session_present
    goodbye = first.read_until_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in goodbye] == [(DISCONNECT, SESSION_TAKEN_OVER)]

    subscribed(second, "roam/#", 1)
    publisher = node_clients(cluster["n3"], "roam-publisher")
    wait_for_route(publisher, second, "roam/probe")
    news = [f"news {i}".encode() for i in range(3)]
    for packet_id, payload in enumerate(news, start=1):
        assert published(publisher, "roam/news", payload, 1, packet_id) == 0

    assert [p.payload for p in received(second, len(news))] == news
    second.assert_silent(0.5)
    with pytest.raises(Closed):
        first.read(timeout=0.1)
    second.send(PINGREQ_BYTES)  # the new connection is alive
    second.expect(PINGRESP)


# -- shared subscriptions ---------------------------------------------------------------

SHARED_MESSAGES = 30


def gathered(members: dict[str, RawClient], total: int) -> dict[str, list[bytes]]:
    """The payloads each member (by client id) gets, acknowledged, until ``total`` in all."""
    deadline = time.monotonic() + 20
    got: dict[str, list[bytes]] = {client_id: [] for client_id in members}
    while sum(map(len, got.values())) < total:
        assert time.monotonic() < deadline, f"fewer than {total} messages arrived: {got}"
        for client_id, client in members.items():
            try:
                pkt = client.expect(PUBLISH, timeout=0.05)
            except TimeoutError:
                continue
            assert pkt.packet_id is not None
            client.send(ack(PUBACK, pkt.packet_id))
            got[client_id].append(pkt.payload)
    return got


@pytest.mark.parametrize(
    ("members_per_node", "publisher_node", "serving_nodes"),
    [
        pytest.param({"n1": 1, "n2": 1, "n3": 1}, "n1", {"n1"}, id="one-per-node"),
        pytest.param({"n1": 1, "n2": 1, "n3": 2}, "n3", {"n3"}, id="two-on-publisher-node"),
        pytest.param({"n2": 1, "n3": 2}, "n1", {"n2", "n3"}, id="none-on-publisher-node"),
    ],
)
def test_share_group_over_nodes_gets_each_message_once(
    cluster: Cluster,
    node_clients: NodeClients,
    members_per_node: dict[str, int],
    publisher_node: str,
    serving_nodes: set[str],
) -> None:
    """Each message goes to one member cluster-wide. A group with a member on the
    publisher's node is served there alone (cluster/replication/replicated.py ``_plan``); otherwise
    the nodes with members take turns, and each node's members take turns."""
    members: dict[str, RawClient] = {}
    serving: set[str] = set()
    for node_id, count in members_per_node.items():
        for i in range(count):
            client_id = f"worker-{node_id}-{i}"
            members[client_id] = node_clients(cluster[node_id], client_id)
            subscribed(members[client_id], "$share/workers/jobs/#", 1)
            if node_id in serving_nodes:
                serving.add(client_id)
    # A plain route committed after every group route: the publisher's node applies
    # commits in log order, so once it routes the marker it knows the whole group.
    marker_node = next(node_id for node_id in members_per_node if node_id != publisher_node)
    marker = node_clients(cluster[marker_node], "marker")
    subscribed(marker, "marker/#", 0)
    publisher = node_clients(cluster[publisher_node], "producer")
    wait_for_route(publisher, marker, "marker/probe")

    jobs = [f"job {i}".encode() for i in range(SHARED_MESSAGES)]
    for packet_id, payload in enumerate(jobs, start=1):
        assert published(publisher, f"jobs/{packet_id}", payload, 1, packet_id) == 0

    got = gathered(members, len(jobs))
    for client in members.values():
        client.assert_silent(0.3)  # no late duplicate
    copies = Counter(payload for payloads in got.values() for payload in payloads)
    assert {p: n for p, n in copies.items() if n > 1} == {}, "delivered more than once"
    assert sorted(copies) == sorted(jobs)
    receivers = {client_id for client_id, payloads in got.items() if payloads}
    assert receivers == serving, {client_id: len(payloads) for client_id, payloads in got.items()}


# -- wills ----------------------------------------------------------------------------


def test_will_of_a_client_lost_on_node1_reaches_node3_once_and_disconnect_sends_none(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    watcher = node_clients(cluster["n3"], "will-watcher")
    subscribed(watcher, "wills/#", 1)
    graceful = node_clients(
        cluster["n1"], "graceful", will=Will("wills/graceful", b"graceful left", qos=1)
    )
    lost = node_clients(cluster["n1"], "lost", will=Will("wills/lost", b"lost on n1", qos=1))
    wait_for_route(lost, watcher, "wills/probe")

    graceful.send(disconnect())
    assert graceful.read_until_closed() == []
    lost.close()  # no DISCONNECT: the broker sees the connection drop

    wills = received(watcher, 1)
    assert [(w.topic, w.payload, w.qos) for w in wills] == [("wills/lost", b"lost on n1", 1)]
    watcher.assert_silent(1.5)  # neither a second copy nor the graceful client's will


# -- a node cut off from its peers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "unavailable"),
    [(5, SERVER_UNAVAILABLE), (4, V3_SERVER_UNAVAILABLE)],
    ids=["v5", "v3.1.1"],
)
def test_node_cut_off_from_its_peers_refuses_connect_and_subscribe(
    broker_factory: Callable[..., RunningBroker],
    node_clients: NodeClients,
    level: int,
    unavailable: int,
) -> None:
    """Neither a claim nor a new route can commit without a majority: both are
    refused after a bounded wait, and the connected client stays served while the
    node's lease lasts (long here; test_cluster_lease.py has it run out)."""
    cluster = start_cluster(broker_factory, cluster_lease=60.0)
    lonely = cluster["n1"]
    resident = node_clients(lonely, "resident", level=level)
    cluster["n2"].kill()
    cluster["n3"].kill()

    resident.send(subscribe(1, [("after/cut", 1)], level=level))
    newcomer = node_clients.open(lonely, level)
    newcomer.send(connect("newcomer", level=level))

    suback = resident.expect(SUBACK, timeout=REFUSAL_TIMEOUT)
    assert len(suback.reason_codes) == 1 and suback.reason_codes[0] >= 0x80, suback
    connack = newcomer.expect(CONNACK, timeout=REFUSAL_TIMEOUT)
    assert (connack.reason_code, connack.session_present) == (unavailable, False), connack
    assert newcomer.read_until_closed() == []
    resident.send(PINGREQ_BYTES)
    resident.expect(PINGRESP)
