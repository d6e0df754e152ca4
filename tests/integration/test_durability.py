"""A node killed with SIGKILL keeps every promise it made, once restarted on its data dir.

The clients are raw sockets (``rawmqtt``) so that the test knows exactly which
packet ids the broker acknowledged before it died, and plays both ends of
MQTT's retry rules by hand: the publisher resends what was not acknowledged
(with DUP) and PUBRELs what was, the subscriber acknowledges what it gets and
counts each message the way an application would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from rawmqtt import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    Closed,
    Packet,
    RawClient,
    Will,
    ack,
    disconnect,
    publish,
    raw_clients,
    subscribe,
)

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only

HOUR = [(SESSION_EXPIRY_INTERVAL, 3600)]
STREAM = 300  # messages per stream
KILL_AFTER = 120  # acknowledged messages before the kill
WINDOW = 40  # unacknowledged QoS 1/2 PUBLISHes at once (the node allows 100)
LOST_PUBREC_EVERY = 25  # QoS 2: the publisher "misses" every 25th PUBREC (see Publisher)
DEADLINE = 30.0


def payload(i: int) -> bytes:
    return b"msg-%06d" % i


def index_of(data: bytes) -> int:
    return int(data.removeprefix(b"msg-"))


class Publisher:
    """A persistent-session publisher of ``STREAM`` numbered messages; message i has id i+1.

    It records what the broker acknowledged (PUBACK, or PUBREC for QoS 2)
    until the connection dies, and afterwards resumes as MQTT says: QoS 1
    resends every unacknowledged message with DUP; QoS 2 resends PUBREL for
    every PUBREC'd one and PUBLISH with DUP for the others. To check that
    the node remembers incoming QoS 2 ids across the crash, it ignores every
    ``LOST_PUBREC_EVERY``-th PUBREC, as if it had been lost on the wire, and
    resends that PUBLISH after the restart: the node must answer PUBREC and
    not deliver it again.
    """

    def __init__(self, qos: int, topic: str) -> None:
        self.qos = qos
        self.topic = topic
        self.acked: set[int] = set()
        """Acknowledged by the node: PUBACK (QoS 1) or a PUBREC we did not ignore (QoS 2)."""
        self.ignored_pubrec: set[int] = set()
        self.lose_pubrecs = True
        self.completed: set[int] = set()
        self.next = 0
        self.error: BaseException | None = None

    def _unfinished(self) -> int:
        done = self.acked if self.qos == 1 else self.completed
        return self.next - len(done) - len(self.ignored_pubrec)

    def _handle(self, client: RawClient, pkt: Packet) -> None:
        assert pkt.packet_id is not None
        i = pkt.packet_id - 1
        if pkt.type == PUBACK:
            assert self.qos == 1 and pkt.reason_code in (0, None), pkt
            self.acked.add(i)
        elif pkt.type == PUBREC:
            assert self.qos == 2 and pkt.reason_code in (0, None), pkt
            if self.lose_pubrecs and i % LOST_PUBREC_EVERY == LOST_PUBREC_EVERY - 1:
                self.ignored_pubrec.add(i)
                return
            self.acked.add(i)
            client.send(ack(PUBREL, i + 1))
        elif pkt.type == PUBCOMP:
            self.completed.add(i)
        else:
            raise AssertionError(f"publisher got {pkt}")

    def stream(self, client: RawClient, pace: float) -> None:
        """Send the rest of the stream within the window; return when all is done or the
        node is gone (Closed)."""
        try:
            while len(self.completed if self.qos == 2 else self.acked) < STREAM:
                while self.next < STREAM and self._unfinished() < WINDOW:
                    client.send(
                        publish(
                            self.topic, payload(self.next), qos=self.qos, packet_id=self.next + 1
                        )
                    )
                    self.next += 1
                    if pace:
                        time.sleep(pace)
                self._handle(client, client.read(timeout=DEADLINE))
        except (Closed, ConnectionError):
            return
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def resume(self, client: RawClient) -> None:
        """After the restart: the retries MQTT prescribes, then the rest of the stream."""
        for i in range(self.next):
            if self.qos == 1 and i not in self.acked:
                client.send(publish(self.topic, payload(i), qos=1, packet_id=i + 1, dup=True))
            elif self.qos == 2 and i in self.acked and i not in self.completed:
                client.send(ack(PUBREL, i + 1))
            elif self.qos == 2 and i not in self.completed:
                client.send(publish(self.topic, payload(i), qos=2, packet_id=i + 1, dup=True))
        self.ignored_pubrec.clear()
        self.lose_pubrecs = False
        self.stream(client, pace=0)
        if self.error is not None:
            raise self.error


class Subscriber:
    """Acknowledges what arrives and delivers each message to the "application" once per
    MQTT's rules: a QoS 2 PUBLISH whose packet id awaits PUBREL is the same message again."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.awaiting_pubrel: dict[int, int] = {}
        """QoS 2 packet id -> message index, from PUBLISH until PUBREL."""
        self.error: BaseException | None = None

    def handle(self, client: RawClient, pkt: Packet) -> None:
        if pkt.type == PUBREL:
            assert pkt.packet_id is not None
            self.awaiting_pubrel.pop(pkt.packet_id, None)
            client.send(ack(PUBCOMP, pkt.packet_id))
            return
        assert pkt.type == PUBLISH and pkt.packet_id is not None, pkt
        i = index_of(pkt.payload)
        if pkt.qos == 1:
            self.delivered.append(i)
            client.send(ack(PUBACK, pkt.packet_id))
            return
        assert pkt.qos == 2, pkt
        known = self.awaiting_pubrel.get(pkt.packet_id)
        if known is None:
            self.delivered.append(i)
            self.awaiting_pubrel[pkt.packet_id] = i
        else:
            assert pkt.dup and known == i, f"packet id {pkt.packet_id} reused before PUBREL: {pkt}"
        client.send(ack(PUBREC, pkt.packet_id))

    def run(self, client: RawClient, until: Callable[[], bool]) -> None:
        try:
            while not until():
                self.handle(client, client.read(timeout=DEADLINE))
        except (Closed, ConnectionError):
            return
        except BaseException as exc:
            self.error = exc

    def read_all(self, client: RawClient) -> None:
        """Everything outstanding, then a quiet second in which nothing more may come."""
        deadline = time.monotonic() + DEADLINE
        while len(set(self.delivered)) < STREAM and time.monotonic() < deadline:
            self.handle(client, client.read(timeout=DEADLINE))
        quiet_until = time.monotonic() + 1.0
        while (left := quiet_until - time.monotonic()) > 0:
            try:
                self.handle(client, client.read(timeout=left))
            except TimeoutError:
                break
        assert not self.awaiting_pubrel, f"PUBRELs never came for {self.awaiting_pubrel}"


