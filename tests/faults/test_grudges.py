"""The partition shapes, as Jepsen defines them, without a lab."""

from __future__ import annotations

import random

import grudges
import pytest

THREE = ["n1", "n2", "n3"]
FIVE = ["n1", "n2", "n3", "n4", "n5"]


def _sees(grudge: grudges.Grudge, node: str, nodes: list[str]) -> set[str]:
    """The nodes whose traffic ``node`` accepts, itself included."""
    return set(nodes) - grudge.get(node, set())


def _two_way(grudge: grudges.Grudge) -> bool:
    return all(node in grudge[source] for node, sources in grudge.items() for source in sources)


def test_isolate_cuts_one_node_from_the_rest() -> None:
    assert grudges.isolate("n2", THREE) == {"n2": {"n1", "n3"}, "n1": {"n2"}, "n3": {"n2"}}
    with pytest.raises(ValueError, match="'n9'"):
        grudges.isolate("n9", THREE)


@pytest.mark.parametrize("nodes", [THREE, FIVE])
def test_halves_are_a_minority_and_a_majority(nodes: list[str]) -> None:
    grudge = grudges.halves(nodes, random.Random(7))
    assert _two_way(grudge)
    sides = {frozenset(_sees(grudge, node, nodes)) for node in nodes}
    assert sorted(len(side) for side in sides) == [len(nodes) // 2, len(nodes) - len(nodes) // 2]


@pytest.mark.parametrize("nodes", [THREE, FIVE])
def test_a_bridge_node_sees_both_halves(nodes: list[str]) -> None:
    grudge = grudges.bridge(nodes, random.Random(3))
    assert _two_way(grudge)
    (middle,) = [node for node in nodes if not grudge[node]]
    assert all(middle not in sources for sources in grudge.values())
    majority = len(nodes) // 2 + 1
    assert all(len(_sees(grudge, node, nodes)) == majority for node in nodes if node != middle)


def test_a_majorities_ring_gives_each_node_its_own_majority() -> None:
    grudge = grudges.majorities_ring(FIVE, random.Random(11))
    views = [frozenset(_sees(grudge, node, FIVE)) for node in FIVE]
    assert all(len(view) == 3 for view in views)
    assert len(set(views)) == 5, "no two nodes see the same majority"
    assert _two_way(grudge)
    with pytest.raises(ValueError, match="at least 5 nodes"):
        grudges.majorities_ring(THREE, random.Random(11))


def test_the_same_seed_gives_the_same_partitions() -> None:
    for shape in (grudges.halves, grudges.bridge, grudges.majorities_ring):
        assert shape(FIVE, random.Random(42)) == shape(FIVE, random.Random(42))
    drawn = {str(sorted(grudges.halves(FIVE, random.Random(seed)).items())) for seed in range(20)}
    assert len(drawn) > 1, "the halves must depend on the seed"
