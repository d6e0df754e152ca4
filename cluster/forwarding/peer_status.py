"""What ``raftmq cluster status`` shows of one forwarding peer (``transport.Forwarder``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class PeerStatus:
    node_id: str
    address: str | None
    dials: bool
    """True when this node opens the stream (its id sorts first)."""
    connected: bool
    unreachable: bool
    queued: int
    """Items waiting for the next frame."""
    unacked: int
    """Items sent (or to resend) and not yet acknowledged."""
    frames_sent: int
    frames_received: int
    resends: int
    """Frames sent again after a reconnect."""
    duplicates: int
    """Frames received again and dropped."""
    dropped: int
    """Items discarded because the peer was unreachable."""
    last_error: str | None
    """What broke the latest stream that broke (kept after a reconnect)."""
