"""RaftCluster: ClusterHooks over three real RaftNodes on loopback.

The brokers are stood in for by recording NodeEvents, and the forwarder by
an in-process one that hands messages to the target node's events; what is
real is Raft, the state machine and the reactions each node has to what the
others commit (the harness: replicated_kit.py; a node's death: test_node_down_cluster.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from raft_trio import FAST, IDS, eventually
from replicated_kit import Cluster, started
from replicated_kit import cluster as cluster  # the fixture

from raftmq.cluster.forwarding.frames import Handover
from raftmq.cluster.replication.commands import (
    ClaimClient,
    ReleaseClient,
    RetainedRecord,
    SetRetained,
    WillRecord,
)
from raftmq.node.hooks import (
    Claim,
    ClusterUnavailable,
    RouteKey,
    SessionMessages,
    SessionTransfer,
)
from raftmq.node.message import Message
from raftmq.node.packets import Will
from raftmq.node.session import Delivery, Outgoing, Subscription

pytestmark = pytest.mark.timeout(60)


async def test_a_claim_elsewhere_kicks_the_client_here(cluster: Cluster) -> None:
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    first = await n1.claim_client("c1")
    assert first.previous_owner is None
    second = await n2.claim_client("c1")
    assert second == Claim(second.epoch, "n1", first.epoch) and second.epoch > first.epoch
    told = ("c1", second.epoch, False)
    await eventually(lambda: told in cluster.nodes["n1"].surrendered, 5, "n1 gave it up")
    await eventually(lambda: told in cluster.nodes["n3"].surrendered, 5, "n3 told")
    assert told not in cluster.nodes["n2"].surrendered, "a claim never takes from its own node"
    assert ("c1", second.epoch) in cluster.nodes["n1"].kicks, "kicked ahead of its Raft apply"
    assert not cluster.forwarder.handovers, "no session to hand over"
    await n2.release_client("c1", second.epoch)
    assert n2.state.owners.get("c1") is None


async def test_a_will_is_registered_only_by_the_current_owner(cluster: Cluster) -> None:
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    await n1.claim_client("c1")
    await n1.register_will("c1", Will("w/c1", b"from n1", 1))
    assert n1.state.wills["c1"] == WillRecord("w/c1", b"from n1", 1, False, {})
    await n2.claim_client("c1")
    await eventually(lambda: "c1" not in n1._claims, 5, "n1 learns it lost c1")
    await n1.register_will("c1", Will("w/c1", b"stale", 1))
    await n2.register_will("c1", Will("w/c1", b"from n2", 0))
    await cluster.trio.converged()
    assert n1.state.wills["c1"].payload == b"from n2"


async def test_a_persistent_session_follows_its_client(cluster: Cluster) -> None:
    n1, n3 = cluster.hooks["n1"], cluster.hooks["n3"]
    claim = await n1.claim_client("p1", clean_start=False, expiry_interval=3600)
    plain = Subscription("a/#", 1)
    await n1.save_subscriptions("p1", claim.epoch, {"a/#": plain})
    shared = Subscription("b", 2, identifier=4, share_group="g")
    await n1.save_subscriptions("p1", claim.epoch, {"$share/g/b": shared})
    queued = Delivery(Message.create("a/x", b"missed", 1, False), 1, False)
    in_flight = Outgoing(Delivery(Message.create("a/y", b"unacked", 2, False), 2, False))
    cluster.nodes["n1"].sessions["p1"] = SessionMessages([queued], {7: in_flight}, {3})

    resumed = await n3.claim_client("p1", clean_start=False, expiry_interval=60)
    assert resumed.previous_owner == "n1"
    transfer = n3.take_session("p1", resumed)
    # As the node's SessionMigration.take does: route the session here, then wait. n1
    # lets go only once it sees these routes (and every peer answered a barrier).
    await n3.add_route(None, "a/#")
    await n3.add_route("g", "b")
    started = time.monotonic()
    held = await n3.handed_over("p1", resumed)
    assert time.monotonic() - started < 1.5, "let go once routed, not after ROUTE_WAIT"

    assert transfer == SessionTransfer(3600, {"a/#": plain, "$share/g/b": shared})
    assert held is not None
    assert [d.message.payload for d in held.queued] == [b"missed"]
    assert {pid: e.delivery.message.payload for pid, e in held.outgoing.items()} == {7: b"unacked"}
    assert held.incoming_qos2 == {3}
    assert ("p1", resumed.epoch, True) in cluster.nodes["n1"].surrendered
    await n1.save_subscriptions("p1", claim.epoch, {"late": plain})
    assert "late" not in {s.topic_filter for s in n3.state.sessions["p1"].subscriptions}, "fenced"
    await n3.forget_subscriptions("p1", resumed.epoch, ["a/#"])
    assert [s.topic_filter for s in n3.state.sessions["p1"].subscriptions] == ["$share/g/b"]


async def test_a_resumed_session_whose_owner_is_gone_keeps_its_subscriptions(
    cluster: Cluster,
) -> None:
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    claim = await n1.claim_client("p2", clean_start=False, expiry_interval=600)
    await n1.save_subscriptions("p2", claim.epoch, {"s/#": Subscription("s/#", 1)})
    cluster.forwarder.clusters.pop("n2")  # n1's hand-over never reaches n2
    cluster.forwarder.hand_over = lambda node_id, handover: asyncio.sleep(0)  # type: ignore[method-assign]
    n2.handovers.timeout = 0.2
    resumed = await n2.claim_client("p2", clean_start=False, expiry_interval=600)
    transfer = n2.take_session("p2", resumed)
    assert transfer is not None and list(transfer.subscriptions) == ["s/#"]
    assert await n2.handed_over("p2", resumed) is None


async def test_a_clean_start_resumes_nothing(cluster: Cluster) -> None:
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    claim = await n1.claim_client("p3", clean_start=False, expiry_interval=600)
    await n1.save_subscriptions("p3", claim.epoch, {"s/#": Subscription("s/#", 1)})
    fresh = await n2.claim_client("p3", clean_start=True, expiry_interval=600)
    assert n2.take_session("p3", fresh) is None
    assert await n2.handed_over("p3", fresh) is None
    await eventually(
        lambda: ("p3", fresh.epoch, False) in cluster.nodes["n1"].surrendered, 5, "n1 ends it"
    )
    assert not cluster.forwarder.handovers


async def test_retained_messages_set_anywhere_reach_every_node(cluster: Cluster) -> None:
    n2 = cluster.hooks["n2"]
    message = Message.create("r/t", b"22.5", 1, True, {"message_expiry_interval": 100})
    await n2.set_retained("r/t", message)
    nodes = cluster.nodes.values()
    await eventually(lambda: all("r/t" in n.retained for n in nodes), 5, "retained everywhere")
    for node in nodes:
        copy = node.retained["r/t"]
        assert (copy.payload, copy.qos, copy.retain) == (b"22.5", 1, True)
        assert copy.expires_at is not None
        assert abs(copy.expires_at - (time.monotonic() + 100)) < 5
    await n2.set_retained("r/t", None)
    await eventually(lambda: all("r/t" not in n.retained for n in nodes), 5, "cleared everywhere")

    expired = RetainedRecord(b"old", 0, {}, expires_at=time.time() - 1)
    await n2.raft.submit(SetRetained("r/old", expired))
    await eventually(
        lambda: all(("r/old", None) in n.retained_calls for n in nodes), 5, "expired: cleared"
    )


async def test_forward_targets_only_other_nodes_with_matching_routes(cluster: Cluster) -> None:
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    forwarder = cluster.forwarder
    message = Message.create("s/x", b"m", 1, False)
    assert n1.forward(message) is None
    await n2.add_route(None, "s/+")
    await eventually(lambda: n1.forward(message) is not None, 5, "n1 sees n2's route")
    assert forwarder.sent[-1] == (("n2",), "s/x", {})
    assert cluster.nodes["n2"].forwarded[-1] is message
    assert n1.forward(Message.create("other", b"m", 0, False)) is None
    assert n2.forward(message) is None, "never to itself"
    await n1.add_route(None, "s/#")
    await n2.remove_route(None, "s/+")
    await eventually(lambda: n1.forward(message) is None, 5, "route gone, cache dropped")
    await eventually(lambda: n2.forward(message) is not None, 5, "n2 sees n1's route")
    assert forwarder.sent[-1] == (("n1",), "s/x", {})


async def test_share_groups_get_one_node_each_preferring_a_local_member(cluster: Cluster) -> None:
    n1, n2, n3 = (cluster.hooks[n] for n in IDS)
    forwarder = cluster.forwarder
    message = Message.create("j/1", b"m", 1, False)
    group = ("g", "j/#")
    await n2.add_route("g", "j/#")
    await n3.add_route("g", "j/#")
    await cluster.trio.converged()
    sends = []
    for _ in range(4):
        assert n1.forward(message) is not None
        targets, _, groups = forwarder.sent[-1]
        sends.append((targets, groups))
    assert sends == [
        (("n2",), {"n2": (group,)}),
        (("n3",), {"n3": (group,)}),
        (("n2",), {"n2": (group,)}),
        (("n3",), {"n3": (group,)}),
    ], "round robin: one node serves the group for each message"
    assert n2.forward(message) is None, "n2 has a member of g itself"

    await n3.add_route(None, "j/+")
    await cluster.trio.converged()
    n1.forward(message)
    n1.forward(message)
    assert forwarder.sent[-2:] == [
        (("n3", "n2"), "j/1", {"n2": (group,)}),
        (("n3",), "j/1", {"n3": (group,)}),
    ], "n3 always gets it for its plain subscriber, and serves g only when picked"
    n2.forward(message)
    assert forwarder.sent[-1] == (("n3",), "j/1", {}), "g is served on n2 itself"


async def test_a_claim_that_commits_after_connect_gave_up_is_released(tmp_path: Path) -> None:
    cluster = await started(tmp_path, dataclasses.replace(FAST, commit_timeout=1.0))
    try:
        leader = cluster.hooks[(await cluster.trio.leader()).node_id]
        applied: list[object] = []
        leader.raft.add_listener(lambda a: applied.append(a.command))
        others = [n for n in IDS if n != leader.node_id]
        await cluster.stop(*others)
        with pytest.raises(ClusterUnavailable):
            await leader.claim_client("late")
        await cluster.add(others[0]).start()
        await eventually(
            lambda: any(isinstance(c, ReleaseClient) and c.client_id == "late" for c in applied),
            20,
            "the orphaned claim committed, then was released",
        )
        claim = next(c for c in applied if isinstance(c, ClaimClient) and c.client_id == "late")
        assert claim.node_id == leader.node_id
        assert leader.state.owners.get("late") is None
        assert "late" not in leader._claims
    finally:
        await cluster.stop()


async def test_status_counts_what_the_state_holds(cluster: Cluster) -> None:
    n1 = cluster.hooks["n1"]
    await n1.claim_client("c1")
    await n1.add_route(None, "a/b")
    await n1.set_retained("a/b", Message.create("a/b", b"v", 0, True))
    status = n1.status()
    assert status.members == IDS
    assert (status.clients, status.routes, status.retained) == (1, 1, 1)
    assert status.raft.leader in IDS
    assert status.raft.node_id == "n1"


async def test_a_restarted_node_settles_replayed_claims_by_the_state_of_now(
    cluster: Cluster,
) -> None:
    """Claims a restarted node replays are history: it acts once, after catching up, on who
    owns each client now, not on every claim it replays."""
    leader = (await cluster.trio.leader()).node_id
    restarted = next(n for n in IDS if n != leader)  # stopping the leader would stall claims
    a, b = (cluster.hooks[n] for n in IDS if n != restarted)
    await a.claim_client("moved", clean_start=False, expiry_interval=600)
    await b.claim_client("moved", clean_start=False, expiry_interval=600)
    await b.claim_client("stayed-on-b", clean_start=False, expiry_interval=600)
    await cluster.stop(restarted)
    await a.claim_client("moved", clean_start=False, expiry_interval=600)
    back = cluster.add(restarted)
    kept = Delivery(Message.create("moved/t", b"kept on disk", 1, False), 1, False)
    cluster.nodes[restarted].sessions["moved"] = SessionMessages([kept])  # restored from disk
    await back.start()
    await back.raft.wait_ready(10)
    node = cluster.nodes[restarted]
    await eventually(lambda: node.surrendered, 10, "the restarted node settled after catching up")
    await cluster.trio.converged()
    surrendered = node.surrendered
    assert sorted(cid for cid, _, _ in surrendered) == ["moved", "stayed-on-b"], "once each"
    assert all(resumed for _, _, resumed in surrendered), "what it held goes to the owner"
    owners = {cid: a.state.owners[cid] for cid in ("moved", "stayed-on-b")}
    assert {cid: epoch for cid, epoch, _ in surrendered} == {
        cid: owner.epoch for cid, owner in owners.items()
    }, "at the epochs of the claims that own them now"
    handed = [(to, h.client_id, h.epoch, h.late) for to, h in cluster.forwarder.handovers]
    moved = owners["moved"]
    assert handed == [(moved.node_id, "moved", moved.epoch, True)], "what it held, handed back"
    late = cluster.nodes[moved.node_id].late
    await eventually(lambda: late, 5, "added to the session as late")
    assert [(cid, [d.message.payload for d in m.queued]) for cid, m in late] == [
        ("moved", [b"kept on disk"])
    ]


async def test_a_late_hand_over_waits_for_the_connect_that_takes_its_session(
    cluster: Cluster,
) -> None:
    """Found by the fault campaign: a late hand-over reached the claimer while its CONNECT
    still waited for the old holder's lease, before it had taken the session, and was
    dropped ("no node holds the session now")."""
    n1, n3 = cluster.hooks["n1"], cluster.hooks["n3"]
    await n3.claim_client("pk", clean_start=False, expiry_interval=600)
    claim = await n1.claim_client("pk", clean_start=False, expiry_interval=600)
    node = cluster.nodes["n1"]
    node.not_yet_taken.add("pk")
    queued = Delivery(Message.create("pk/t", b"came early", 1, False), 1, False)
    n1.handover_from_peer("n2", Handover("pk", claim.epoch, SessionMessages([queued]), late=True))
    await asyncio.sleep(0.05)
    assert node.late == [] and n1.handovers.dropped == 0, "kept, not dropped"
    node.not_yet_taken.clear()  # the CONNECT takes the session, then waits for n3's
    n1.handovers.timeout = 0.2
    await n1.handed_over("pk", claim)
    await eventually(lambda: node.late, 5, "added once the CONNECT had the session")
    assert [(cid, [d.message.payload for d in m.queued]) for cid, m in node.late] == [
        ("pk", [b"came early"])
    ]


async def test_add_route_returns_once_every_live_peer_routes_by_it(cluster: Cluster) -> None:
    """The route barrier behind "SUBACK means the route is live": when add_route returns,
    each running peer's state already routes to the new subscriber."""
    n1 = cluster.hooks["n1"]
    for i in range(20):
        await n1.add_route(None, f"live/{i}")
        for peer in ("n2", "n3"):
            assert "n1" in cluster.hooks[peer].state.routes[RouteKey(None, f"live/{i}")], peer
    assert n1.barriers.timeouts == 0


