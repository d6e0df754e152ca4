"""Forwarding plans: which other nodes a topic goes to, cached per topic.

This is the PUBLISH hot path's part of the cluster (``RaftCluster.forward``):
the set of nodes a topic goes to is cached per topic and the cache is dropped
whenever routes change (rare next to publishes). A topic no other node wants
costs one dict lookup and returns None. A share group with a member on this
node is served here; otherwise one node with members is picked per message,
round robin, and told to serve it, so each group gets each message once
cluster-wide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from raftmq.node.hooks import RouteKey
from raftmq.node.message import Message
from raftmq.node.round_robin import RoundRobin

from .state import ClusterState

DEFAULT_PLAN_CACHE_SIZE = 65_536


class Sender(Protocol):
    def send(
        self,
        node_ids: Collection[str],
        message: Message,
        shared_groups: Mapping[str, tuple[RouteKey, ...]] | None = None,
    ) -> Awaitable[None] | None: ...


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where one topic goes: nodes that always get it, and share groups to pick a node for."""

    targets: tuple[str, ...]
    """Other nodes with plain routes matching the topic."""
    groups: tuple[tuple[RouteKey, tuple[str, ...]], ...]
    """(group, candidate nodes) for each matching share group with no member on this node."""


NO_PLAN = _Plan((), ())


class ForwardingPlans:
    """Per-topic plans over the replicated routes, and the forwarding they drive."""

    def __init__(
        self,
        node_id: str,
        state: Callable[[], ClusterState],
        sender: Sender,
        cache_size: int = DEFAULT_PLAN_CACHE_SIZE,
    ) -> None:
        self.node_id = node_id
        self._state = state
        self._sender = sender
        self._plans: dict[str, _Plan] = {}
        self._cache_size = cache_size
        self._share_turns: RoundRobin[RouteKey] = RoundRobin()

    def clear(self) -> None:
        """Routes changed: every cached plan may be wrong."""
        self._plans.clear()

    def forward(self, message: Message) -> Awaitable[None] | None:
        """``ClusterHooks.forward``: to every other node whose routes match."""
        topic = message.topic
        plan = self._plans.get(topic)
        if plan is None:
            plan = self._plan(topic)
        if plan is NO_PLAN:
            return None
        if not plan.groups:
            return self._sender.send(plan.targets, message)
        targets, shared_groups = self._pick(plan)
        return self._sender.send(targets, message, shared_groups)

    def _plan(self, topic: str) -> _Plan:
        plain, shared = self._state().route_targets(topic)
        me = self.node_id
        groups = tuple(
            (RouteKey(group, topic_filter), nodes)
            for group, topic_filter, nodes in shared
            if me not in nodes  # else a local member takes it: the broker delivers to it
        )
        plan = _Plan(tuple(sorted(plain - {me})), groups)
        if not plan.targets and not plan.groups:
            plan = NO_PLAN
        if len(self._plans) >= self._cache_size:
            self._plans.clear()
        self._plans[topic] = plan
        return plan

    def _pick(self, plan: _Plan) -> tuple[list[str], dict[str, tuple[RouteKey, ...]]]:
        """One node per remote share group, round robin among the nodes with members."""
        targets = list(plan.targets)
        shared_groups: dict[str, tuple[RouteKey, ...]] = {}
        for key, nodes in plan.groups:
            node = nodes[self._share_turns.pick(key, len(nodes))]
            shared_groups[node] = (*shared_groups.get(node, ()), key)
            if node not in targets:
                targets.append(node)
        return targets, shared_groups