def check_delivery(qos: int, acked_at_kill: set[int], delivered: list[int]) -> None:
    """Everything acknowledged before the kill arrived (the publisher never resent those,
    so only the node's store can have kept them), the rest after the resends; in order,
    and once for QoS 2."""
    lost = acked_at_kill - set(delivered)
    assert not lost, f"{len(lost)} acknowledged messages lost: {sorted(lost)[:10]}"
    missing = set(range(STREAM)) - set(delivered)
    assert not missing, f"{len(missing)} messages never delivered: {sorted(missing)[:10]}"
    first_seen: list[int] = list(dict.fromkeys(delivered))
    assert first_seen == list(range(STREAM)), "messages arrived out of order"
    if qos == 2:
        duplicates = len(delivered) - len(first_seen)
        assert duplicates == 0, f"QoS 2 delivered {duplicates} messages twice"


def persistent_subscriber(
    raw_open: Callable[[], RawClient], client_id: str, topic: str, qos: int
) -> RawClient:
    client = raw_open()
    connack = client.connect(client_id, clean=True, properties=HOUR)
    assert connack.reason_code == 0
    client.send(subscribe(1, [(topic, qos)]))
    assert client.expect(SUBACK).reason_codes == [qos]
    return client


def kill_when_acked(broker: RunningBroker, publisher: Publisher, thread: threading.Thread) -> None:
    deadline = time.monotonic() + DEADLINE
    while len(publisher.acked) < KILL_AFTER and thread.is_alive():
        assert time.monotonic() < deadline, "the stream did not get going"
        time.sleep(0.002)
    broker.kill()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    if publisher.error is not None:
        raise publisher.error
    assert KILL_AFTER <= len(publisher.acked) < STREAM, "the kill did not hit mid-stream"


