"""The `$SYS/broker/...` topics, named as Mosquitto names them.

Monitoring tools written for Mosquitto read these paths, so we keep them.
They are retained on this node only: in a cluster each node reports itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from .stats import Stats

PublishLocal = Callable[[str, bytes, bool], None]
"""Publish a message the node itself makes: (topic, payload, retain)."""


def raftmq_version() -> str:
    try:
        return version("raftmq")
    except PackageNotFoundError:
        return "unknown"


class SysPublisher:
    """Publishes the node's figures every ``interval`` seconds (0: never)."""

    def __init__(
        self,
        interval: float,
        stats: Stats,
        counts: Callable[[], dict[str, int]],
        publish_local: PublishLocal,
    ) -> None:
        self.interval = interval
        self.stats = stats
        self.counts = counts
        """Figures that are not counters: sessions, retained messages, subscriptions."""
        self.publish_local = publish_local
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        self.publish_local("$SYS/broker/version", f"raftmq {raftmq_version()}".encode(), True)
        while True:
            self.publish_once()
            await asyncio.sleep(self.interval)

    def publish_once(self) -> None:
        stats = self.stats
        counts = self.counts()
        values = {
            "uptime": f"{stats.uptime} seconds",
            "clients/connected": stats.clients_connected,
            "clients/total": counts["sessions"],
            "messages/received": stats.messages_received,
            "messages/sent": stats.messages_sent,
            "messages/dropped": stats.messages_dropped,
            "bytes/received": stats.bytes_received,
            "bytes/sent": stats.bytes_sent,
            "retained messages/count": counts["retained"],
            "retained messages/bytes": stats.retained_bytes,
            "subscriptions/count": counts["subscriptions"],
        }
        values.update((f"limits/{name}", count) for name, count in stats.limits.items())
        for name, value in values.items():
            self.publish_local(f"$SYS/broker/{name}", str(value).encode(), True)
