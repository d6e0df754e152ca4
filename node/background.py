"""Work no client waits for (cluster bookkeeping), run as tasks that are kept and logged.

A task nobody holds can be garbage-collected mid-flight, and one nobody awaits
fails silently; this keeps each until it ends, logs its failure under what it
was for, and cancels what is left when the node stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("raftmq.background")


class Background:
    """The node's background tasks."""

    def __init__(self, what: str = "cluster update") -> None:
        self._what = what
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %s", self._what, task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