async def test_a_silent_peer_is_passed_over_after_the_barrier_timeout(cluster: Cluster) -> None:
    leader = (await cluster.trio.leader()).node_id
    silent = next(n for n in IDS if n != leader)
    asker = cluster.hooks[next(n for n in IDS if n not in (leader, silent))]
    await cluster.stop(silent)
    started = time.monotonic()
    await asker.add_route(None, "with/one/peer/down")
    waited = time.monotonic() - started
    assert asker.barriers.timeout <= waited < asker.barriers.timeout + 3
    assert asker.barriers.timeouts == 1


async def test_a_hand_over_for_a_claim_that_moved_on_goes_to_the_newest_owner(
    cluster: Cluster,
) -> None:
    """A hand-over that reaches a node whose claim of the client was superseded meanwhile
    is passed on to the node that owns it now, with that node's epoch, never dropped."""
    n1, n2, n3 = (cluster.hooks[n] for n in IDS)
    await n1.claim_client("m", clean_start=False, expiry_interval=600)
    second = await n2.claim_client("m", clean_start=False, expiry_interval=600)
    third = await n3.claim_client("m", clean_start=False, expiry_interval=600)
    await eventually(lambda: n2.state.owners.get("m") == ("n3", third.epoch), 5, "n2 applied")
    n2.handovers.timeout = 0.2
    assert await n2.handed_over("m", second) is None  # n2's CONNECT stopped waiting
    queued = Delivery(Message.create("m/t", b"late from n1", 1, False), 1, False)
    n2.handover_from_peer("n1", Handover("m", second.epoch, SessionMessages([queued])))
    late = cluster.nodes["n3"].late
    await eventually(lambda: late, 5, "passed on to n3")
    assert [(cid, [d.message.payload for d in m.queued]) for cid, m in late] == [
        ("m", [b"late from n1"])
    ]


