"""From "SWIM says dead" to a committed ``NodeDown``, with no operator.

Every node runs a ``DeathDeclarer``; only the Raft leader's acts, so a death
is declared once whichever node leads, and a new leader picks up what the
old one had not declared yet. It declares a Raft member down when:

- SWIM has confirmed it dead (suspected, then not refuted in time: a slow or
  briefly paused node refutes and is never declared), and
- its lease has surely run out (``lease.py``): ``takeover_wait`` seconds have
  passed since it was last seen alive. A node cut off from the majority stops
  serving its clients within that time, so re-homing its sessions and
  publishing its clients' wills never leaves one client id live on two nodes;
- and the leader's Raft does not hear it either (SWIM learns that a node is
  back only at its next full-state exchange after a partition heals; Raft
  reconnects at once, and a node Raft hears may hold its lease).

A member that has left gracefully is never declared dead, and one already
down is not declared again (``NodeDown`` is idempotent per SWIM incarnation
as well, for declarations racing a leader change).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from raftmq.node.background import Background
from raftmq.node.hooks import ClusterUnavailable

from .raft_types import RaftStatus
from .state import ClusterState

log = logging.getLogger("raftmq.cluster")

DECLARE_POLL = 0.25
"""Seconds between two looks at SWIM's view on the leader."""


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member as this node's SWIM sees it (``cluster status`` shows it too)."""

    state: str
    """``alive``, ``suspect``, ``dead`` or ``left``."""
    incarnation: int
    last_alive: float
    """time.monotonic() when this node last knew it alive."""
    rtt: float | None = None
    """Round-trip time of the last direct probe this node made of it, in seconds."""


class Leadership(Protocol):
    @property
    def leading(self) -> bool: ...

    @property
    def state(self) -> ClusterState: ...

    def status(self) -> RaftStatus: ...


Declare = Callable[[str, float, int], Awaitable[object]]
"""(node id, wall-clock time last seen alive, SWIM incarnation) -> the commit."""


class DeathDeclarer:
    """Commits ``NodeDown`` for dead members on the leader (see the module docstring)."""

    def __init__(
        self,
        raft: Leadership,
        health: Callable[[], Mapping[str, MemberHealth]],
        takeover_wait: float,
        declare: Declare,
    ) -> None:
        self.raft = raft
        self.health = health
        self.takeover_wait = takeover_wait
        self.declare = declare
        self.declared = 0
        """Deaths this node committed."""
        self._declaring: set[str] = set()
        self._tasks = Background()

    async def run(self) -> None:
        """Until cancelled."""
        try:
            while True:
                await asyncio.sleep(DECLARE_POLL)
                if self.raft.leading:
                    self.check(time.monotonic(), time.time())
        finally:
            await self._tasks.cancel()

    def check(self, now: float, wall: float) -> None:
        """Declare every member that is due (``now``: monotonic, ``wall``: time.time())."""
        state = self.raft.state
        raft_links: dict[str, bool] | None = None
        for node_id, member in self.health().items():
            if member.state != "dead" or node_id in self._declaring:
                continue
            if node_id not in state.members or node_id in state.down:
                continue
            if member.incarnation <= state.down_incarnations.get(node_id, -1):
                continue  # declared at this incarnation before, and it came back since
            if now - member.last_alive < self.takeover_wait:
                continue  # its lease may not have run out yet
            if raft_links is None:
                raft_links = self.raft.status().peers
            if raft_links.get(node_id):
                # Raft hears it: it has its lease (SWIM has not seen it back yet, say
                # right after a partition heals), so it must not be declared.
                continue
            last_seen = wall - (now - member.last_alive)
            self._declaring.add(node_id)
            self._tasks.run(self._declare(node_id, last_seen, member.incarnation))

    async def _declare(self, node_id: str, last_seen: float, incarnation: int) -> None:
        log.warning(
            "node %s is dead (SWIM, incarnation %d, last seen %.1f s ago): declaring it down",
            node_id,
            incarnation,
            time.time() - last_seen,
        )
        try:
            await self.declare(node_id, last_seen, incarnation)
            self.declared += 1
        except ClusterUnavailable as exc:
            log.warning("node-down of %s not committed: %s (retried)", node_id, exc)
        finally:
            self._declaring.discard(node_id)
