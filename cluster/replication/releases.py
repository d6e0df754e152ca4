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

A peer that does not answer the barrier in time (cut off, paused) may still
have messages on their way here by the old routes. So the session stays a
while longer, catching what comes, and hands that over late, until every such
peer has answered or ``CATCH_WINDOW`` has passed; only then does it end. The
claimer drops late copies of what reached it directly
(``Session.first_direct``).

A node restarting after a crash may still hold messages of sessions that
moved on meanwhile; it hands them back the same way, late
(``hand_back``), and the owner adds them to the session as it is then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from raftmq.node.hooks import ClusterUnavailable, NodeEvents, SessionMessages

from ..forwarding.frames import Handover
from .barriers import RouteBarriers
from .commands import SessionRecord
from .raft import RaftNode
from .state import route_key

log = logging.getLogger("raftmq.cluster")

CATCH_WINDOW = 30.0
"""How long a released session keeps catching messages from peers that did not answer
its barrier, handing them over late."""

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
        self.undelivered = 0
        """Messages of hand-overs the claimer could not be reached for."""
        self.heard: dict[str, int] = {}
        """Per peer, the highest message sequence it forwarded here (``publish_from_peer``)."""

    async def release(
        self, node: NodeEvents, claimer: str, client_id: str, epoch: int, record: SessionRecord
    ) -> None:
        """Hand ``client_id``'s session to ``claimer`` (its claim at ``epoch``) once safe."""
        routed = await self._routed_by(claimer, record)
        if not routed and self.raft.state.owners.get(client_id) != (claimer, epoch):
            # The claim never became a connection: the session stays here, for whichever
            # claim resumes it next (it is handed over when that one applies).
            return
        silent = await self.barriers.everywhere(self.live_peers())
        if self._reclaimed(client_id):
            return
        # The first hand-over goes now, however empty: the claimer's CONNECT waits for it.
        await self._send(node, claimer, Handover(client_id, epoch), final=not silent, always=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_WINDOW
        while silent:
            silent = await self.barriers.everywhere(silent)
            if self._reclaimed(client_id):
                return
            final = not silent or loop.time() >= deadline
            await self._send(node, claimer, Handover(client_id, epoch, late=True), final)
            if final:
                return

    def _reclaimed(self, client_id: str) -> bool:
        """The client came back here meanwhile: the session it left is its session here
        again, not one to let go of (ending it would end the client's session)."""
        owner = self.raft.state.owners.get(client_id)
        return owner is not None and owner.node_id == self.raft.node_id

    async def hand_back(self, node: NodeEvents, owner: str, client_id: str, epoch: int) -> None:
        """What this node still holds of a session ``owner`` took over while this node
        was down goes to it, as a late hand-over (its routes are long in place)."""
        if node.surrender_session(client_id, epoch, True):
            await self._send(node, owner, Handover(client_id, epoch, late=True), final=True)

    async def _send(
        self, node: NodeEvents, to: str, handover: Handover, final: bool, always: bool = False
    ) -> None:
        """Send ``handover`` with what the session holds now (``final``: and end it); an
        empty one goes only when ``always``."""
        client_id = handover.client_id
        held = handover.messages = node.release_session(client_id, final) or SessionMessages()
        if not always and not held.queued and not held.outgoing:
            return  # nothing caught since the last one
        seen = held.seen
        for origin, seq in self.heard.items():
            if seq > seen.get(origin, 0):
                seen[origin] = seq
        try:
            await self.links.hand_over(to, handover)
        except ClusterUnavailable as exc:
            self.undelivered += len(held.queued) + len(held.outgoing)
            log.warning(
                "hand-over of client %r to node %s: %d messages not delivered: %s",
                client_id,
                to,
                len(held.queued) + len(held.outgoing),
                exc,
            )

    async def _routed_by(self, claimer: str, record: SessionRecord) -> bool:
        """Until this node's state routes every subscription of ``record`` to
        ``claimer`` (True), or ``route_wait`` has passed (False)."""
        keys = {route_key(sub.topic_filter) for sub in record.subscriptions}
        state = self.raft.state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route_wait
        while any(claimer not in state.routes.get(key, ()) for key in keys):
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self.raft.wait_applied(state.applied + 1, remaining):
                log.warning(
                    "node %s claimed a session here and routes %d of its %d subscriptions "
                    "after %.1f s",
                    claimer,
                    sum(claimer in state.routes.get(key, ()) for key in keys),
                    len(keys),
                    self.route_wait,
                )
                return False
        return True
