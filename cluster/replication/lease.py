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
is tested without a cluster; ``RaftCluster`` polls and acts on it.
"""

from __future__ import annotations

from .raft import RaftStatus


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
