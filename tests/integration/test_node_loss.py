"""Node loss without an operator (issue 12): kill -9 of a node while a QoS 1 publisher on
another node publishes to a topic with subscribers on all three.

SWIM confirms the death, the Raft leader declares the node down once its lease
has surely run out, and then: the publisher was never disconnected (its PUBACKs
were only held back), the persistent session of the dead node resumes on a
survivor with every message acknowledged after the death, and the dead node's
client's will arrives once, after its delay. The same with the leader killed.
A graceful stop (SIGTERM) instead moves its sessions before it goes.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from clusterkit import (
    IDS,
    Cluster,
    NodeClients,
    published_once_routed,
    received,
    start_cluster,
    subscribed,
)
from rawmqtt import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    RawClient,
    Will,
    ack,
    disconnect,
    publish,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(180), pytest.mark.raftmq_only]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
WILL_DELAY_INTERVAL = 0x18
WILL_DELAY = 12
"""Seconds: longer than detection plus the lease wait, so the leader fires it later."""
DETECTION_BOUND = 10.0
"""Issue 12: a kill -9 is confirmed dead within 10 s (p99)."""
SERVER_SHUTTING_DOWN = 0x8B
PERSISTENT: dict[str, Any] = {"clean": False, "properties": [(SESSION_EXPIRY_INTERVAL, 600)]}


def status(node: RunningBroker) -> dict[str, Any] | None:
    config = str(node.data_dir.parent / "raftmq.toml")
    done = subprocess.run(
        [RAFTMQ, "cluster", "status", "--config", config, "--json", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


class SteadyPublisher(threading.Thread):
    """QoS 1 publishes one after another, each waited for, until stopped: when each was
    sent and acknowledged. Every PUBACK must be a success, however long it is held."""

    def __init__(self, client: RawClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.acked: list[tuple[int, float, float]] = []
        """(packet id, sent at, acknowledged at), by time.monotonic()."""
        self.failure: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        packet_id = 0
        try:
            while not self.stopping.is_set():
                packet_id += 1
                sent = time.monotonic()
                payload = str(packet_id).encode()
                self.client.send(publish("loss/t", payload, qos=1, packet_id=packet_id))
                puback = self.client.expect(PUBACK, timeout=60)
                assert (puback.packet_id, puback.reason_code) == (packet_id, 0), puback
                self.acked.append((packet_id, sent, time.monotonic()))
                time.sleep(0.05)
        except BaseException as exc:  # reported by stop()
            self.failure = exc

    def stop(self) -> list[tuple[int, float, float]]:
        self.stopping.set()
        self.join(70)
        assert not self.is_alive(), "the publisher hangs"
        if self.failure is not None:
            raise AssertionError(f"the publisher failed: {self.failure!r}") from self.failure
        return self.acked


def lose_a_node(cluster: Cluster, node_clients: NodeClients, victim: str) -> None:
    survivors = [n for n in IDS if n != victim]
    publisher_node, watcher_node = survivors
    # Subscribers on all three nodes: plain (QoS 0) ones on the survivors, and a
    # persistent QoS 1 session on the victim, connected when it dies.
    plain = [node_clients(cluster[n], f"plain-{n}") for n in survivors]
    for client in plain:
        subscribed(client, "loss/#", 0)
    roamer = node_clients(cluster[victim], "roamer", **PERSISTENT)
    subscribed(roamer, "loss/#", 1)
    watcher = node_clients(cluster[watcher_node], "will-watcher")
    subscribed(watcher, "wills/#", 1)
    delay = [(WILL_DELAY_INTERVAL, WILL_DELAY)]
    will = Will("wills/leaver", b"gone with its node", qos=1, properties=delay)
    node_clients(cluster[victim], "leaver", will=will, **PERSISTENT)
    publisher = SteadyPublisher(node_clients(cluster[publisher_node], "steady-publisher"))
    publisher.start()
    assert plain[0].expect(PUBLISH).payload == b"1", "SUBACK meant the routes were live"
    deadline = time.monotonic() + 30
    while len(publisher.acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)

    cluster[victim].kill()
    killed = time.monotonic()
    seen: dict[str, float] = {}
    deadline = killed + 60
    while "down" not in seen and time.monotonic() < deadline:
        report = status(cluster[watcher_node])
        if report is not None:
            if report["health"].get(victim, {}).get("state") == "dead":
                seen.setdefault("dead", time.monotonic())
            if victim in report["down"]:
                seen.setdefault("down", time.monotonic())
        time.sleep(0.2)
    time.sleep(1.0)
    acked = publisher.stop()
    assert "down" in seen, f"node {victim} was never declared down"
    assert seen["dead"] - killed <= DETECTION_BOUND, f"confirmed dead after {seen}"

    # The dead node's persistent session resumes on a survivor with everything
    # acknowledged after the death.
    after_kill = {str(pid).encode() for pid, _, at in acked if at > killed}
    assert after_kill, "messages were acknowledged after the death"
    back, connack = node_clients.connect(cluster[survivors[0]], "roamer", **PERSISTENT)
    assert connack.session_present, "the session was re-homed, not lost"
    got: set[bytes] = set()
    deadline = time.monotonic() + 30
    while not after_kill <= got and time.monotonic() < deadline:
        got.update(p.payload for p in received(back, 1, timeout=30))
    missing = sorted(after_kill - got, key=int)
    assert not missing, f"{len(missing)} acknowledged after the death never arrived: {missing}"

    # The will: once, and not before its delay (counted from the node's last sign of life).
    will_packet = watcher.expect(PUBLISH, timeout=WILL_DELAY + 20)
    arrived = time.monotonic()
    assert (will_packet.topic, will_packet.payload) == ("wills/leaver", b"gone with its node")
    assert arrived - killed >= WILL_DELAY - 1.0, f"the will came {arrived - killed:.1f} s after"
    assert will_packet.packet_id is not None
    watcher.send(ack(PUBACK, will_packet.packet_id))
    watcher.assert_silent(2.0)
    gaps = [b - a for (_, _, a), (_, _, b) in itertools.pairwise(acked)]
    after = {what: round(at - killed, 2) for what, at in seen.items()}
    print(f"{len(acked)} PUBACKs, largest gap {max(gaps):.2f} s; seen after the kill: {after}")


def with_leader(broker_factory: Callable[..., RunningBroker]) -> tuple[Cluster, str]:
    """Three nodes, once they have elected a Raft leader: the cluster and the leader."""
    cluster = start_cluster(broker_factory)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = status(cluster["n1"])
        if report is not None and report["leader"] is not None:
            return cluster, report["leader"]
        time.sleep(0.2)
    raise AssertionError("no Raft leader within 60 s")


def test_kill_9_of_a_follower_is_a_non_event_for_clients(
    broker_factory: Callable[..., RunningBroker], node_clients: NodeClients
) -> None:
    cluster, leader = with_leader(broker_factory)
    lose_a_node(cluster, node_clients, next(n for n in IDS if n != leader))


def test_kill_9_of_the_leader_too(
    broker_factory: Callable[..., RunningBroker], node_clients: NodeClients
) -> None:
    cluster, leader = with_leader(broker_factory)
    lose_a_node(cluster, node_clients, leader)


def test_a_graceful_stop_moves_its_sessions_and_publishers_see_nothing(
    broker_factory: Callable[..., RunningBroker], node_clients: NodeClients
) -> None:
    """SIGTERM of a node with persistent sessions, one offline with queued messages and
    one connected: the connected client is told 0x8B, both resume elsewhere with
    session-present = 1 and every message, and the publisher on another node never sees
    an error or a wait."""
    cluster = start_cluster(broker_factory)
    offline = node_clients(cluster["n3"], "offline-roamer", **PERSISTENT)
    subscribed(offline, "leave/#", 1)
    offline.send(disconnect())
    offline.close()
    online = node_clients(cluster["n3"], "online-roamer", **PERSISTENT)
    subscribed(online, "leave/#", 1)
    publisher = node_clients(cluster["n1"], "leave-publisher")
    sent = [f"before {i}".encode() for i in range(5)]
    for i, payload in enumerate(sent):
        published_once_routed(publisher, "leave/t", payload, 1, packet_id=i + 1)
    assert [p.payload for p in received(online, 5)] == sent

    assert cluster["n3"].stop() == 0
    closing = online.read_until_closed(timeout=10)
    assert [(p.type, p.reason_code) for p in closing] == [(DISCONNECT, SERVER_SHUTTING_DOWN)]
    after = [f"after {i}".encode() for i in range(5)]
    for i, payload in enumerate(after):
        started = time.monotonic()
        published_once_routed(publisher, "leave/t", payload, 1, packet_id=10 + i)
        assert time.monotonic() - started < 2.0, "the publisher waits for nothing"

    back, connack = node_clients.connect(cluster["n2"], "offline-roamer", **PERSISTENT)
    assert connack.session_present, "the session moved before the node stopped"
    assert [p.payload for p in received(back, 10)] == sent + after, "in order, all of them"
    again, connack = node_clients.connect(cluster["n1"], "online-roamer", **PERSISTENT)
    assert connack.session_present
    assert [p.payload for p in received(again, 5)] == after
    again.assert_silent(0.5)
