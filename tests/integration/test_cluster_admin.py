"""`raftmq cluster status` and `raftmq cluster node-down` against three real nodes, and a
cluster that loses its Raft leader to kill -9.

The commands run as a user runs them, in a process of their own, with a node's
config file (the one the test harness wrote for it, beside its data dir).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from clusterkit import (
    IDS,
    Cluster,
    NodeClients,
    published_once_routed,
    resumed_deliveries,
    start_cluster,
    subscribed,
    wait_for_route,
)
from rawmqtt import (
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
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(150), pytest.mark.raftmq_only]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
COMMAND_TIMEOUT = 60.0
SETTLE_TIMEOUT = 40.0
"""For the cluster to reach a state the test waits for (election, catching up) on a busy
2-core machine."""

Status = dict[str, Any]


@pytest.fixture
def cluster(broker_factory: Callable[..., RunningBroker]) -> Cluster:
    """Three nodes with failure detection off: these tests are about what an operator does
    by hand (with SWIM on, the leader declares a killed node down itself:
    test_node_loss.py)."""
    return start_cluster(broker_factory, failure_detection="off")


def config_of(node: RunningBroker) -> str:
    return str(node.data_dir.parent / "raftmq.toml")


def raftmq_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAFTMQ, "cluster", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def status_of(node: RunningBroker) -> Status:
    done = raftmq_cluster("status", "--config", config_of(node), "--json")
    assert done.returncode == 0, done.stderr
    report: Status = json.loads(done.stdout)
    return report


def status_when(node: RunningBroker, ready: Callable[[Status], bool], what: str) -> Status:
    """The node's status once ``ready`` holds for it; the node may not answer at first."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last: Status | str = "no answer"
    while time.monotonic() < deadline:
        done = raftmq_cluster("status", "--config", config_of(node), "--json")
        if done.returncode == 0:
            last = json.loads(done.stdout)
            if ready(last):
                return last
        else:
            last = done.stderr.strip()
        time.sleep(0.3)
    raise AssertionError(f"not within {SETTLE_TIMEOUT:g} s: {what}; last status: {last}")


def leader_of(node: RunningBroker) -> str:
    """The Raft leader ``node`` names, once it names one."""
    leader: str = status_when(node, lambda r: r["leader"] is not None, "a leader")["leader"]
    return leader


def node_down(dead: str, via: RunningBroker) -> Status:
    """``raftmq cluster node-down dead`` with ``via``'s config; its JSON report."""
    done = raftmq_cluster("node-down", dead, "--config", config_of(via), "--json")
    assert done.returncode == 0, done.stderr
    report: Status = json.loads(done.stdout)
    return report


def has_route(report: Status, topic_filter: str, node_id: str) -> bool:
    return any(
        route["filter"] == topic_filter and node_id in route["nodes"] for route in report["routes"]
    )


def expect_delivery(subscriber: RawClient, topic: str, payload: bytes) -> None:
    got = subscriber.expect(PUBLISH, timeout=15)
    assert (got.topic, got.payload) == (topic, payload)
    if got.qos:
        assert got.packet_id is not None
        subscriber.send(ack(PUBACK, got.packet_id))


