"""$SYS statistics topics, which monitoring tools subscribe to.

Every broker here runs with sys_interval=1 so values refresh within a second and
tests can wait for a change instead of sleeping. Each test has its own broker,
so the counts it sees are caused by its own clients alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from clients import ClientPool, Message, MqttClient, unique
from rawmqtt import PUBACK, PUBLISH, SUBACK, publish, raw_clients, subscribe

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0
BrokerFactory = Callable[..., "RunningBroker"]
INTEGER = re.compile(r"^\d+$")


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> RunningBroker:
    """Overrides conftest's default broker: $SYS every second instead of every ten."""
    return broker_factory(sys_interval=1)


def _latest(client: MqttClient, topics: set[str], timeout: float = TIMEOUT) -> dict[str, Message]:
    """Read until every topic in ``topics`` was seen; the last message per topic wins."""
    seen: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while not topics <= seen.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"never saw {sorted(topics - seen.keys())} in {timeout} s")
        msg = client.get(left)
        seen[msg.topic] = msg
    return seen


def _wait_value(
    client: MqttClient, topic: str, accept: Callable[[int], bool], timeout: float = TIMEOUT
) -> int:
    """The first integer value on ``topic`` that ``accept`` likes; fail with the history."""
    history: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = client.get(left)
        except AssertionError:
            break
        if msg.topic != topic:
            continue
        history.append(msg.payload)
        assert INTEGER.match(msg.payload.decode()), f"{topic}: {msg.payload!r}"
        if accept(int(msg.payload)):
            return int(msg.payload)
    raise AssertionError(f"{topic}: no acceptable value in {timeout} s; saw {history}")


def test_sys_topics_report_version_uptime_and_counters(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """The core statistics exist, are retained for new subscribers, and parse as documented."""
    monitor = clients.connect(broker, subscribe="$SYS/#")
    wanted = {
        f"$SYS/broker/{name}"
        for name in (
            "version",
            "uptime",
            "clients/connected",
            "messages/received",
            "bytes/received",
        )
    }
    seen = _latest(monitor, wanted)
    assert seen["$SYS/broker/version"].payload.strip()
    assert re.match(r"^\d+ seconds$", seen["$SYS/broker/uptime"].payload.decode())
    for name in ("clients/connected", "messages/received", "bytes/received"):
        payload = seen[f"$SYS/broker/{name}"].payload.decode()
        assert INTEGER.match(payload), f"{name}: {payload!r}"


@pytest.mark.raftmq_only
def test_raftmq_sys_topic_set(broker: RunningBroker, clients: ClientPool) -> None:
    """raftmq's own naming: every documented counter, and a version that names the product."""
    monitor = clients.connect(broker, subscribe="$SYS/#")
    counters = [
        "clients/connected",
        "clients/total",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "retained messages/count",
        "subscriptions/count",
    ]
    seen = _latest(monitor, {f"$SYS/broker/{c}" for c in [*counters, "version"]})
    assert re.match(r"^raftmq \S+$", seen["$SYS/broker/version"].payload.decode())
    for counter in counters:
        payload = seen[f"$SYS/broker/{counter}"].payload.decode()
        assert INTEGER.match(payload), f"{counter}: {payload!r}"


def test_connected_clients_count_follows_connections(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """The count must go up on connect and back down on disconnect, not just be present."""
    topic = "$SYS/broker/clients/connected"
    monitor = clients.connect(broker, subscribe=topic)
    _wait_value(monitor, topic, lambda n: n == 1)  # the monitor itself
    other = clients.connect(broker)
    _wait_value(monitor, topic, lambda n: n == 2)
    other.disconnect()
    _wait_value(monitor, topic, lambda n: n == 1)


def test_message_and_byte_counters_grow_with_traffic(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Received counters count what clients sent; 20 publishes of 1000 bytes must show."""
    messages, octets = "$SYS/broker/messages/received", "$SYS/broker/bytes/received"
    monitor = clients.connect(broker, subscribe="$SYS/#")
    seen = _latest(monitor, {messages, octets})
    messages_before, octets_before = int(seen[messages].payload), int(seen[octets].payload)
    pub = clients.connect(broker)
    for _ in range(20):
        pub.publish(unique("traffic"), bytes(1000), qos=1)
    _wait_value(monitor, messages, lambda n: n >= messages_before + 20)
    _wait_value(monitor, octets, lambda n: n >= octets_before + 20_000)


def test_hash_filter_does_not_receive_sys_topics(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """'#' means "all application topics"; $SYS must be asked for by name (MQTT-4.7.2-1)."""
    everything = clients.connect(broker, subscribe="#")
    monitor = clients.connect(broker, subscribe="$SYS/#")
    live = monitor.get()
    while live.retain:  # a live $SYS publish proves one happened while '#' was subscribed
        live = monitor.get()
    sentinel = unique("sync")
    clients.connect(broker).publish(sentinel, b"", qos=1)
    assert [m.topic for m in everything.collect_until(sentinel)] == []


@pytest.mark.raftmq_only  # Mosquitto 2.0 answers 0x87 too, but reports its own version string
def test_clients_cannot_publish_to_sys_topics(broker: RunningBroker) -> None:
    """$SYS is the node's own: a client's publish there is refused (v5 0x87) and not stored."""
    with raw_clients(broker.host, broker.port) as raw:
        forger = raw.connected("sys-forger")
        forger.send(publish("$SYS/broker/version", b"forged", qos=1, packet_id=1, retain=True))
        ack = forger.expect(PUBACK)
        assert (ack.packet_id, ack.reason_code) == (1, 0x87)
        reader = raw.connected("sys-reader")
        reader.send(subscribe(1, [("$SYS/broker/version", 0)]))
        reader.expect(SUBACK)
        retained = reader.expect(PUBLISH)
        assert retained.payload.startswith(b"raftmq ")