@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("subscriber_online", [False, True], ids=["offline", "connected"])
def test_kill_9_mid_stream_loses_no_acknowledged_message(
    broker_factory: Callable[..., RunningBroker], qos: int, subscriber_online: bool
) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"])
    topic = f"durable/q{qos}"
    publisher = Publisher(qos, topic)
    subscriber = Subscriber()
    with raw_clients(broker.host, broker.port) as raw:
        sub = persistent_subscriber(raw.open, "subscriber", topic, qos)
        if not subscriber_online:
            sub.send(disconnect())
            sub.close()
        pub = raw.connected("publisher", clean=True, properties=HOUR)
        reader = None
        if subscriber_online:
            reader = threading.Thread(target=subscriber.run, args=(sub, lambda: False))
            reader.start()
        writer = threading.Thread(target=publisher.stream, args=(pub, 0.002))
        writer.start()
        kill_when_acked(broker, publisher, writer)
        acked_at_kill = set(publisher.acked)
        if reader is not None:
            reader.join(DEADLINE)
            assert not reader.is_alive()
            if subscriber.error is not None:
                raise subscriber.error

    broker.restart()
    with raw_clients(broker.host, broker.port) as raw:
        sub = raw.open()
        assert sub.connect("subscriber", clean=False, properties=HOUR).session_present
        pub = raw.open()
        assert pub.connect("publisher", clean=False, properties=HOUR).session_present
        writer = threading.Thread(target=publisher.resume, args=(pub,))
        writer.start()
        subscriber.read_all(sub)
        writer.join(DEADLINE)
        assert not writer.is_alive()
    assert len(publisher.completed if qos == 2 else publisher.acked) == STREAM
    check_delivery(qos, acked_at_kill, subscriber.delivered)


def _state_before_kill(broker: RunningBroker) -> float:
    """Sessions of every kind, a retained message and a client connected at the kill.

    Returns when the short-lived session's client went away (time.monotonic()).
    """
    with raw_clients(broker.host, broker.port) as raw:
        keeper = raw.connected("keeper", clean=True, properties=HOUR)
        keeper.send(subscribe(1, [("kept/#", 1)]))
        keeper.expect(SUBACK)
        keeper.send(disconnect())
        v3 = raw.connected("keeper-v3", level=4, clean=False)
        v3.send(subscribe(1, [("kept/#", 1)], level=4))
        v3.expect(SUBACK)
        v3.close()  # abnormal: no DISCONNECT
        pub = raw.connected("retainer")
        pub.send(publish("retained/r", b"still here", qos=1, packet_id=1, retain=True))
        assert pub.expect(PUBACK).reason_code == 0x10  # no subscriber, but retained
        pub.send(disconnect())
        raw.connected(
            "lost-at-crash",
            clean=True,
            properties=HOUR,
            will=Will("kept/will", b"lost-at-crash is gone", qos=1),
        )
        short = raw.connected("short", clean=True, properties=[(SESSION_EXPIRY_INTERVAL, 4)])
        short.send(subscribe(1, [("kept/#", 1)]))
        short.expect(SUBACK)
        short.send(disconnect())
        gone_at = time.monotonic()
        time.sleep(0.2)  # the DISCONNECTs are handled, then the node dies
        broker.kill()
    return gone_at


