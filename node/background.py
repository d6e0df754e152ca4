"""Work no client waits for (cluster bookkeeping), run as tasks that are kept and logged.

A task nobody holds can be garbage-collected mid-flight, and one nobody awaits
fails silently; this keeps each until it ends, logs its failure under what it
was for, and cancels what is left when the node (or its cluster) stops. The
node's parts and the replicated cluster (``cluster/replication``) share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("raftmq.background")


class Background:
    """Tasks for awaitables no caller waits for (commits, kicks, hand-overs to peers)."""

    def __init__(self, what: str = "cluster update") -> None:
        self._what = what
        self._running: set[asyncio.Task[Any]] = set()

    def run(self, work: Awaitable[Any], *, expected: tuple[type[Exception], ...] = ()) -> None:
        """Run ``work`` to its end; a failure other than ``expected`` is logged."""
        task = asyncio.get_running_loop().create_task(_finish(work, expected))
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None:
            log.error("%s failed: %s", self._what, failure)

    def cancel_all(self) -> list[asyncio.Task[Any]]:
        """Cancel what still runs; returns the cancelled tasks, to await if need be."""
        running = list(self._running)
        for task in running:
            task.cancel()
        return running

    async def cancel(self) -> None:
        """Cancel what still runs and wait until it has ended."""
        await asyncio.gather(*self.cancel_all(), return_exceptions=True)


async def _finish(work: Awaitable[Any], expected: tuple[type[Exception], ...]) -> None:
    with contextlib.suppress(*expected):
        await work


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for a future nobody awaits any more: its failure is expected and
    known, so asyncio must not log it as "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()
