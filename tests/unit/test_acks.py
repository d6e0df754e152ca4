"""Ordered acknowledgements (``node/acks.py``) when the cluster fails them."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from raftmq.node.acks import OrderedAcks
from raftmq.node.hooks import ClusterUnavailable


class Client:
    client_id = "c1"

    def __init__(self) -> None:
        self.incoming_pending = 0
        self.disconnected: list[int] = []

    def pending_started(self) -> None:
        self.incoming_pending += 1

    def pending_done(self, count: int = 1) -> None:
        self.incoming_pending -= count

    def disconnect(self, reason: int, detail: str = "") -> None:
        self.disconnected.append(reason)


async def test_waits_abandoned_with_the_connection_leave_no_unretrieved_errors() -> None:
    """Node logs filled with "Future exception was never retrieved" (issue 11)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    client = Client()
    acks = OrderedAcks(client, limit=10)
    sent: list[int] = []
    waits = [loop.create_future() for _ in range(3)]
    for index, wait in enumerate(waits):
        acks.add(wait, lambda index=index: sent.append(index))
    await asyncio.sleep(0)
    for wait in waits:  # the cluster fails them all, the first one first
        wait.set_exception(ClusterUnavailable("peer unreachable"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [] and client.disconnected == [0x88]
    assert client.incoming_pending == 0
    del waits, wait
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []
