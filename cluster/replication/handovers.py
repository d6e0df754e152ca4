"""Where a session's messages, handed over by the node that held it, meet the CONNECT
that resumes it here.

The two come from different places: the claim commits through Raft, the node
that held the session lets it go once the claimer's routes are live
everywhere (``releases.py``) and sends its messages over its forwarding
stream, and the CONNECT waits for them after routing the session here. Each
hand-over is keyed by (client id, epoch of the claim), expected from the
moment the claim returns.

A hand-over that comes when no CONNECT waits for it any more (it timed out),
or that says it is ``late`` (the sender restarted after a crash and hands back
what it still held, or caught more after its first hand-over), goes to
``late``, which adds its messages to the session as it is then, or drops them
with a warning when the client id has moved on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..forwarding.frames import Handover

log = logging.getLogger("raftmq.cluster")

HANDOVER_TIMEOUT = 3.0
"""How long a CONNECT that resumes a session from another node waits for its messages."""
PARK_TIMEOUT = 30.0
"""How long a late hand-over waits for the CONNECT of a claim made here to take its
session (the claim may wait out the old holder's lease first)."""


class Handovers:
    """Hand-overs on their way to the CONNECT that resumes them, each met once."""

    def __init__(
        self, late: Callable[[str, Handover], None], timeout: float = HANDOVER_TIMEOUT
    ) -> None:
        self.timeout = timeout
        self.late = late
        """Called with (sender, hand-over) for one no CONNECT waits for."""
        self.dropped = 0
        """Messages of hand-overs dropped because their client id had moved on."""
        self._parked: dict[str, list[tuple[str, Handover]]] = {}
        """Client id -> late hand-overs waiting for its CONNECT here (``park``)."""
        self._pending: dict[tuple[str, int], asyncio.Future[tuple[str, Handover]]] = {}
        """(client id, epoch) -> (sender, hand-over) of a claim made here, expected or
        waited for."""

    def expect(self, client_id: str, epoch: int) -> None:
        """Our claim of ``client_id`` at ``epoch`` resumes a session another node holds.

        Should its CONNECT never wait for the messages (it failed after the
        claim), a hand-over that came is passed on as late after a while.
        """
        key = (client_id, epoch)
        if key not in self._pending:
            self._pending[key] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(3 * self.timeout, self._untaken, key)

    async def wait(self, node_id: str, client_id: str, epoch: int) -> Handover | None:
        """The hand-over ``node_id`` sends once it lets the session go; None if it does
        not come in time (the session resumes with its subscriptions, and what comes
        later is added as late)."""
        key = (client_id, epoch)
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            _, handover = await asyncio.wait_for(asyncio.shield(future), self.timeout)
            return handover
        except TimeoutError:
            log.warning(
                "client %r resumes without the messages node %s held for it: "
                "no hand-over within %.1f s (they are added when they come)",
                client_id,
                node_id,
                self.timeout,
            )
            return None
        finally:
            self._pending.pop(key, None)

    def arrived(self, origin: str, handover: Handover) -> None:
        """A peer let go of a session: to the CONNECT resuming it, or late.

        Only a first hand-over is what the CONNECT waits for: a later one (``late``)
        that came first, say a restarted node's hand-back, must not stand in for
        the hand-over of the node that held the session.
        """
        future = self._pending.get((handover.client_id, handover.epoch))
        if handover.late or future is None or future.done():
            self.late(origin, handover)
        else:
            future.set_result((origin, handover))

    def park(self, origin: str, handover: Handover) -> None:
        """A late hand-over for a session this node owns but whose CONNECT has not taken
        it yet (it waits for the previous holder to let go): kept for ``unpark``, and
        dropped (counted, logged) if no CONNECT takes it within ``PARK_TIMEOUT``."""
        parked = self._parked.setdefault(handover.client_id, [])
        parked.append((origin, handover))
        loop = asyncio.get_running_loop()
        loop.call_later(PARK_TIMEOUT, self._expire, handover.client_id, handover)

    def unpark(self, client_id: str) -> list[tuple[str, Handover]]:
        """The late hand-overs parked for ``client_id``, whose CONNECT now holds it."""
        return self._parked.pop(client_id, [])

    def _expire(self, client_id: str, handover: Handover) -> None:
        parked = self._parked.get(client_id, [])
        for entry in parked:
            if entry[1] is handover:
                parked.remove(entry)
                self.drop(entry[0], handover, f"no CONNECT took the session in {PARK_TIMEOUT:g} s")
                break
        if not parked:
            self._parked.pop(client_id, None)

    def drop(self, origin: str, handover: Handover, why: str) -> None:
        """A hand-over nobody can take: its messages are counted and logged, never silent."""
        held = handover.messages
        count = len(held.queued) + len(held.outgoing)
        self.dropped += count
        log.warning(
            "node %s handed over client %r (epoch %d): %d messages dropped, %s",
            origin,
            handover.client_id,
            handover.epoch,
            count,
            why,
        )

    def _untaken(self, key: tuple[str, int]) -> None:
        future = self._pending.get(key)
        if future is None:
            return  # waited for
        del self._pending[key]
        if future.done():
            self.late(*future.result())
