"""A graceful stop of a cluster node: its sessions go to the nodes that stay.

On SIGTERM the broker disconnects its clients (v5: 0x8B, server shutting
down) and then calls ``ClusterHooks.leave``. The node commits a ``NodeDown``
of itself marked ``leaving``: every node applies it as a death (its routes
go, its persistent sessions are re-homed on live nodes, which route and
queue for them at once) except that no will goes out, since a shutdown is no
client failure. Then it hands each re-homed session what it held (queued
and in flight) to its new home, as a late hand-over, and only then stops.
Its clients reconnect anywhere and find their sessions whole; publishers
elsewhere never wait for it. It stays a Raft member, declared down, and is
up again when it restarts (``NodeUp``), so a rolling restart is a sequence
of such leaves. Leaving SWIM as ``left`` follows when its services stop.

Alone, or cut off from the majority, it cannot hand anything over: the
sessions stay in its store for the restart, as on a single node.
"""

from __future__ import annotations

import asyncio
import logging
import time

from raftmq.node.hooks import ClusterUnavailable, NodeEvents

from .commands import NodeDown, NodeDownResult
from .raft import RaftNode
from .releases import SessionReleases

log = logging.getLogger("raftmq.cluster")

LEAVE_TIMEOUT = 10.0
"""How long a graceful stop waits for its sessions to move before it goes anyway."""


async def leave(raft: RaftNode, releases: SessionReleases, node: NodeEvents, serving: bool) -> None:
    """Declare this node leaving and hand its sessions over (see the module docstring);
    ``serving``: whether it holds its lease (a majority is reachable)."""
    me = raft.node_id
    if not serving or not [n for n in raft.state.live_members() if n != me]:
        return
    now = time.time()
    try:
        async with asyncio.timeout(LEAVE_TIMEOUT):
            result = await raft.submit(NodeDown(me, now, now, leaving=True))
            assert isinstance(result, NodeDownResult)
            await asyncio.gather(
                *(
                    releases.hand_back(node, owner.node_id, client_id, owner.epoch)
                    for client_id, owner in result.rehomed
                )
            )
    except (ClusterUnavailable, TimeoutError) as exc:
        log.warning("node %s leaving: its sessions may not all have moved: %s", me, exc)
        return
    homes = sorted({owner.node_id for _, owner in result.rehomed})
    log.info(
        "node %s leaves: %d persistent sessions moved to %s",
        me,
        len(result.rehomed),
        ", ".join(homes) or "no node",
    )
