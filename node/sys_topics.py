"""The `$SYS/broker/...` tree, named and computed as Mosquitto does it.

Dashboards and monitoring tools written for Mosquitto read these paths, so
we keep its names and meanings (docs/behaviour.md has the table), add our own
few (`retained messages/bytes`, `limits/...`), and publish each value only
when it changed, retained, every ``sys_interval`` seconds, as Mosquitto does.
They are retained on this node only: in a cluster each node reports itself.

The hot path only bumps the counters in ``stats.Stats``; everything else here
(totals, aliases, load averages) is derived once per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from .load_averages import LoadAverages
from .stats import Stats

PublishLocal = Callable[[str, bytes, bool], None]
"""Publish a message the node itself makes: (topic, payload, retain)."""


def raftmq_version() -> str:
    try:
        return version("raftmq")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Gauges:
    """Figures read from the node's state when `$SYS` is published, not counted."""

    sessions: int
    """Sessions this node holds: connected clients and disconnected persistent sessions."""
    subscriptions: int
    """Subscriptions on this node, shared ones included."""
    shared_subscriptions: int
    retained: int
    """Retained messages."""
    held_messages: int
    """Messages sessions hold for their clients: queued, or in flight unacknowledged."""
    held_bytes: int
    """Payload bytes of ``held_messages``."""


def load_counters(stats: Stats) -> dict[str, int]:
    """The counters behind `load/<name>/<window>`, by Mosquitto's ``<name>``."""
    return {
        "messages/received": stats.packets_received,
        "messages/sent": stats.packets_sent,
        "bytes/received": stats.bytes_received,
        "bytes/sent": stats.bytes_sent,
        "publish/received": stats.messages_received,
        "publish/sent": stats.messages_sent,
        "publish/dropped": stats.messages_dropped,
        "connections": stats.connects,
        "sockets": stats.sockets_opened,
    }


def sys_tree(
    stats: Stats, gauges: Gauges, loads: Mapping[str, float], product: str
) -> dict[str, str]:
    """Every `$SYS/broker/<name>` and its payload, as Mosquitto formats it."""
    connected = stats.clients_connected
    disconnected = max(0, gauges.sessions - connected)
    stored = gauges.retained + gauges.held_messages
    tree: dict[str, object] = {
        "version": product,
        "uptime": f"{stats.uptime} seconds",
        "clients/connected": connected,
        "clients/active": connected,  # Mosquitto's deprecated alias
        "clients/disconnected": disconnected,
        "clients/inactive": disconnected,  # Mosquitto's deprecated alias
        "clients/total": connected + disconnected,
        "clients/maximum": stats.clients_maximum,
        "clients/expired": stats.clients_expired,
        "messages/received": stats.packets_received,
        "messages/sent": stats.packets_sent,
        "messages/stored": stored,
        "messages/dropped": stats.messages_dropped,  # raftmq's older name
        "publish/messages/received": stats.messages_received,
        "publish/messages/sent": stats.messages_sent,
        "publish/messages/dropped": stats.messages_dropped,
        "publish/messages/denied": stats.deliveries_denied,  # ours: the ACL's
        "publish/bytes/received": stats.message_bytes_received,
        "publish/bytes/sent": stats.message_bytes_sent,
        "bytes/received": stats.bytes_received,
        "bytes/sent": stats.bytes_sent,
        "subscriptions/count": gauges.subscriptions,
        "shared_subscriptions/count": gauges.shared_subscriptions,
        "retained messages/count": gauges.retained,
        "retained messages/bytes": stats.retained_bytes,
        "store/messages/count": stored,
        "store/messages/bytes": stats.retained_bytes + gauges.held_bytes,
    }
    tree.update((f"load/{name}", f"{rate:.2f}") for name, rate in loads.items())
    tree.update((f"limits/{name}", count) for name, count in stats.limits.items())
    return {name: str(value) for name, value in tree.items()}


class SysPublisher:
    """Publishes the tree every ``interval`` seconds (0: never), each value when it changed."""

    def __init__(
        self,
        interval: float,
        stats: Stats,
        gauges: Callable[[], Gauges],
        publish_local: PublishLocal,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.stats = stats
        self.gauges = gauges
        self.publish_local = publish_local
        self.loads = LoadAverages(clock)
        self._product = f"raftmq {raftmq_version()}"
        self._published: dict[str, bytes] = {}
        """The payload last published on each topic: an unchanged one is not sent again."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            self.publish_once()
            await asyncio.sleep(self.interval)

    def publish_once(self) -> None:
        loads = self.loads.sample(load_counters(self.stats))
        tree = sys_tree(self.stats, self.gauges(), loads, self._product)
        published = self._published
        for name, value in tree.items():
            topic = f"$SYS/broker/{name}"
            payload = value.encode()
            if published.get(topic) != payload:
                published[topic] = payload
                self.publish_local(topic, payload, True)
