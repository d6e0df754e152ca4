"""The delayed wills of a dead node's clients, fired by the Raft leader when due.

``NodeDown`` publishes a will at once only when its delay (counted from when
the node was last seen alive, capped by the session's expiry) has run out by
the declaration. The others wait in ``ClusterState.delayed_wills``, with a
wall-clock due time that every replica agrees on, until a claim of the client
cancels them (it came back: MQTT 5 §3.1.3.2.2) or the leader commits
``FireWill`` for them. The node that commits a ``FireWill`` publishes the will
(``RaftCluster``), so it goes out once however often leaders change: a second
``FireWill`` finds it gone.
"""

from __future__ import annotations

import asyncio
import logging
import time

from raftmq.node.background import Background
from raftmq.node.hooks import ClusterUnavailable

from .commands import FireWill
from .raft import RaftNode

log = logging.getLogger("raftmq.cluster")

WILL_POLL = 0.25
"""Seconds between two looks for due wills: the precision of a will delay here."""


class DelayedWills:
    """On the leader, commits ``FireWill`` for each delayed will that is due."""

    def __init__(self, raft: RaftNode) -> None:
        self.raft = raft
        self._firing: set[str] = set()
        self._tasks = Background()

    async def run(self) -> None:
        """Until cancelled."""
        try:
            while True:
                await asyncio.sleep(WILL_POLL)
                if self.raft.leading:
                    self.fire_due(time.time())
        finally:
            await self._tasks.cancel()

    def fire_due(self, now: float) -> None:
        for client_id, (_, due) in self.raft.state.delayed_wills.items():
            if due <= now and client_id not in self._firing:
                self._firing.add(client_id)
                self._tasks.run(self._fire(client_id))

    async def _fire(self, client_id: str) -> None:
        try:
            await self.raft.submit(FireWill(client_id))
        except ClusterUnavailable as exc:
            log.warning("will of client %r not fired yet: %s (retried)", client_id, exc)
        finally:
            self._firing.discard(client_id)
