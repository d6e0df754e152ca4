"""What a ``RaftNode`` (``raft.py``) is told and tells: its options, its status, and
an applied command as its listeners see it. Plain data, apart from pysyncobj."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Applied:
    """One command applied to the state, as the apply listener sees it."""

    command: object
    result: object
    mine: bool
    """Submitted by this RaftNode (this process: replays after a restart are not mine)."""
    orphaned: bool
    """Mine, but its submitter gave up waiting (timed out, cancelled): nobody saw the result."""


@dataclass(slots=True)
class RaftOptions:
    """Timing and storage knobs; the defaults suit a LAN or loopback."""

    commit_timeout: float = 5.0
    """How long ``submit`` waits for a commit before raising ClusterUnavailable."""
    election_timeout: tuple[float, float] = (0.4, 1.4)
    heartbeat_interval: float = 0.1
    connection_timeout: float = 3.5
    connection_retry: float = 1.0
    leader_fallback: float = 2.0
    """A leader that hears from no majority for this long steps down."""
    max_inflight_batches: int = 1
    """Batches of this node awaiting commit at once; more pending commands wait
    and join the next batch (group commit)."""
    retry_delay: float = 0.05
    """Pause before resending a batch pysyncobj surely dropped (no leader yet, ...)."""
    bind_retries: int = 3
    max_entry_bytes: int = 4 * 1024 * 1024
    """Largest log entry; a bigger batch is split, a bigger single command refused."""
    compaction_min_entries: int = 5000
    compaction_min_time: float = 300.0
    fork_snapshots: bool = True
    """Write full dumps from a forked child, so a large state never stalls Raft."""


@dataclass(frozen=True, slots=True)
class RaftStatus:
    node_id: str
    role: str
    leader: str | None
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool
    peers: dict[str, bool]
    """Peer node id -> connected."""
    listener_failures: int = 0
    """Apply or restore listeners that raised: each is a bug (logged with its
    traceback); the fault suite requires none."""
