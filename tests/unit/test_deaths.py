"""DeathDeclarer by script: SWIM views and times in, NodeDown declarations out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from raftmq.cluster.replication.commands import NodeDown, NodeUp, SetMembers
from raftmq.cluster.replication.deaths import DeathDeclarer, MemberHealth
from raftmq.cluster.replication.raft_types import RaftStatus
from raftmq.cluster.replication.state import ClusterState
from raftmq.node.hooks import ClusterUnavailable

WAIT = 7.5
"""The lease's takeover wait: a node last seen alive is declared only this long after."""


@dataclass
class Leader:
    leading: bool = True
    state: ClusterState = field(default_factory=ClusterState)
    raft_links: dict[str, bool] = field(default_factory=dict)

    def status(self) -> RaftStatus:
        return RaftStatus("n1", "leader", "n1", 1, 0, 0, True, self.raft_links)


class Declarations:
    """The commit of each declaration, applied to ``state`` unless ``failing``."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.made: list[tuple[str, float, int]] = []
        self.failing = False

    async def __call__(self, node_id: str, last_seen: float, incarnation: int) -> None:
        self.made.append((node_id, last_seen, incarnation))
        if self.failing:
            raise ClusterUnavailable("no majority")
        self.state.apply(NodeDown(node_id, last_seen, last_seen, incarnation))


def declarer(view: dict[str, MemberHealth]) -> tuple[DeathDeclarer, Leader, Declarations]:
    raft = Leader()
    raft.state.apply(SetMembers(("n1", "n2", "n3")))
    made = Declarations(raft.state)
    return DeathDeclarer(raft, lambda: view, WAIT, made), raft, made


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_dead_member_is_declared_once_its_lease_has_surely_run_out() -> None:
    view = {"n3": MemberHealth("dead", 4, last_alive=100.0), "n2": MemberHealth("alive", 1, 0)}
    deaths, _, made = declarer(view)
    deaths.check(now=107.0, wall=1_000.0)
    await settle()
    assert made.made == [], "its lease may still run"
    deaths.check(now=107.5, wall=1_000.0)
    await settle()
    assert made.made == [("n3", 992.5, 4)], "last seen 7.5 s before the wall-clock now"
    deaths.check(now=120.0, wall=1_012.5)
    await settle()
    assert len(made.made) == 1 and deaths.declared == 1, "already down: not again"


async def test_only_dead_raft_members_are_declared_and_a_failed_commit_is_retried() -> None:
    view = {
        "n2": MemberHealth("suspect", 2, last_alive=0.0),
        "n3": MemberHealth("left", 5, last_alive=0.0),
        "n9": MemberHealth("dead", 1, last_alive=0.0),
        "n1": MemberHealth("dead", 1, last_alive=0.0),
    }
    deaths, _, made = declarer(view)
    made.failing = True
    deaths.check(now=100.0, wall=100.0)
    await settle()
    assert made.made == [("n1", 0.0, 1)], "suspect, left and non-members are not declared"
    assert deaths.declared == 0
    deaths.check(now=100.25, wall=100.25)
    await settle()
    assert len(made.made) == 2, "tried again on the next look"


async def test_a_follower_declares_nothing() -> None:
    deaths, raft, made = declarer({"n3": MemberHealth("dead", 1, last_alive=0.0)})
    raft.leading = False
    task = asyncio.ensure_future(deaths.run())
    await asyncio.sleep(0.6)
    assert made.made == []
    raft.leading = True
    await asyncio.sleep(0.6)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [node for node, _, _ in made.made] == ["n3"]


async def test_a_node_raft_hears_or_that_came_back_is_not_declared_again() -> None:
    """Found by the fault campaign: right after a partition healed, SWIM still held a
    node dead that Raft already heard (and that held its lease); and once it rejoined,
    the leader declared it again at the same incarnation, four times a second."""
    view = {"n3": MemberHealth("dead", 2, last_alive=0.0)}
    deaths, raft, made = declarer(view)
    raft.raft_links = {"n3": True, "n2": True}
    deaths.check(now=100.0, wall=100.0)
    await settle()
    assert made.made == [], "Raft hears it"
    raft.raft_links = {"n3": False, "n2": True}
    deaths.check(now=100.0, wall=100.0)
    await settle()
    assert made.made == [("n3", 0.0, 2)]
    raft.state.apply(NodeUp("n3"))  # it rejoined; SWIM has not seen it back yet
    deaths.check(now=101.0, wall=101.0)
    await settle()
    assert len(made.made) == 1, "not again at incarnation 2"
    view["n3"] = MemberHealth("dead", 3, last_alive=90.0)
    deaths.check(now=102.0, wall=102.0)
    await settle()
    assert len(made.made) == 2, "a later death is declared"
