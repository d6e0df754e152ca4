"""This node's routes in the cluster, counted by their local subscribers.

A route ("send me what matches this filter") is added when the first local
subscriber of a (share group, filter) comes and removed when the last one
goes. Two things make that subtle, and both lost messages before (issue 11):

- The count goes up before the route's commit is awaited. Read before the
  await and written after it, two first subscribers arriving together counted
  as one, and the first to leave removed the route the other still needed.
- Changes of one route are submitted in the order they were decided. A
  removal still waiting to be submitted when a new subscriber re-added the
  route would otherwise commit after the addition and take it away.
"""

from __future__ import annotations

import asyncio
import contextlib

from .background import Background
from .hooks import ClusterHooks, RouteKey


class LocalRoutes:
    """Reference counts of this node's routes, and their changes in order."""

    def __init__(self, hooks: ClusterHooks, background: Background) -> None:
        self.hooks = hooks
        self.background = background
        self._refs: dict[RouteKey, int] = {}
        self._latest: dict[RouteKey, asyncio.Task[None]] = {}
        """The last change submitted or waiting to be, per route, while it runs."""

    def __len__(self) -> int:
        return len(self._refs)

    def count(self, key: RouteKey) -> int:
        return self._refs.get(key, 0)

    async def acquire(self, key: RouteKey) -> None:
        """Count one more local subscriber; returns once the route is committed.

        A subscriber joining a route whose addition is still in flight waits
        for it too: its SUBACK must not come before the route exists. On
        failure (``ClusterUnavailable``) the count is given back and the error
        raised.
        """
        refs = self._refs.get(key, 0)
        self._refs[key] = refs + 1
        change = self._change(key, add=True) if refs == 0 else self._latest.get(key)
        if change is None:
            return
        try:
            await asyncio.shield(change)
        except BaseException:
            self.release(key)
            raise

    def release(self, key: RouteKey) -> None:
        """Count one local subscriber less; the last one removes the route (in the background).

        A release without an acquire raises KeyError: the counts are exact, so
        that is a bug to surface, never to paper over.
        """
        refs = self._refs[key] - 1
        if refs:
            self._refs[key] = refs
            return
        del self._refs[key]
        self.background.run(self._change(key, add=False))

    def _change(self, key: RouteKey, *, add: bool) -> asyncio.Task[None]:
        previous = self._latest.get(key)
        task = asyncio.get_running_loop().create_task(self._submit(key, add, previous))
        self._latest[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    async def _submit(self, key: RouteKey, add: bool, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):  # its own awaiter hears of its failure
                await asyncio.shield(previous)
        if add:
            await self.hooks.add_route(key.share_group, key.topic_filter)
        else:
            await self.hooks.remove_route(key.share_group, key.topic_filter)

    def _forget(self, key: RouteKey, done: asyncio.Task[None]) -> None:
        if self._latest.get(key) is done:
            del self._latest[key]
        if not done.cancelled():
            done.exception()  # retrieved: each awaiter (or Background) reports it
