"""QoS 1 acknowledgements in PUBLISH order, without a publish waiting for the one before.

A QoS 1 PUBLISH that other nodes must take is acknowledged only once they
have (docs/architecture.md, "PUBLISH"). Waiting for that before reading the next PUBLISH
would allow one message in flight per publisher towards the cluster: the
publisher's throughput would be one message per inter-node round trip.
Instead the message is routed at once (so delivery order is publish order),
and its PUBACK waits in a queue: MQTT requires PUBACKs in the order the
PUBLISHes came (3.1.1 and 5.0 §4.6), so each waits for the ones before it.

The queue holds at most ``limit`` acknowledgements (the node's receive
maximum): beyond it, ``add`` returns an awaitable and the connection reads
nothing more until there is room, which bounds what a v3 client (that has
no receive maximum) can have in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from .background import retrieve_outcome
from .hooks import ClusterUnavailable
from .reason_codes import ReasonCode

log = logging.getLogger("raftmq.connection")


class AckingClient(Protocol):
    """The client whose acknowledgements wait (``protocol.ClientProtocol``)."""

    client_id: str
    incoming_pending: int

    def pending_started(self) -> None: ...

    def pending_done(self, count: int = 1) -> None: ...

    def disconnect(self, reason: int, detail: str = "") -> None: ...


class OrderedAcks:
    """One client's acknowledgements that wait for the cluster, oldest first."""

    __slots__ = ("_conn", "_entries", "_room", "_sending", "limit")

    def __init__(self, conn: AckingClient, limit: int) -> None:
        self._conn = conn
        self.limit = limit
        self._entries: deque[tuple[Awaitable[None] | None, Callable[[], None]]] = deque()
        self._room: asyncio.Future[None] | None = None
        self._sending = False

    def __bool__(self) -> bool:
        """Whether acknowledgements are waiting: a new one must then queue behind them."""
        return bool(self._entries)

    def add(
        self, pending: Awaitable[None] | None, send: Callable[[], None]
    ) -> Coroutine[Any, Any, None] | None:
        """``send`` the acknowledgement once ``pending`` (None: nothing) and all before it are
        done. Returns an awaitable to wait on before reading more, when the queue is full."""
        conn = self._conn
        self._entries.append((pending, send))
        conn.pending_started()
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_in_order())
        if conn.incoming_pending >= self.limit:
            return self._wait_for_room()
        return None

    async def _send_in_order(self) -> None:
        conn = self._conn
        entries = self._entries
        try:
            while entries:
                pending, send = entries[0]
                if pending is not None:
                    await pending
                entries.popleft()
                conn.pending_done()
                send()
                self._wake()
        except ClusterUnavailable:
            self._abandon()
            conn.disconnect(ReasonCode.SERVER_UNAVAILABLE, "cluster unavailable")
        except Exception:
            self._abandon()
            log.exception("client %r: acknowledging a publish failed", conn.client_id)
            conn.disconnect(ReasonCode.UNSPECIFIED_ERROR, "internal error")
        finally:
            self._sending = False

    def _abandon(self) -> None:
        """The connection ends: what it was owed will never be sent.

        The waits still queued are not awaited by anyone now; their outcome
        (often the same ClusterUnavailable) is taken here, or asyncio would log
        "exception was never retrieved" for each of them.
        """
        self._conn.pending_done(len(self._entries))
        for pending, _ in self._entries:
            if asyncio.isfuture(pending):
                pending.add_done_callback(retrieve_outcome)
            elif asyncio.iscoroutine(pending):
                pending.close()
        self._entries.clear()
        self._wake()

    def _wake(self) -> None:
        room = self._room
        if room is not None and self._conn.incoming_pending < self.limit:
            self._room = None
            room.set_result(None)

    async def _wait_for_room(self) -> None:
        while self._entries and self._conn.incoming_pending >= self.limit:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room