async def test_a_late_hand_over_never_stands_in_for_the_one_a_connect_waits_for(
    cluster: Cluster,
) -> None:
    """Found by a flaky suite test under load: a node that restarted (or caught up late)
    handed back an empty session for a claim whose CONNECT was waiting for the previous
    owner's hand-over; the CONNECT took the empty one, and the previous owner's, with
    a message in flight, came late and was delivered as new (DUP 0)."""
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    await n1.claim_client("w", clean_start=False, expiry_interval=600)
    claim = await n2.claim_client("w", clean_start=False, expiry_interval=600)
    waiting = asyncio.ensure_future(n2.handed_over("w", claim))
    n2.handover_from_peer("n3", Handover("w", claim.epoch, late=True))
    sent = Delivery(Message.create("w/t", b"in flight", 1, False), 1, False)
    in_flight = SessionMessages(outgoing={1: Outgoing(sent)})
    n2.handover_from_peer("n1", Handover("w", claim.epoch, in_flight))
    held = await waiting
    assert held is not None and list(held.outgoing) == [1], "the previous owner's, resent"
    assert [cid for cid, _ in cluster.nodes["n2"].late] == ["w"], "the empty one was late"


async def test_a_late_hand_over_for_a_session_this_node_owns_now_joins_it_here(
    cluster: Cluster,
) -> None:
    """Found by a 20-minute campaign: a late hand-over reached the node that owned the
    client now, while that node's CONNECT was still settling its claim, and was sent on
    to itself (UnknownPeer). It goes to the session here."""
    n1, n2 = cluster.hooks["n1"], cluster.hooks["n2"]
    first = await n1.claim_client("own", clean_start=False, expiry_interval=600)
    await n2.claim_client("own", clean_start=False, expiry_interval=600)
    del n2._claims["own"]  # as while n2's CONNECT has not registered its claim yet
    queued = Delivery(Message.create("own/t", b"late", 1, False), 1, False)
    n2.handover_from_peer("n1", Handover("own", first.epoch, SessionMessages([queued])))
    late = cluster.nodes["n2"].late
    assert [(cid, [d.message.payload for d in m.queued]) for cid, m in late] == [("own", [b"late"])]
