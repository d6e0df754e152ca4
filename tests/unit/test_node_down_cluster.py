"""RaftCluster when a node dies: NodeDown, what waited for the node, delayed wills.

Over three real RaftNodes on loopback, as in test_replicated_cluster.py (the harness
is replicated_kit.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from raft_trio import IDS, eventually
from recording_waiter import RecordingWaiter as Answer
from replicated_kit import Cluster
from replicated_kit import cluster as cluster  # the fixture

from raftmq.cluster.forwarding.frames import Forwarded
from raftmq.cluster.replication.commands import (
    NodeDownResult,
    Owner,
)
from raftmq.node.message import Message
from raftmq.node.packets import Will
from raftmq.node.session import Subscription

pytestmark = pytest.mark.timeout(60)


async def test_node_down_publishes_wills_and_rehomes_sessions(cluster: Cluster) -> None:
    n1, n2, n3 = (cluster.hooks[n] for n in IDS)
    await n2.add_route(None, "wills/#")
    await n3.claim_client("c9")
    await n3.register_will("c9", Will("wills/c9", b"c9 lost", 1, True))
    persistent = await n3.claim_client("p1", clean_start=False, expiry_interval=600)
    await n3.save_subscriptions("p1", persistent.epoch, {"p/#": Subscription("p/#", 1)})

    result = await n1.node_down("n3")

    assert isinstance(result, NodeDownResult)
    assert [cid for cid, _ in result.wills] == ["c9"]
    ((client_id, home),) = result.rehomed
    assert client_id == "p1" and home.node_id in ("n1", "n2")
    await eventually(lambda: cluster.nodes["n1"].forwarded, 5, "n1 published the will")
    will = cluster.nodes["n1"].forwarded[0]
    assert (will.topic, will.payload, will.qos, will.retain) == ("wills/c9", b"c9 lost", 1, True)
    assert (("n2",), "wills/c9", {}) in cluster.forwarder.sent
    await eventually(
        lambda: all("wills/c9" in cluster.nodes[n].retained for n in IDS), 5, "retained will"
    )
    adopted = cluster.nodes[home.node_id].adopted
    await eventually(lambda: adopted, 5, "adopted")
    assert [
        (cid, epoch, t.expiry_interval, list(t.subscriptions)) for cid, epoch, t in adopted
    ] == [("p1", home.epoch, 600, ["p/#"])]
    kicked = cluster.nodes["n3"].kicks
    await eventually(lambda: ("c9", result.fence_epoch) in kicked, 5, "n3 drops its clients")
    assert ("p1", result.fence_epoch) in kicked
    assert n2.state.owners.get("p1") == Owner(home.node_id, home.epoch)
    # n3 was alive all along: it learns it was declared down, gives up what it held,
    # and rejoins as a live member.
    await eventually(lambda: n1.status().down == (), 5, "n3 rejoined")
    assert n2.state.owners.get("p1") == Owner(home.node_id, home.epoch), "not resurrected"


async def test_a_delayed_will_of_a_dead_nodes_client_goes_out_once_when_due(
    cluster: Cluster,
) -> None:
    n1, n3 = cluster.hooks["n1"], cluster.hooks["n3"]
    await n3.claim_client("d", clean_start=False, expiry_interval=600)
    delayed = Will("wills/d", b"d gone", 1, False, {"will_delay_interval": 1})
    await n3.register_will("d", delayed)
    started = time.time()

    result = await n1.node_down("n3", last_seen=started)

    assert result.wills == () and result.delayed == ("d",)
    published = [(n, m) for n in IDS for m in cluster.nodes[n].forwarded]
    assert published == [], "not before its delay"
    await eventually(lambda: any(cluster.nodes[n].forwarded for n in IDS), 5, "fired")
    assert time.time() - started >= 1.0
    await asyncio.sleep(0.6)  # a few more leader polls
    published = [(n, m.topic) for n in IDS for m in cluster.nodes[n].forwarded]
    leader = (await cluster.trio.leader()).node_id
    assert published == [(leader, "wills/d")], "once, by the leader"
    assert n1.state.delayed_wills == {}


async def test_what_waited_for_a_node_declared_down_goes_where_its_sessions_went(
    cluster: Cluster,
) -> None:
    """A publisher held back for a dead node is answered only once what it published
    reached the dead node's persistent sessions at their new homes; what matched only
    clean sessions there is done."""
    n1, n3 = cluster.hooks["n1"], cluster.hooks["n3"]
    persistent = await n3.claim_client("p", clean_start=False, expiry_interval=600)
    subs = {"r/#": Subscription("r/#", 1), "r/+/x": Subscription("r/+/x", 2)}
    await n3.save_subscriptions("p", persistent.epoch, subs)
    answers = [Answer(), Answer(), Answer()]
    messages = [Message.create(t, t.encode(), 2, False) for t in ("r/a/x", "other", "r/b")]
    cluster.forwarder.held["n3"] = list(zip(map(Forwarded, messages), answers, strict=True))

    result = await n1.node_down("n3")

    ((_, home),) = result.rehomed
    late = cluster.nodes[home.node_id].late
    await eventually(lambda: late, 5, "handed to the new home")
    assert [(cid, [(d.message.topic, d.qos) for d in m.queued]) for cid, m in late] == [
        ("p", [("r/a/x", 2), ("r/b", 1)])
    ], "one copy per session, at its best QoS, in order; 'other' matched nothing"
    await eventually(lambda: all(a.hits for a in answers), 5, "publishers answered")
    assert [(a.hits, a.failures) for a in answers] == [(1, [])] * 3
    assert sum(h.rehoming.rehomed_messages for h in cluster.hooks.values()) == 2


async def test_what_waited_for_a_dead_node_reaches_a_session_claimed_from_it_meanwhile(
    cluster: Cluster,
) -> None:
    """Found by the fault campaign: a client whose node was cut off reconnected elsewhere
    before that node was declared down, so NodeDown re-homed nothing; what had waited
    for the cut-off node matched no re-homed session and was answered, never delivered."""
    n1, n3 = cluster.hooks["n1"], cluster.hooks["n3"]
    first = await n3.claim_client("q", clean_start=False, expiry_interval=600)
    await n3.save_subscriptions("q", first.epoch, {"s/#": Subscription("s/#", 1)})
    await n1.claim_client("q", clean_start=False, expiry_interval=600)  # n3 out of reach
    answer = Answer()
    message = Message.create("s/1", b"waited for n3", 1, False)
    cluster.forwarder.held["n3"] = [(Forwarded(message), answer)]

    result = await n1.node_down("n3")

    assert result.rehomed == ()
    late = cluster.nodes["n1"].late
    await eventually(lambda: late, 5, "handed to the session's owner now")
    assert [(cid, [d.message.payload for d in m.queued]) for cid, m in late] == [
        ("q", [b"waited for n3"])
    ]
    await eventually(lambda: answer.hits, 5, "answered")
