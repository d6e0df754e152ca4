"""Slow subscribers push back on publishers instead of making the broker drop or balloon."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil
import pytest
from rawmqtt import PUBLISH, SUBACK, RawClient, publish, raw_clients, subscribe

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # write_stall_timeout is raftmq's; Mosquitto buffers

MESSAGES = 40_000
PAYLOAD = 1000  # 40 MB in all: more than any socket buffer between the two clients


def small_receive_buffer(client: RawClient) -> None:
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


def blast(client: RawClient, topic: str, count: int, done: threading.Event) -> None:
    """Publish ``count`` QoS 0 messages as fast as the broker reads them."""
    batch = b"".join(
        publish(topic, i.to_bytes(4, "big") + bytes(PAYLOAD - 4), level=4) for i in range(1000)
    )
    try:
        for _ in range(count // 1000):
            client.sock.sendall(batch)
    finally:
        done.set()


def sequence_numbers(client: RawClient, count: int, timeout: float) -> list[int]:
    numbers = []
    deadline = time.monotonic() + timeout
    while len(numbers) < count:
        packet = client.read(max(deadline - time.monotonic(), 0.01))
        assert packet.type == PUBLISH
        numbers.append(int.from_bytes(packet.payload[:4], "big"))
    return numbers


def rss(broker: RunningBroker) -> int:
    return int(psutil.Process(broker.pid).memory_info().rss)


def test_slow_subscriber_holds_publisher_back_without_loss(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    broker = broker_factory()
    with raw_clients(broker.host, broker.port) as raw:
        slow = raw.open(level=4)
        small_receive_buffer(slow)
        assert slow.connect("bp-slow").reason_code == 0
        slow.send(subscribe(1, [("bp/t", 0)], level=4))
        slow.expect(SUBACK)
        publisher = raw.connected("bp-pub", level=4)
        publisher.sock.settimeout(30)
        before = rss(broker)
        done = threading.Event()
        sender = threading.Thread(target=blast, args=(publisher, "bp/t", MESSAGES, done))
        sender.start()
        time.sleep(1.5)  # the subscriber reads nothing meanwhile
        assert not done.is_set(), "the publisher was never held back"
        growth = rss(broker) - before
        assert growth < MESSAGES * PAYLOAD // 2, f"broker grew by {growth} bytes"
        numbers = [n for _ in range(MESSAGES // 1000) for n in range(1000)]
        assert sequence_numbers(slow, MESSAGES, timeout=60) == numbers
        sender.join(30)
        assert done.is_set()


def test_stalled_subscriber_holds_publishers_only_for_the_stall_timeout(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    broker = broker_factory(write_stall_timeout=0.5, max_queued_messages=100)
    with raw_clients(broker.host, broker.port) as raw:
        stalled = raw.open(level=4)
        small_receive_buffer(stalled)
        assert stalled.connect("bp-stalled").reason_code == 0
        stalled.send(subscribe(1, [("bp/stalled", 0)], level=4))
        stalled.expect(SUBACK)
        other = raw.connected("bp-other", level=4)
        other.send(subscribe(1, [("bp/other", 0)], level=4))
        other.expect(SUBACK)
        publisher = raw.connected("bp-pub2", level=4)
        publisher.sock.settimeout(30)
        before = rss(broker)
        done = threading.Event()
        blast(publisher, "bp/stalled", MESSAGES, done)  # returns only if not held forever
        publisher.send(publish("bp/other", b"still flowing", level=4))
        assert other.expect(PUBLISH, timeout=10).payload == b"still flowing"
        growth = rss(broker) - before
        assert growth < MESSAGES * PAYLOAD // 2, f"broker grew by {growth} bytes"
