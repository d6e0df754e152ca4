"""The lab's network: nodes in namespaces serve root-namespace clients, and partitions
cut node <-> node traffic only."""

from __future__ import annotations

import re
import threading

import paho.mqtt.client as mqtt
from lab import Lab
from probes import mqtt_connack, mqtt_probe, tcp_reaches

DELIVERY_TIMEOUT = 20.0


def test_every_node_serves_clients_in_the_root_namespace(lab: Lab) -> None:
    assert lab.addresses == {f"n{i}": (f"10.77.0.{10 + i}", 1883) for i in (1, 2, 3)}
    for node_id, node in lab.nodes.items():
        assert mqtt_connack(node, f"probe-{node_id}") == 0


def test_a_publish_crosses_namespaces(lab: Lab) -> None:
    """A subscriber on n3 gets what a publisher on n1 sends: Raft and the forwarding
    streams work between namespaces."""
    got = threading.Event()
    subscriber = _client("sub-n3", lab, "n3")
    subscriber.on_message = lambda _c, _u, message: got.set()
    publisher = _client("pub-n1", lab, "n1")
    try:
        subscriber.subscribe("lab/cross", qos=1)
        # Repeat until the route reaches n1: route commits apply a moment apart.
        for _ in range(int(DELIVERY_TIMEOUT / 0.25)):
            publisher.publish("lab/cross", b"hello", qos=1).wait_for_publish(5)
            if got.wait(0.25):
                break
        assert got.is_set(), "no publish from n1 reached the subscriber on n3"
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()


def test_a_partition_cuts_nodes_apart_but_not_clients(lab: Lab) -> None:
    """n1 cut off: no node reaches it, yet a client of n1 still talks to it (a new
    CONNECT there would wait for a Raft commit the minority cannot make, so the
    client connected before the cut, and pings)."""
    with mqtt_probe(lab.nodes["n1"]) as client:
        assert client.connect("probe-n1") == 0
        lab.partition({"n1": {"n2", "n3"}, "n2": {"n1"}, "n3": {"n1"}})
        assert not tcp_reaches(lab, "n2", "n1")
        assert not tcp_reaches(lab, "n1", "n3")
        assert tcp_reaches(lab, "n2", "n3")
        client.ping()
        with mqtt_probe(lab.nodes["n1"]):  # a new TCP connection from the root namespace
            pass
    assert _dropped(lab, "n1 drops from n2") > 0

    lab.heal()
    assert tcp_reaches(lab, "n2", "n1")
    assert tcp_reaches(lab, "n1", "n3")
    assert "drop" not in lab.network.rules()


def test_a_one_way_grudge_drops_one_direction(lab: Lab) -> None:
    """{n1: {n2}}: n1 drops what n2 sends; n2 -> n3 and n3 -> n1 still pass.

    (A TCP connection n1 -> n2 fails too: its SYN-ACK comes from n2.)
    """
    lab.partition({"n1": {"n2"}})
    assert not tcp_reaches(lab, "n2", "n1")
    assert _dropped(lab, "n1 drops from n2") > 0
    assert tcp_reaches(lab, "n3", "n1")
    assert tcp_reaches(lab, "n2", "n3")


def _dropped(lab: Lab, rule: str) -> int:
    """Packets the partition rule with comment ``rule`` dropped so far."""
    match = re.search(
        rf'counter packets (\d+) bytes \d+ drop comment "{rule}"', lab.network.rules()
    )
    assert match is not None, f"no rule {rule!r} in:\n{lab.network.rules()}"
    return int(match.group(1))


def _client(client_id: str, lab: Lab, node_id: str) -> mqtt.Client:
    node = lab.nodes[node_id]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: reason == 0 and connected.set()
    client.connect(node.address, node.mqtt_port)
    client.loop_start()
    assert connected.wait(10), f"{client_id} got no CONNACK from {node_id}"
    return client
