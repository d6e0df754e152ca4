"""The old node's side of a session move: letting go only once nothing can fall between.

When another node claims a client whose persistent session is here, the
client is disconnected at once (``NodeEvents.surrender_session``), but the
session stays, offline, and keeps taking messages. It is let go
(``NodeEvents.release_session``) and its messages handed over only when:

1. this node has applied the claimer's routes for the session's
   subscriptions (the claimer adds them right after its claim), and
2. a route barrier (``barriers.py``) came back from every live peer: each
   now forwards to the claimer too, and everything it forwarded here by the
   old routes has arrived.

From then on every message for the session reaches the claimer directly, and
every earlier one is in the hand-over. The two overlap; the hand-over says up
to where (``SessionMessages.seen``: per origin node, the highest message
sequence received here) so that the claimer drops its own copies of those
(``node/handover_merge.py``).

A node restarting after a crash may still hold messages of sessions that
moved on meanwhile; it hands them back the same way, late
(``hand_back``), and the owner adds them to the session as it is then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from raftmq.node.hooks import NodeEvents, SessionMessages

from ..forwarding.frames import Handover
from .barriers import RouteBarriers
from .commands import SessionRecord
from .raft import RaftNode
from .state import route_key

log = logging.getLogger("raftmq.cluster")

ROUTE_WAIT = 2.0
"""How long the old node waits to see the claimer's routes, beyond the longest a claimer
may wait for the old node's lease (``SessionReleases.route_wait``), before letting go
anyway: the claimer lost its quorum, or its CONNECT failed."""


class HandoverLinks(Protocol):
    def hand_over(self, node_id: str, handover: Handover) -> Awaitable[None]: ...


class SessionReleases:
    """Sessions this node lets go of, each once it is safe (see the module docstring)."""

    def __init__(
        self,
        raft: RaftNode,
        barriers: RouteBarriers,
        links: HandoverLinks,
        live_peers: Callable[[], Collection[str]],
        route_wait: float,
    ) -> None:
        """``route_wait``: how long to wait for the claimer's routes (its CONNECT may
        itself wait up to the lease's takeover bound before it routes anything)."""
        self.route_wait = route_wait
        self.raft = raft
        self.barriers = barriers
        self.links = links
        self.live_peers = live_peers
        self.heard: dict[str, int] = {}
        """Per peer, the highest message sequence it forwarded here (``publish_from_peer``)."""

    async def release(
        self, node: NodeEvents, claimer: str, client_id: str, epoch: int, record: SessionRecord
    ) -> None:
        """Hand ``client_id``'s session to ``claimer`` (its claim at ``epoch``) once safe."""
        await self._routed_by(claimer, record)
        await self.barriers.everywhere(self.live_peers())
        await self._send(node, claimer, client_id, epoch)

    async def hand_back(self, node: NodeEvents, owner: str, client_id: str, epoch: int) -> None:
        """What this node still holds of a session ``owner`` took over while this node
        was down goes to it, as a late hand-over (its routes are long in place)."""
        node.surrender_session(client_id, epoch, True)
        await self._send(node, owner, client_id, epoch)

    async def _send(self, node: NodeEvents, to: str, client_id: str, epoch: int) -> None:
        held = node.release_session(client_id) or SessionMessages()
        seen = held.seen
        for origin, seq in self.heard.items():
            if seq > seen.get(origin, 0):
                seen[origin] = seq
        await self.links.hand_over(to, Handover(client_id, epoch, held))

    async def _routed_by(self, claimer: str, record: SessionRecord) -> None:
        """Until this node's state routes every subscription of ``record`` to
        ``claimer``, or ``ROUTE_WAIT`` has passed."""
        keys = {route_key(sub.topic_filter) for sub in record.subscriptions}
        state = self.raft.state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route_wait
        while any(claimer not in state.routes.get(key, ()) for key in keys):
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self.raft.wait_applied(state.applied + 1, remaining):
                log.warning(
                    "node %s claimed a session here and routes %d of its %d subscriptions "
                    "after %.1f s: letting it go anyway",
                    claimer,
                    sum(claimer in state.routes.get(key, ()) for key in keys),
                    len(keys),
                    self.route_wait,
                )
                return
