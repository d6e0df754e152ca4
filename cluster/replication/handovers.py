"""Where a session's messages, handed over by the node that held it, meet the CONNECT
that resumes it here.

The two come from different places and in either order: the claim commits
through Raft, the node that held the session applies it and sends the
messages over its forwarding stream, and the CONNECT waits for them after
its own commit. Each hand-over is keyed by (client id, epoch of the claim).
"""

from __future__ import annotations

import asyncio
import logging

from ..forwarding.frames import Handover

log = logging.getLogger("raftmq.cluster")

HANDOVER_TIMEOUT = 3.0
"""How long a CONNECT that resumes a session from another node waits for its messages."""


class Handovers:
    """Hand-overs on their way to the CONNECT that resumes them, each met once."""

    def __init__(self, timeout: float = HANDOVER_TIMEOUT) -> None:
        self.timeout = timeout
        self._pending: dict[tuple[str, int], asyncio.Future[Handover]] = {}
        """(client id, epoch) -> the hand-over of a session resumed here, awaited or early."""

    async def wait(self, node_id: str, client_id: str, epoch: int) -> Handover | None:
        """The hand-over ``node_id`` sends once it applies our claim; None if it never comes
        (that node is down: the session resumes with its subscriptions only)."""
        key = (client_id, epoch)
        future, _ = self._future(key)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            log.warning(
                "client %r resumes without the messages node %s held for it: "
                "no hand-over within %.1f s",
                client_id,
                node_id,
                self.timeout,
            )
            return None
        finally:
            self._pending.pop(key, None)

    def arrived(self, origin: str, handover: Handover) -> None:
        """A peer gave up a session we claimed: pass its messages to the CONNECT resuming it.

        It may arrive before that CONNECT waits for it (the peer applied the
        claim first); it is kept for a while, then dropped with a warning.
        """
        key = (handover.client_id, handover.epoch)
        future, new = self._future(key)
        if new:
            asyncio.get_running_loop().call_later(2 * self.timeout, self._drop_untaken, key, origin)
        if not future.done():
            future.set_result(handover)

    def _future(self, key: tuple[str, int]) -> tuple[asyncio.Future[Handover], bool]:
        """The future a hand-over meets its CONNECT in, and whether it was just made."""
        future = self._pending.get(key)
        if future is not None:
            return future, False
        future = self._pending[key] = asyncio.get_running_loop().create_future()
        return future, True

    def _drop_untaken(self, key: tuple[str, int], origin: str) -> None:
        future = self._pending.get(key)
        if future is None or not future.done():
            return
        del self._pending[key]
        handover = future.result()
        log.warning(
            "node %s handed over client %r (epoch %d) and no CONNECT took it: %d messages dropped",
            origin,
            handover.client_id,
            handover.epoch,
            len(handover.messages.queued) + len(handover.messages.outgoing),
        )
