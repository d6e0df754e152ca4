"""The lease bookkeeping (``cluster/replication/lease.py``), fed Raft statuses and times."""

from __future__ import annotations

from raftmq.cluster.replication.lease import QuorumLease
from raftmq.cluster.replication.raft import RaftStatus


def status(has_quorum: bool) -> RaftStatus:
    return RaftStatus("n1", "follower", None, 1, 0, 0, has_quorum, {})


def polled(lease: QuorumLease, has_quorum: bool, start: float, end: float) -> list[bool]:
    """Polls every 0.25 s from ``start`` to ``end``: the changes they reported."""
    changes = []
    now = start
    while now <= end + 1e-9:
        change = lease.observe(status(has_quorum), now)
        if change is not None:
            changes.append(change)
        now += 0.25
    return changes


def test_a_node_without_a_majority_for_the_lease_stops_serving_then_resumes() -> None:
    lease = QuorumLease(3.0, 1.0, 3.5, now=0.0)
    assert polled(lease, True, 0.25, 1.0) == []
    assert polled(lease, False, 1.25, 4.0) == []  # 3 s since the majority at 1.0
    assert lease.serving
    assert polled(lease, False, 4.25, 6.0) == [True]
    assert not lease.serving
    assert polled(lease, True, 6.25, 7.0) == [False]
    assert lease.serving


def test_a_starting_node_gets_one_lease_to_find_its_majority() -> None:
    lease = QuorumLease(3.0, 1.0, 3.5, now=100.0)
    assert polled(lease, False, 100.25, 103.0) == []
    assert polled(lease, False, 103.25, 103.5) == [True]


def test_a_node_stopped_for_longer_than_its_lease_stops_serving_on_waking() -> None:
    """After a SIGSTOP it cannot know whether its clients were given to others meanwhile."""
    lease = QuorumLease(3.0, 1.0, 3.5, now=0.0)
    assert polled(lease, True, 0.25, 1.0) == []
    assert lease.observe(status(True), 9.0) is True  # a majority is connected, all the same
    assert lease.observe(status(True), 9.25) is False


def test_takeover_wait_covers_detection_lease_and_margin() -> None:
    assert QuorumLease(3.0, 1.0, 3.5, now=0.0).takeover_wait == 7.5
