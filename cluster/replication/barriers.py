"""Route barriers: waiting until every live peer routes by what this node has applied.

A route committed through Raft reaches each peer's state one apply later, and
until then that peer forwards by its old routes. A barrier closes the gap: it
asks each peer, over its forwarding stream, to answer once it has applied as
many commands as this node has (``ClusterState.applied``, the same count on
every replica). The answer travels on the peer's own stream to this node,
behind everything the peer forwarded before it, so when it arrives:

- the peer routes by the new state (a SUBACK after it means a publish made
  anywhere afterwards reaches the subscriber: ``RaftCluster.add_route``);
- everything the peer sent here by the old routes has arrived (a session that
  moves away is let go only then: ``releases.py``).

A peer that does not answer within the timeout is passed over, counted and
logged: a partitioned or dead peer must not hold a SUBACK forever, and the
lease (``lease.py``) bounds what such a peer may still do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Protocol

from raftmq.node.background import Background

from .raft import RaftNode

log = logging.getLogger("raftmq.cluster")

BARRIER_TIMEOUT = 1.0
"""How long a barrier waits for a peer's answer (key ``route_barrier_timeout``)."""
ANSWER_TIMEOUT = 10.0
"""How long a peer that lags keeps a barrier it was asked for before dropping it."""
LOG_INTERVAL = 30.0
"""At most one warning per silent peer in this many seconds."""


class BarrierLinks(Protocol):
    """The forwarding streams barriers travel on (``forwarding.transport.Forwarder``)."""

    def barrier(self, node_id: str, token: int, applied: int) -> None: ...

    def reply_barrier(self, node_id: str, token: int) -> None: ...


class RouteBarriers:
    """The barriers this node asks for, and its answers to its peers' barriers."""

    def __init__(
        self, raft: RaftNode, links: BarrierLinks, timeout: float = BARRIER_TIMEOUT
    ) -> None:
        self.raft = raft
        self.links = links
        self.timeout = timeout
        self.timeouts = 0
        """Peers that did not answer a barrier in time (each one passed over)."""
        self._next_token = 0
        self._waiting: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._answers = Background()
        self._warned: dict[str, float] = {}

    async def everywhere(self, nodes: Collection[str], applied: int | None = None) -> list[str]:
        """Return once each of ``nodes`` has applied ``applied`` commands (default: as
        many as this node has) and said so behind what it forwarded here, or after
        the timeout; the result is the nodes that did not answer in time."""
        if not nodes:
            return []
        if applied is None:
            applied = self.raft.state.applied
        loop = asyncio.get_running_loop()
        self._next_token += 1
        token = self._next_token
        futures: dict[str, asyncio.Future[None]] = {}
        for node_id in nodes:
            futures[node_id] = self._waiting[(node_id, token)] = loop.create_future()
            self.links.barrier(node_id, token, applied)
        try:
            await asyncio.wait(futures.values(), timeout=self.timeout)
        finally:
            for node_id in nodes:
                self._waiting.pop((node_id, token), None)
        silent = sorted(node_id for node_id, future in futures.items() if not future.done())
        if silent:
            self.timeouts += len(silent)
            self._warn(silent)
        return silent

    def replied(self, origin: str, token: int) -> None:
        """``origin`` answered the barrier ``token`` (``PeerInbox.barrier_reply_from_peer``)."""
        future = self._waiting.get((origin, token))
        if future is not None and not future.done():
            future.set_result(None)

    def asked(self, origin: str, token: int, applied: int) -> None:
        """``origin`` asks for an answer once ``applied`` commands are applied here."""
        if self.raft.state.applied >= applied:
            self.links.reply_barrier(origin, token)
        else:
            self._answers.run(self._answer_later(origin, token, applied))

    async def _answer_later(self, origin: str, token: int, applied: int) -> None:
        if await self.raft.wait_applied(applied, ANSWER_TIMEOUT):
            self.links.reply_barrier(origin, token)

    async def stop(self) -> None:
        await self._answers.cancel()

    def _warn(self, silent: list[str]) -> None:
        now = time.monotonic()
        due = [n for n in silent if now - self._warned.get(n, -LOG_INTERVAL) >= LOG_INTERVAL]
        if not due:
            return
        for node_id in due:
            self._warned[node_id] = now
        log.warning(
            "route barrier: no answer from %s within %.1f s; going on without %s "
            "(%d barriers timed out so far)",
            ", ".join(due),
            self.timeout,
            "it" if len(due) == 1 else "them",
            self.timeouts,
        )


FENCE_WAIT = 1.0
"""How long a peer's frame waits for this node to apply what the sender had applied."""
FENCE_RESPITE = 5.0
"""After a fence wait timed out (this node lags: cut off from the leader, say), frames
are handled at once for this long, so that a lagging node is not slowed frame by frame."""


class StateFence:
    """The receiving end of ``Frame.applied``: a peer's frame is handled once this node
    has applied as many commands as the sender had when it sent it.

    The barrier above makes the asker wait for its peers; this makes a receiver
    wait for its sender. It matters where the sender acts on state it has
    just applied: a dead node's session re-homed here, whose messages (late
    hand-overs of what waited for the dead node, and new publishes by the new
    routes) must find the session adopted here, not yet missing.
    """

    def __init__(self, raft: RaftNode) -> None:
        self.raft = raft
        self.timeouts = 0
        """Frames handled before this node had caught up with their sender."""
        self._respite_until = 0.0

    async def catch_up(self, applied: int) -> None:
        if time.monotonic() < self._respite_until:
            return
        if not await self.raft.wait_applied(applied, FENCE_WAIT):
            self.timeouts += 1
            self._respite_until = time.monotonic() + FENCE_RESPITE
