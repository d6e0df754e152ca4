"""Routes under concurrency, across real nodes: the fault-free loss the fault suite found.

Two clients subscribed to one filter on a node in the same instant counted as
one route reference; when one of them left, the node removed its route, and
the other, still subscribed, received nothing published on other nodes.
"""

from __future__ import annotations

import time

import pytest
from clusterkit import Cluster, NodeClients, published, received, wait_for_route
from rawmqtt import SUBACK, disconnect, subscribe

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]


def test_concurrent_first_subscribers_keep_the_route_when_one_leaves(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    a = node_clients(cluster["n2"], "route-race-a")
    b = node_clients(cluster["n2"], "route-race-b")
    # Both SUBSCRIBEs are on the wire before either is answered.
    a.send(subscribe(1, [("race/#", 1)]))
    b.send(subscribe(1, [("race/#", 1)]))
    assert a.expect(SUBACK, timeout=10).reason_codes == [1]
    assert b.expect(SUBACK, timeout=10).reason_codes == [1]
    a.send(disconnect())
    # Long enough for a wrongly decided route removal to commit everywhere (the
    # pass does not depend on it: with exact counts there is no removal to wait for).
    time.sleep(1.0)
    publisher = node_clients(cluster["n1"], "route-race-pub")
    wait_for_route(publisher, b, "race/probe")
    for packet_id in range(1, 21):
        assert published(publisher, f"race/{packet_id}", b"m", 1, packet_id) == 0
    got = received(b, 20)
    assert [p.topic for p in got] == [f"race/{i}" for i in range(1, 21)]