def test_status_shows_members_leader_commit_index_routes_and_stream_health(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    subscriber = node_clients(cluster["n2"], "status-watcher")
    subscribed(subscriber, "status/#", 1)

    def settled(report: Status) -> bool:
        streams = report["streams"]
        return (
            report["leader"] is not None
            and has_route(report, "status/#", "n2")
            and all(streams[peer]["connected"] for peer in ("n2", "n3"))
        )

    report = status_when(cluster["n1"], settled, "n1 knows the route and reaches both peers")
    assert report["node"] == "n1"
    assert report["members"] == list(IDS) and report["down"] == []
    assert report["commit_index"] > 0 and report["last_applied"] > 0
    assert report["counts"]["clients"] >= 1 and report["counts"]["routes"] >= 1
    assert report["clients_by_node"].get("n2", 0) >= 1
    assert set(report["streams"]) == {"n2", "n3"}
    for peer in ("n2", "n3"):
        stream = report["streams"][peer]
        assert stream["address"] == cluster.grpc[peer]
        assert (stream["unreachable"], stream["dropped"]) == (False, 0)

    leaders = {node_id: status_of(cluster[node_id]) for node_id in IDS}
    assert {r["leader"] for r in leaders.values()} == {report["leader"]}, "one leader"
    roles = sorted(r["role"] for r in leaders.values())
    assert roles == ["follower", "follower", "leader"]

    table = raftmq_cluster("status", "--config", config_of(cluster["n1"]))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("node n1: ") and f"leader: {report['leader']}" in lines
    assert any(line.split()[:3] == ["status/#", "-", "n2"] for line in lines)
    streams = [line.split() for line in lines if line.startswith(("n2  ", "n3  "))]
    assert [(row[0], row[2]) for row in streams[-2:]] == [("n2", "connected"), ("n3", "connected")]


def test_node_down_makes_the_leader_publish_the_wills_of_a_killed_node(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    leader = leader_of(cluster["n1"])
    dead, watcher_node = (node_id for node_id in IDS if node_id != leader)
    watcher = node_clients(cluster[watcher_node], "will-watcher")
    subscribed(watcher, "wills/#", 1)
    will = Will("wills/last-words", b"my node died", qos=1)
    node_clients(cluster[dead], "will-maker", will=will)
    status_when(
        cluster[leader],
        lambda r: r["counts"]["wills"] == 1 and has_route(r, "wills/#", watcher_node),
        "the leader holds the will and the watcher's route",
    )

    cluster[dead].kill()
    report = node_down(dead, via=cluster[watcher_node])
    assert (report["node"], report["leader"], report["already_down"]) == (dead, leader, False)
    assert report["wills"] == ["will-maker"]
    assert report["released"] == ["will-maker"] and report["rehomed"] == {}

    expect_delivery(watcher, "wills/last-words", b"my node died")
    watcher.assert_silent(1.5)  # exactly once
    after = status_of(cluster[watcher_node])
    assert after["down"] == [dead] and after["counts"]["wills"] == 0
    assert dead not in after["clients_by_node"]


def test_node_down_rehomes_a_persistent_session_that_queues_until_its_client_returns(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    leader = leader_of(cluster["n1"])
    dead = next(node_id for node_id in IDS if node_id != leader)
    persistent = {"clean": False, "properties": [(SESSION_EXPIRY_INTERVAL, 600)]}
    homeless = node_clients(cluster[dead], "homeless", **persistent)
    subscribed(homeless, "rehome/#", 1)
    homeless.send(disconnect())
    homeless.close()

    cluster[dead].kill()
    survivor = next(node_id for node_id in IDS if node_id not in (leader, dead))
    rehomed = node_down(dead, via=cluster[survivor])["rehomed"]
    assert set(rehomed) == {"homeless"} and rehomed["homeless"] in (leader, survivor)
    home = rehomed["homeless"]

    publisher = node_clients(cluster[leader], "rehome-publisher")
    sent = [f"while homeless {i}".encode() for i in range(5)]
    for i, payload in enumerate(sent):
        published_once_routed(publisher, "rehome/t", payload, 1, packet_id=i + 1)
    elsewhere = survivor if home == leader else leader  # the adopter hands it over once more
    back, connack = node_clients.connect(cluster[elsewhere], "homeless", **persistent)
    assert connack.session_present, f"node {home} adopted the session"
    assert resumed_deliveries(back, len(sent)) == [(payload, 1, False) for payload in sent]
    back.assert_silent(0.5)


def test_node_down_refuses_the_leader_and_unknown_nodes(cluster: Cluster) -> None:
    leader = leader_of(cluster["n1"])
    refused = raftmq_cluster("node-down", leader, "--config", config_of(cluster["n1"]))
    assert refused.returncode == 1
    assert f"node {leader} is the Raft leader" in refused.stderr
    unknown = raftmq_cluster("node-down", "n7", "--config", config_of(cluster["n1"]))
    assert unknown.returncode == 2
    assert "node 'n7' is not in the cluster of" in unknown.stderr
    assert status_of(cluster["n1"])["down"] == []


def test_after_kill_9_of_the_leader_acked_subscriptions_receive_and_connects_succeed(
    cluster: Cluster, node_clients: NodeClients
) -> None:
    old = leader_of(cluster["n1"])
    sub_node, pub_node = (node_id for node_id in IDS if node_id != old)
    subscriber = node_clients(cluster[sub_node], "survivor-sub")
    subscribed(subscriber, "after/#", 1)  # SUBACK: acknowledged before the kill
    publisher = node_clients(cluster[pub_node], "survivor-pub")
    wait_for_route(publisher, subscriber, "after/probe")

    cluster[old].kill()
    elected = status_when(
        cluster[sub_node],
        lambda r: r["leader"] not in (None, old) and r["has_quorum"],
        f"a new leader instead of {old}",
    )
    publisher.send(publish("after/kill", b"to the survivor", qos=1, packet_id=21))
    puback = publisher.expect(PUBACK, timeout=15)
    assert (puback.packet_id, puback.reason_code) == (21, 0)
    expect_delivery(subscriber, "after/kill", b"to the survivor")
    node_clients(cluster[pub_node], "newcomer")  # CONNECT commits a claim: needs the new leader

    known = status_of(cluster[elected["leader"]])
    cluster[old].restart()
    rejoined = status_when(
        cluster[old],
        lambda r: (
            r["last_applied"] >= known["commit_index"]
            and r["leader"] is not None
            and has_route(r, "after/#", sub_node)
        ),
        f"restarted node {old} catches up to commit index {known['commit_index']}",
    )
    assert rejoined["clients_by_node"].get(pub_node, 0) >= 2  # survivor-pub and newcomer
