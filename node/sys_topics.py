"""The `$SYS/broker/...` topics, named as Mosquitto names them.

Monitoring tools written for Mosquitto read these paths, so we keep them.
They are retained on this node only: in a cluster each node reports itself.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .broker import Broker


def raftmq_version() -> str:
    try:
        return version("raftmq")
    except PackageNotFoundError:
        return "unknown"


class SysPublisher:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.broker.config.sys_interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        self.broker.publish_local(
            "$SYS/broker/version", f"raftmq {raftmq_version()}".encode(), True
        )
        while True:
            self.publish_once()
            await asyncio.sleep(self.broker.config.sys_interval)

    def publish_once(self) -> None:
        broker = self.broker
        stats = broker.stats
        values = {
            "uptime": f"{stats.uptime} seconds",
            "clients/connected": stats.clients_connected,
            "clients/total": len(broker.sessions),
            "messages/received": stats.messages_received,
            "messages/sent": stats.messages_sent,
            "messages/dropped": stats.messages_dropped,
            "bytes/received": stats.bytes_received,
            "bytes/sent": stats.bytes_sent,
            "retained messages/count": len(broker.retained),
            "retained messages/bytes": stats.retained_bytes,
            "subscriptions/count": len(broker.subscriptions) + len(broker.shared),
        }
        values.update((f"limits/{name}", count) for name, count in stats.limits.items())
        for name, value in values.items():
            broker.publish_local(f"$SYS/broker/{name}", str(value).encode(), True)
