"""$SYS statistics topics, which monitoring tools subscribe to.

Every broker here runs with sys_interval=1 so values refresh within a second and
tests can wait for a change instead of sleeping. Each test has its own broker,
so the counts it sees are caused by its own clients alone.

``MOSQUITTO_TREE`` is what dashboards written for Mosquitto read (its
mosquitto(8) page and src/sys_tree.c): every name must be there, and every
figure must move when clients connect and publish.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from clients import ClientPool, Message, MqttClient, unique
from rawmqtt import (
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    disconnect,
    publish,
    raw_clients,
    subscribe,
)
from sysread import SysWatcher

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0
BrokerFactory = Callable[..., "RunningBroker"]
INTEGER = re.compile(r"^\d+$")
RATE = re.compile(r"^\d+\.\d\d$")
UPTIME = re.compile(r"^\d+ seconds$")

COUNTERS = (
    "clients/connected",
    "clients/active",
    "clients/disconnected",
    "clients/inactive",
    "clients/total",
    "clients/maximum",
    "clients/expired",
    "messages/received",
    "messages/sent",
    "messages/stored",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "publish/bytes/received",
    "publish/bytes/sent",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
    "shared_subscriptions/count",
    "retained messages/count",
    "store/messages/count",
    "store/messages/bytes",
)
LOADS = tuple(
    f"load/{figure}/{window}"
    for figure in (
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "publish/received",
        "publish/sent",
        "publish/dropped",
        "connections",
        "sockets",
    )
    for window in ("1min", "5min", "15min")
)
MOSQUITTO_TREE = ("version", "uptime", *COUNTERS, *LOADS)


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


def _check_format(name: str, payload: str) -> None:
    if name == "version":
        assert payload.strip(), "version is empty"
    elif name == "uptime":
        assert UPTIME.match(payload), f"uptime: {payload!r}"
    elif name.startswith("load/"):
        assert RATE.match(payload), f"{name}: {payload!r} is not a rate like 12.34"
    else:
        assert INTEGER.match(payload), f"{name}: {payload!r} is not an integer"


def test_mosquitto_sub_sees_the_whole_tree(broker: RunningBroker) -> None:
    """What an operator runs first: every name of Mosquitto's tree, formatted as Mosquitto does."""
    command = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port)]
    run = subprocess.run(
        [*command, "-t", "$SYS/broker/#", "-F", "%t|%p", "-W", "2"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert run.returncode == 27, f"mosquitto_sub did not run until -W: {run.stderr}"  # 27: -W
    seen = dict(line.split("|", 1) for line in run.stdout.splitlines())
    missing = [name for name in MOSQUITTO_TREE if f"$SYS/broker/{name}" not in seen]
    assert not missing, f"mosquitto_sub never saw {missing}; it saw {sorted(seen)}"
    for name in MOSQUITTO_TREE:
        _check_format(name, seen[f"$SYS/broker/{name}"])


# Mosquitto 2.0 tests a PUBLISH with `command & 0xF5`, so it leaves retained and QoS 2
# PUBLISHes out of publish/messages/received; the other figures agree with it here.
@pytest.mark.raftmq_only
def test_every_figure_moves_under_load(broker_factory: BrokerFactory, clients: ClientPool) -> None:
    """Connects, publishes, drops, queued and retained messages, an expiry: every figure grows.

    The away session's queue holds 10 of the 21 messages meant for it; the
    rest are dropped. The brief session expires one second after it left.
    The rates only move towards the load, a little per interval, so each is
    only required to rise above what it read before; the counters must grow
    by at least what the test caused.
    """
    broker = broker_factory(sys_interval=1, max_queued_messages=10)
    uid = unique("load")
    with raw_clients(broker.host, broker.port) as raw:
        watcher = SysWatcher(raw.connected(f"{uid}-sys"))
        watcher.equals("clients/connected", 1)  # the watcher itself
        before = {name: payload.decode() for name, payload in watcher.tree(MOSQUITTO_TREE).items()}
        away = clients.connect(
            broker, f"{uid}-away", clean_session=False, subscribe=f"{uid}/#", qos=1
        )
        away.disconnect()
        brief = raw.connected(f"{uid}-brief", properties=[(SESSION_EXPIRY_INTERVAL, 1)])
        brief.send(disconnect())  # its session expires a second later
        clients.connect(broker, f"{uid}-share", subscribe=f"$share/g/{uid}/#", qos=1)
        subscriber = clients.connect(broker, f"{uid}-sub", subscribe=f"{uid}/#", qos=1)
        publisher = clients.connect(broker, f"{uid}-pub")
        for _ in range(20):
            publisher.publish(f"{uid}/q1", bytes(500), qos=1)
        publisher.publish(f"{uid}/kept", b"retained", qos=1, retain=True)
        subscriber.get_many(21)

        at_least = {
            "clients/connected": 4,  # the watcher, the subscriber, the sharer, the publisher
            "clients/active": 4,
            "clients/maximum": 4,
            "clients/disconnected": 1,  # the away session
            "clients/inactive": 1,
        }
        grows_by = {
            "clients/total": 4,
            "clients/expired": 1,
            "messages/received": 5 + 3 + 21 + 21,  # CONNECT, SUBSCRIBE, PUBLISH, PUBACK
            "messages/sent": 5 + 3 + 21 + 21,  # CONNACK, SUBACK, PUBACK, PUBLISH
            "messages/stored": 11,  # 10 queued for the away session, one retained
            "store/messages/count": 11,
            "store/messages/bytes": 9 * 500,
            "publish/messages/received": 21,
            "publish/messages/sent": 21,
            "publish/messages/dropped": 11,
            "publish/bytes/received": 20 * 500,
            "publish/bytes/sent": 20 * 500,
            "bytes/received": 20 * 500,
            "bytes/sent": 20 * 500,
            "subscriptions/count": 3,
            "shared_subscriptions/count": 1,
            "retained messages/count": 1,
        }
        assert at_least.keys() | grows_by.keys() == set(COUNTERS), "a counter is left unchecked"
        for name, floor in at_least.items():
            watcher.wait(name, lambda n, floor=floor: n >= floor)
        for name, growth in grows_by.items():
            watcher.wait(name, lambda n, floor=int(before[name]) + growth: n >= floor)
        for name in LOADS:
            watcher.wait_rate(name, lambda rate, floor=float(before[name]): rate > floor)
        uptime = watcher.tree(["uptime"])["uptime"].decode()
        assert int(uptime.split()[0]) > int(before["uptime"].split()[0]), (before["uptime"], uptime)
