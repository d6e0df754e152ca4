"""The lease that keeps one live session per client id across a partition.

Raft alone does not stop a cut-off node from serving the connections it
already has: the claim that moves a client elsewhere never reaches it, and
its kick cannot either. So (issue 11, guarantee 1):

- A node that has not been connected to a Raft majority for ``cluster_lease``
  seconds stops serving: it disconnects its clients with 0x88 and refuses new
  CONNECTs until a majority is back. A node that was itself stopped for
  longer than that (SIGSTOP, a stall) cannot know what happened meanwhile and
  does the same on waking.
- A CONNECT that takes a client id over from a node that does not
  acknowledge the kick at once waits ``takeover_wait``: the time Raft takes to
  drop a silent connection, plus the lease, plus ``cluster_lease_margin``. The
  partition began before the claim, so by then the old node has surely
  stopped serving the client.

``QuorumLease`` is the bookkeeping, fed Raft status polls and the time, so it
is tested without a cluster; ``LeaseKeeper`` polls Raft for it and makes
takeovers wait, for ``RaftCluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from raftmq.node.background import retrieve_outcome
from raftmq.node.hooks import ClusterUnavailable

from .raft import RaftNode, RaftStatus

log = logging.getLogger("raftmq.cluster")

LEASE_POLL = 0.25
"""Seconds between two looks at Raft's status."""
KICK_ACK_WAIT = 1.0
"""Seconds a takeover waits for the old holder's acknowledgement of its kick before it
says, in the log, that it waits for that holder's lease."""


class QuorumLease:
    """Whether this node may serve clients, and how long a takeover may have to wait."""

    def __init__(self, lease: float, margin: float, detection: float, now: float) -> None:
        """``detection``: how long Raft takes to call a silent peer disconnected."""
        self.lease = lease
        self.margin = margin
        self.detection = detection
        self.serving = True
        self._majority_at = now
        """When a majority was last connected; a starting node gets one lease to find it."""
        self._polled_at = now

    @property
    def takeover_wait(self) -> float:
        """Seconds after a claim before its CONNECT may go on, when the old holder is
        out of reach: by then the holder's own lease has surely run out."""
        return self.detection + self.lease + self.margin

    def observe(self, status: RaftStatus, now: float) -> bool | None:
        """One poll of Raft's status: True when the node just lost its lease, False when
        it just got it back, None when nothing changed."""
        stalled = now - self._polled_at > self.lease
        self._polled_at = now
        if stalled:
            self._majority_at = now - self.lease - 1.0  # nothing is known of the gap
        elif status.has_quorum:
            self._majority_at = now
        serving = now - self._majority_at <= self.lease
        if serving == self.serving:
            return None
        self.serving = serving
        return not serving


class LeaseKeeper:
    """The lease at work on one node: polls Raft, says when to stop serving, and makes
    a takeover wait until the old holder has let go or surely stopped."""

    def __init__(self, raft: RaftNode, lease: float, margin: float) -> None:
        self.raft = raft
        self._terms = (lease, margin)
        self.state = self._fresh()

    def _fresh(self) -> QuorumLease:
        lease, margin = self._terms
        return QuorumLease(lease, margin, self.raft.options.connection_timeout, time.monotonic())

    @property
    def serving(self) -> bool:
        return self.state.serving

    async def run(self, lost: Callable[[], None]) -> None:
        """Poll until cancelled; ``lost`` is called each time the lease runs out."""
        self.state = self._fresh()  # a node (re)starting gets one lease to find its majority
        node_id = self.raft.node_id
        while True:
            await asyncio.sleep(LEASE_POLL)
            change = self.state.observe(self.raft.status(), time.monotonic())
            if change is None:
                continue
            if change:
                log.warning(
                    "node %s: no Raft majority heard for %.1fs (cluster_lease): disconnecting "
                    "its clients with 0x88 and refusing new ones until one is heard",
                    node_id,
                    self.state.lease,
                )
                lost()
            else:
                log.info("node %s: a Raft majority is heard again: serving clients", node_id)

    async def let_go(
        self, kick: Awaitable[None], holder: str, client_id: str, claimed_at: float
    ) -> None:
        """Until ``holder`` surely serves ``client_id`` no more. It drops its connection
        when the kick (or the claim's commit) reaches it, so a prompt acknowledgement of
        ``kick`` ends the wait. Without one, the holder may be cut off and still serving:
        wait until its lease has surely run out."""
        acked = asyncio.ensure_future(kick)
        acked.add_done_callback(retrieve_outcome)
        deadline = claimed_at + self.state.takeover_wait
        with contextlib.suppress(TimeoutError, ClusterUnavailable):
            await asyncio.wait_for(asyncio.shield(acked), KICK_ACK_WAIT)
            return
        log.info(
            "client %r: node %s has not let go of it; waiting up to %.1fs for it, or for its "
            "lease to run out",
            client_id,
            holder,
            max(0.0, deadline - time.monotonic()),
        )
        with contextlib.suppress(TimeoutError, ClusterUnavailable):
            # A late acknowledgement (a loaded machine) ends the wait as well.
            await asyncio.wait_for(asyncio.shield(acked), max(0.0, deadline - time.monotonic()))
            return
        # ClusterUnavailable: the link gave up on the holder; sleep out what remains.
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
