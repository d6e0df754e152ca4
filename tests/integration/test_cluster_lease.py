"""The lease across real nodes (``cluster/replication/lease.py``): a node cut off from
its majority stops serving, and a takeover from a node out of reach waits for it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from clusterkit import NodeClients, start_cluster
from rawmqtt import CONNACK, DISCONNECT, Closed, connect

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]
BrokerFactory = Callable[..., "RunningBroker"]
LEASE, MARGIN = 1.0, 0.5
SERVER_UNAVAILABLE = 0x88
RAFT_DETECTION = 3.5
"""pysyncobj drops a silent Raft connection after this long (RaftOptions.connection_timeout)."""


def test_a_node_without_its_majority_disconnects_its_clients_and_refuses_new_ones(
    broker_factory: BrokerFactory, node_clients: NodeClients
) -> None:
    cluster = start_cluster(broker_factory, cluster_lease=LEASE, cluster_lease_margin=MARGIN)
    resident = node_clients(cluster["n1"], "lease-resident")
    for node_id in ("n2", "n3"):
        cluster[node_id].kill()
    started = time.monotonic()
    told = resident.expect(DISCONNECT, timeout=RAFT_DETECTION + LEASE + 15)
    assert told.reason_code == SERVER_UNAVAILABLE
    # A majority was last heard at most one status poll (0.25 s) before the kill.
    assert time.monotonic() - started >= LEASE - 0.3
    newcomer = node_clients.open(cluster["n1"])
    newcomer.send(connect("lease-newcomer"))
    asked = time.monotonic()
    assert newcomer.expect(CONNACK, timeout=10).reason_code == SERVER_UNAVAILABLE
    assert time.monotonic() - asked < 2.0, "refused at once, not after a commit timeout"


def test_a_takeover_from_a_node_out_of_reach_waits_for_its_lease(
    broker_factory: BrokerFactory, node_clients: NodeClients
) -> None:
    """The wait outlasts connect_timeout, which does not cut a CONNECT being handled short."""
    cluster = start_cluster(
        broker_factory, cluster_lease=LEASE, cluster_lease_margin=MARGIN, connect_timeout=2.0
    )
    old = node_clients(cluster["n3"], "lease-mover")
    n3 = cluster["n3"]
    os.kill(n3.pid, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        _new, connack = node_clients.connect(cluster["n1"], "lease-mover")
        waited = time.monotonic() - paused
        assert connack.reason_code == 0
        # n3 cannot acknowledge the kick: n1 waits until n3's lease has surely run out.
        assert waited >= RAFT_DETECTION + LEASE + MARGIN, f"took it over after {waited:.1f}s"
    finally:
        os.kill(n3.pid, signal.SIGCONT)
    # Back, n3 applies the claim and lets its connection go.
    with pytest.raises(Closed):
        while True:
            packet = old.read(timeout=15)
            assert packet.type == DISCONNECT, packet
