"""Work the cluster starts and nobody awaits: kept, logged if it fails, cancelled on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("raftmq.cluster")


class BackgroundTasks:
    """Tasks for awaitables no caller waits for (commits, kicks, hand-overs to peers)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any], *, expected: tuple[type[Exception], ...] = ()) -> None:
        """Run ``work`` to its end; a failure other than ``expected`` is logged."""
        task = asyncio.get_running_loop().create_task(_finish(work, expected))
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (failure := task.exception()) is not None:
            log.error("cluster update failed: %s", failure)

    async def cancel(self) -> None:
        """Cancel what still runs and wait until it has ended."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _finish(work: Awaitable[Any], expected: tuple[type[Exception], ...]) -> None:
    with contextlib.suppress(*expected):
        await work
