"""Route reference counts under concurrency (``node/routes.py``), with a scripted cluster."""

from __future__ import annotations

import asyncio

import pytest

from raftmq.node.background import Background
from raftmq.node.hooks import ClusterUnavailable, RouteKey
from raftmq.node.routes import LocalRoutes

KEY = RouteKey(None, "x/#")


class ScriptedCluster:
    """Route commits that take as long as the test says; it records what was submitted."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []
        self.committed: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def _commit(self, what: str, topic_filter: str) -> None:
        self.submitted.append((what, topic_filter))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ClusterUnavailable("no quorum")
        self.committed.append((what, topic_filter))

    async def add_route(self, share_group: str | None, topic_filter: str) -> None:
        await self._commit("add", topic_filter)

    async def remove_route(self, share_group: str | None, topic_filter: str) -> None:
        await self._commit("remove", topic_filter)


def routes_on(cluster: ScriptedCluster) -> LocalRoutes:
    return LocalRoutes(cluster, Background("route changes"))  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_two_first_subscribers_at_once_count_as_two() -> None:
    """The fault-free loss of issue 11: the first to leave took the other's route."""
    cluster = ScriptedCluster()
    routes = routes_on(cluster)
    cluster.gate.clear()
    first = asyncio.ensure_future(routes.acquire(KEY))
    second = asyncio.ensure_future(routes.acquire(KEY))
    await settle()
    assert not first.done() and not second.done()  # both wait for the one commit
    cluster.gate.set()
    await asyncio.gather(first, second)
    assert cluster.committed == [("add", "x/#")]
    routes.release(KEY)
    await settle()
    assert routes.count(KEY) == 1
    assert cluster.committed == [("add", "x/#")]  # the route stays for the other
    routes.release(KEY)
    await settle()
    assert cluster.committed == [("add", "x/#"), ("remove", "x/#")]


async def test_a_removal_in_flight_commits_before_the_next_addition() -> None:
    cluster = ScriptedCluster()
    routes = routes_on(cluster)
    await routes.acquire(KEY)
    cluster.gate.clear()
    routes.release(KEY)  # the removal waits for its commit
    again = asyncio.ensure_future(routes.acquire(KEY))
    await settle()
    assert cluster.submitted == [("add", "x/#"), ("remove", "x/#")]  # the add waits its turn
    cluster.gate.set()
    await again
    assert cluster.committed == [("add", "x/#"), ("remove", "x/#"), ("add", "x/#")]
    assert routes.count(KEY) == 1


async def test_a_failed_addition_gives_the_count_back() -> None:
    cluster = ScriptedCluster()
    routes = routes_on(cluster)
    cluster.fail_next = True
    with pytest.raises(ClusterUnavailable):
        await routes.acquire(KEY)
    await settle()
    assert routes.count(KEY) == 0
    # A commit that timed out may still land: the route is withdrawn all the same.
    assert cluster.submitted == [("add", "x/#"), ("remove", "x/#")]
    await routes.acquire(KEY)
    assert routes.count(KEY) == 1


async def test_a_release_without_an_acquire_is_a_bug_that_raises() -> None:
    routes = routes_on(ScriptedCluster())
    with pytest.raises(KeyError):
        routes.release(KEY)