def test_sessions_expiry_retained_and_wills_survive_kill_9(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"])
    short_gone_at = _state_before_kill(broker)
    time.sleep(2.0)  # down for 2 of the short session's 4 seconds
    broker.restart()
    with raw_clients(broker.host, broker.port) as raw:
        keeper = raw.open()
        assert keeper.connect("keeper", clean=False, properties=HOUR).session_present
        will = keeper.expect(PUBLISH)
        assert (will.topic, will.payload) == ("kept/will", b"lost-at-crash is gone"), (
            "the will of a client the crash cut off is published after the restart"
        )
        keeper.send(ack(PUBACK, will.packet_id or 0))
        v3 = raw.open(level=4)
        assert v3.connect("keeper-v3", clean=False).session_present
        assert v3.expect(PUBLISH).payload == b"lost-at-crash is gone"
        pub = raw.connected("after-restart")
        pub.send(publish("kept/new", b"to the restored subscriptions", qos=1, packet_id=7))
        pub.expect(PUBACK)
        assert keeper.expect(PUBLISH).payload == b"to the restored subscriptions"
        assert v3.expect(PUBLISH).payload == b"to the restored subscriptions"
        fresh = raw.connected("fresh")
        fresh.send(subscribe(1, [("retained/r", 1)]))
        fresh.expect(SUBACK)
        retained = fresh.expect(PUBLISH)
        assert (retained.payload, retained.retain) == (b"still here", True)

        # The short session's 4 s count from its client's DISCONNECT, the node's
        # downtime included; counted from the restart it would still be there.
        time.sleep(max(0.0, short_gone_at + 4.5 - time.monotonic()))
        short = raw.open()
        assert not short.connect("short", clean=False, properties=HOUR).session_present


def test_a_session_that_expired_while_the_node_was_down_is_gone(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"])
    with raw_clients(broker.host, broker.port) as raw:
        brief = raw.connected("brief", clean=True, properties=[(SESSION_EXPIRY_INTERVAL, 1)])
        brief.send(subscribe(1, [("t", 1)]))
        brief.expect(SUBACK)
        brief.send(disconnect())
        time.sleep(0.1)
    broker.kill()
    time.sleep(1.5)
    broker.restart()
    with raw_clients(broker.host, broker.port) as raw:
        assert not raw.open().connect("brief", clean=False, properties=HOUR).session_present


def test_a_graceful_restart_keeps_sessions_without_publishing_wills(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"])
    with raw_clients(broker.host, broker.port) as raw:
        watcher = raw.connected("watcher", clean=True, properties=HOUR)
        watcher.send(subscribe(1, [("w/#", 1)]))
        watcher.expect(SUBACK)
        watcher.send(disconnect())
        raw.connected("leaver", clean=True, properties=HOUR, will=Will("w/leaver", b"x", qos=1))
        assert broker.stop() == 0
    broker.restart()
    with raw_clients(broker.host, broker.port) as raw:
        watcher = raw.open()
        assert watcher.connect("watcher", clean=False, properties=HOUR).session_present
        assert raw.open().connect("leaver", clean=False, properties=HOUR).session_present
        watcher.assert_silent(1.0)


def test_memory_durability_keeps_nothing(broker_factory: Callable[..., RunningBroker]) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"], durability="memory")
    with raw_clients(broker.host, broker.port) as raw:
        keeper = raw.connected("keeper", clean=True, properties=HOUR)
        keeper.send(subscribe(1, [("m/#", 1)]))
        keeper.expect(SUBACK)
        keeper.send(disconnect())
        pub = raw.connected("pub")
        pub.send(publish("m/retained", b"r", qos=1, packet_id=1, retain=True))
        pub.expect(PUBACK)
        pub.send(publish("m/queued", b"q", qos=1, packet_id=2))
        pub.expect(PUBACK)
    assert not list(broker.data_dir.glob("*.sqlite3*")), "memory durability writes no store"
    broker.kill()
    broker.restart()
    with raw_clients(broker.host, broker.port) as raw:
        keeper = raw.open()
        assert not keeper.connect("keeper", clean=False, properties=HOUR).session_present
        fresh = raw.connected("fresh")
        fresh.send(subscribe(1, [("m/#", 1)]))
        fresh.expect(SUBACK)
        fresh.assert_silent(0.5)
