"""SWIM at work in a cluster node: the UDP socket, the seeds, and the health it reports.

``Membership`` is one of the node's services (``RaftCluster`` starts it before
Raft and stops it after). It runs the SWIM core (``swim/core.py``) on a UDP
socket bound to the node's ``raft_listen`` address: UDP and TCP ports are
apart, so the one address a node is known by serves both, and the peers
listed in ``peers`` are the seeds. Every datagram is sealed with the cluster
secret (``swim/seal.py``).

What it tells the rest of the node is ``health()``: each member's SWIM
state, incarnation, probe round trip, and when this node last knew it alive
(by this node's monotonic clock, so that the lease arithmetic of
``replication/deaths.py`` needs no clock of SWIM's). State changes are
logged, one line each.

A node that stops leaves SWIM first (``left``, never ``dead``), so that a
stop is not taken for a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence

from .replication.deaths import MemberHealth
from .swim.core import Swim
from .swim.members import MemberMeta, State
from .swim.seal import Sealer
from .swim.settings import SwimSettings
from .swim.transport import SwimTransport

log = logging.getLogger("raftmq.cluster.swim")

HEALTH_POLL = 0.1
"""Seconds between two looks at the core's members and events."""
LEAVE_LINGER = 0.3
"""Seconds a leaving node keeps its socket, so that its ``left`` reaches the others."""


class Membership:
    """This node's SWIM member (see the module docstring)."""

    def __init__(
        self, meta: MemberMeta, settings: SwimSettings, secret: bytes, seeds: Sequence[str]
    ) -> None:
        self.meta = meta
        self.settings = settings
        self.seeds = tuple(seeds)
        self._secret = secret
        self.swim: Swim | None = None
        self.transport: SwimTransport | None = None
        self._last_alive: dict[str, float] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        swim = self.swim = Swim(self.meta, self.settings, random.Random(), loop.time())
        try:
            self.transport = await SwimTransport.serve(swim, Sealer(self._secret))
        except OSError as exc:
            raise OSError(
                f"node {self.meta.node_id}: cannot open its SWIM port (UDP "
                f"{self.meta.swim_addr}): {exc}"
            ) from exc
        self.transport.send(swim.join(self.seeds))
        self._poller = loop.create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        swim, transport = self.swim, self.transport
        if swim is None or transport is None:
            return
        transport.send(swim.leave(transport.now()))
        await asyncio.sleep(LEAVE_LINGER)
        transport.close()

    def health(self) -> Mapping[str, MemberHealth]:
        """Each other member as this node sees it now."""
        swim = self.swim
        if swim is None:
            return {}
        now = time.monotonic()
        rtts = swim.probe_rtts()
        health = {}
        for member in swim.members()[1:]:
            node_id = member.node_id
            alive = member.state is State.ALIVE
            last_alive = now if alive else self._last_alive.get(node_id, now)
            health[node_id] = MemberHealth(
                str(member.state), member.incarnation, last_alive, rtts.get(node_id)
            )
        return health

    @property
    def dropped(self) -> Mapping[str, int]:
        """Datagrams dropped, by reason (bad seal, replay, malformed...)."""
        return {} if self.transport is None else self.transport.dropped

    async def _poll(self) -> None:
        swim = self.swim
        assert swim is not None
        while True:
            now = time.monotonic()
            for member in swim.members()[1:]:
                if member.state is State.ALIVE:
                    self._last_alive[member.node_id] = now
            for event in swim.events():
                if event.node_id == swim.node_id:
                    continue
                was = "unknown" if event.old_state is None else str(event.old_state)
                level = logging.WARNING if event.new_state is State.DEAD else logging.INFO
                log.log(
                    level,
                    "node %s: SWIM member %s %s -> %s (incarnation %d)",
                    swim.node_id,
                    event.node_id,
                    was,
                    event.new_state,
                    event.member.incarnation,
                )
            await asyncio.sleep(HEALTH_POLL)
