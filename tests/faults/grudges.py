"""Jepsen's partition shapes as grudges: node -> the set of nodes it drops traffic from.

Pure functions of the node ids and a seeded ``random.Random``, so a schedule's
partitions are reproducible from its seed and testable without a lab. The shapes
follow Jepsen's ``jepsen.nemesis`` (``complete-grudge``, ``bisect``, ``bridge``,
``majorities-ring``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

Grudge = dict[str, set[str]]


def complete_grudge(components: Iterable[Iterable[str]]) -> Grudge:
    """Every node drops traffic from every node outside its own component."""
    parts = [set(component) for component in components]
    everyone = set().union(*parts)
    return {node: everyone - part for part in parts for node in part}


def isolate(node: str, nodes: Sequence[str]) -> Grudge:
    """``node`` alone on one side, the rest together on the other."""
    if node not in nodes:
        raise ValueError(f"cannot isolate {node!r}: not one of {list(nodes)}")
    return complete_grudge([{node}, set(nodes) - {node}])


def halves(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Two random halves, the smaller first (1 | 2 of 3, 2 | 3 of 5): a minority and a
    majority."""
    shuffled = rng.sample(list(nodes), len(nodes))
    cut = len(shuffled) // 2
    return complete_grudge([shuffled[:cut], shuffled[cut:]])


def bridge(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Two halves cut from each other, and one middle node that both halves see.

    Each half plus the bridge is a majority, so two majorities overlap in one node:
    a leader on either side can commit through it.
    """
    if len(nodes) < 3:
        raise ValueError(f"a bridge needs at least 3 nodes, got {list(nodes)}")
    shuffled = rng.sample(list(nodes), len(nodes))
    middle = len(shuffled) // 2
    left, right = set(shuffled[:middle]), set(shuffled[middle + 1 :])
    grudge: Grudge = {node: set(right) for node in left}
    grudge.update({node: set(left) for node in right})
    grudge[shuffled[middle]] = set()
    return grudge


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Grudge:
    """Each node sees a majority (itself and its neighbours on a random ring), and no two
    nodes see the same majority; Jepsen's "perfect" ring, meant for 5 nodes.

    Node ``i`` of the ring sees the majority-sized window of the ring centred on it and
    drops traffic from everyone else.
    """
    if len(nodes) < 5:
        raise ValueError(
            f"a majorities ring needs at least 5 nodes (on fewer every majority overlaps "
            f"every other completely), got {list(nodes)}"
        )
    ring = rng.sample(list(nodes), len(nodes))
    size = len(ring)
    majority = size // 2 + 1
    before = majority // 2
    grudge: Grudge = {}
    for i, node in enumerate(ring):
        seen = {ring[(i + offset) % size] for offset in range(-before, majority - before)}
        grudge[node] = set(ring) - seen
    return grudge
