"""Every configurable limit: the reason code a client gets when it hits it, and its $SYS count.

Each test starts a broker with the limit set low, pushes one client over it
with the raw client (reason codes are what is under test, and client
libraries hide them), checks what v3.1.1 and v5 clients are told where they
differ, checks that the node goes on serving, and waits for the refusal to
show in `$SYS/broker/limits/<name>`. The watcher that reads $SYS connects
first, so it is never the one refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
from rawmqtt import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    Closed,
    RawClient,
    RawClients,
    Will,
    ack,
    disconnect,
    publish,
    raw_clients,
    subscribe,
)
from sysread import SysWatcher

if TYPE_CHECKING:
    from conftest import RunningBroker

BrokerFactory = Callable[..., "RunningBroker"]

CLIENT_IDENTIFIER_NOT_VALID = 0x85
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
RECEIVE_MAXIMUM_EXCEEDED = 0x93
PACKET_TOO_LARGE = 0x95
MESSAGE_RATE_TOO_HIGH = 0x96
QUOTA_EXCEEDED = 0x97
V3_IDENTIFIER_REJECTED = 2
V3_SERVER_UNAVAILABLE = 3
V3_SUBACK_FAILURE = 0x80

LEVELS = [pytest.param(4, id="v3.1.1"), pytest.param(5, id="v5")]

# Every test reads raftmq's own $SYS/broker/limits/ counters, which Mosquitto has not.
pytestmark = pytest.mark.raftmq_only


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def limited(
    broker_factory: BrokerFactory, **config: object
) -> Iterator[tuple[RawClients, SysWatcher]]:
    """A broker with ``config`` (and $SYS every second), its raw clients and a $SYS watcher."""
    broker = broker_factory(sys_interval=1, **config)
    with raw_clients(broker.host, broker.port) as raw:
        yield raw, SysWatcher(raw.connected(f"sys-{uuid.uuid4().hex[:8]}"))


def assert_closed(client: RawClient, level: int, reason: int) -> None:
    """v5: one DISCONNECT with ``reason``, then EOF. v3 has no DISCONNECT: just EOF."""
    received = [(p.type, p.reason_code) for p in client.read_until_closed()]
    assert received == ([(DISCONNECT, reason)] if level == 5 else []), received


def assert_refused(client: RawClient, client_id: str, expected: int, **kwargs: object) -> None:
    """CONNECT answered with CONNACK ``expected`` and the socket closed after it."""
    connack = client.connect(client_id, **kwargs)
    assert connack.reason_code == expected, connack
    assert client.read_until_closed() == []


def subscriber(raw: RawClients, client_id: str, topic_filter: str, level: int = 5) -> RawClient:
    client = raw.connected(client_id, level=level)
    client.send(subscribe(1, [(topic_filter, 1)], level=level))
    assert client.expect(SUBACK).reason_codes == [1]
    return client


def receive_all(client: RawClient, quiet: float = 0.5) -> list[tuple[str | None, bytes]]:
    """Every PUBLISH until ``quiet`` seconds pass without one; QoS 1 ones are acknowledged."""
    got: list[tuple[str | None, bytes]] = []
    while True:
        try:
            pkt = client.read(quiet)
        except TimeoutError:
            return got
        assert pkt.type == PUBLISH, pkt
        got.append((pkt.topic, pkt.payload))
        if pkt.qos == 1:
            assert pkt.packet_id is not None
            client.send(ack(PUBACK, pkt.packet_id))


# -- connections -------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_connect_over_max_connections_is_refused(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """v5: CONNACK 0x97 Quota exceeded; v3: rc 3. A takeover at the limit is let in."""
    with limited(broker_factory, max_connections=3) as (raw, sys):
        first = raw.connected(f"{uid}-1", level=level)
        raw.connected(f"{uid}-2", level=level)
        expected = QUOTA_EXCEEDED if level == 5 else V3_SERVER_UNAVAILABLE
        assert_refused(raw.open(level), f"{uid}-3", expected)
        # Replacing a live connection does not add one, so it is not refused.
        again = raw.connected(f"{uid}-1", level=level)
        first.read_until_closed()
        # Leaving frees a slot: the broker counts the DISCONNECT before it closes the socket.
        again.send(disconnect(level=level))
        assert again.read_until_closed() == []
        raw.connected(f"{uid}-4", level=level)
        sys.equals("limits/connections", 1)


def test_sockets_far_over_max_connections_are_closed_on_accept(
    broker_factory: BrokerFactory,
) -> None:
    """Sockets that never send CONNECT are bounded too: past max_connections + 16 (the
    least grace), new ones are reset at once instead of living until connect_timeout."""
    with limited(broker_factory, max_connections=2, connect_timeout=30) as (raw, sys):
        silent = [raw.open() for _ in range(2 + 16 - 1)]  # the watcher holds one socket
        extra = raw.open()
        start = time.monotonic()
        assert extra.read_until_closed(timeout=5) == []
        assert time.monotonic() - start < 3, "refused only after a timeout, not on accept"
        for client in silent:
            client.close()
        deadline = time.monotonic() + 5
        while True:  # the broker learns about the closes asynchronously
            newcomer = raw.open()
            try:
                if newcomer.connect("after-flood").reason_code == 0:
                    break
            except (Closed, OSError):
                pass
            assert time.monotonic() < deadline, "no room for a client after the sockets closed"
            time.sleep(0.1)
        sys.wait("limits/connections", lambda n: n >= 1)


# -- client id, topic levels, packet size, receive maximum ---------------------


@pytest.mark.parametrize("level", LEVELS)
def test_client_id_over_max_length_is_refused(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """The limit is in UTF-8 bytes, as the spec counts client ids: 17 'é' are 34 bytes."""
    with limited(broker_factory, max_client_id_length=32) as (raw, sys):
        expected = CLIENT_IDENTIFIER_NOT_VALID if level == 5 else V3_IDENTIFIER_REJECTED
        raw.connected(uid + "x" * (32 - len(uid)), level=level)
        assert_refused(raw.open(level), uid + "x" * (33 - len(uid)), expected)
        assert_refused(raw.open(level), "é" * 17, expected)
        sys.equals("limits/client_id_length", 2)


@pytest.mark.parametrize("level", LEVELS)
def test_topic_levels_over_max_are_refused(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """SUBSCRIBE: that filter fails (v5 0x8F, v3 0x80) and the connection stays; a will
    topic fails the CONNECT; a PUBLISH closes the connection (v5 DISCONNECT 0x90)."""
    with limited(broker_factory, max_topic_levels=3) as (raw, sys):
        client = raw.connected(f"{uid}-sub", level=level)
        client.send(subscribe(1, [(f"{uid}/b/c/d", 0), (f"{uid}/b/c", 0)], level=level))
        failure = TOPIC_FILTER_INVALID if level == 5 else V3_SUBACK_FAILURE
        assert client.expect(SUBACK).reason_codes == [failure, 0]

        will = Will(f"{uid}/b/c/d", b"gone")
        expected = TOPIC_NAME_INVALID if level == 5 else V3_SERVER_UNAVAILABLE
        assert_refused(raw.open(level), f"{uid}-will", expected, will=will)

        client.send(publish(f"{uid}/b/c", b"ok", level=level))
        assert client.expect(PUBLISH).payload == b"ok"
        client.send(publish(f"{uid}/b/c/d", b"deep", level=level))
        assert_closed(client, level, TOPIC_NAME_INVALID)
        sys.equals("limits/topic_levels", 3)


@pytest.mark.parametrize("level", LEVELS)
def test_packet_over_max_packet_size_is_counted(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    with limited(broker_factory, max_packet_size=1024) as (raw, sys):
        client = raw.connected(uid, level=level)
        client.send(publish(f"{uid}/big", b"x" * 2000, level=level))
        assert_closed(client, level, PACKET_TOO_LARGE)
        sys.equals("limits/packet_size", 1)


def test_receive_maximum_exceeded_is_counted(broker_factory: BrokerFactory, uid: str) -> None:
    """v5 only: v3 has no Receive Maximum; its incoming QoS 2 state is bounded by the
    65535 packet ids a client can use at once."""
    with limited(broker_factory, receive_maximum=2) as (raw, sys):
        client = raw.connected(uid)
        for packet_id in (1, 2, 3):
            client.send(publish(f"{uid}/t", b"x", qos=2, packet_id=packet_id))
        packets = client.read_until_closed()
        assert [(p.type, p.reason_code) for p in packets][-1] == (
            DISCONNECT,
            RECEIVE_MAXIMUM_EXCEEDED,
        ), packets
        sys.equals("limits/receive_maximum", 1)


# -- session queues ------------------------------------------------------------


def _persistent(level: int) -> dict[str, object]:
    """CONNECT arguments for a session that outlives its connection."""
    if level == 5:
        return {"clean": False, "properties": [(SESSION_EXPIRY_INTERVAL, 300)]}
    return {"clean": False}


def _offline_subscriber(raw: RawClients, client_id: str, topic: str, level: int) -> None:
    client = raw.connected(client_id, level=level, **_persistent(level))
    client.send(subscribe(1, [(topic, 1)], level=level))
    assert client.expect(SUBACK).reason_codes == [1]
    client.send(disconnect(level=level))
    assert client.read_until_closed() == []


def _publish_qos1(raw: RawClients, client_id: str, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1; every PUBACK is a success: a subscriber's full queue is its own
    matter, not the publisher's (Mosquitto answers the same)."""
    pub = raw.connected(client_id)
    for packet_id, payload in enumerate(payloads, start=1):
        pub.send(publish(topic, payload, qos=1, packet_id=packet_id))
        puback = pub.expect(PUBACK)
        assert (puback.packet_id, puback.reason_code) == (packet_id, 0), puback


@pytest.mark.parametrize("level", LEVELS)
def test_queue_over_max_queued_messages_drops_new_messages(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    topic = f"{uid}/q"
    with limited(broker_factory, max_queued_messages=3) as (raw, sys):
        _offline_subscriber(raw, f"{uid}-sub", topic, level)
        _publish_qos1(raw, f"{uid}-pub", topic, [b"m%d" % i for i in range(5)])
        back = raw.open(level)
        assert back.connect(f"{uid}-sub", **_persistent(level)).session_present
        assert receive_all(back) == [(topic, b"m0"), (topic, b"m1"), (topic, b"m2")]
        sys.equals("limits/queued_messages", 2)
        sys.equals("messages/dropped", 2)


@pytest.mark.parametrize(
    ("policy", "kept", "dropped"),
    [
        # 400+400 fit in 1000, the third 400 does not, 100 still does.
        ("drop_new", [b"a" * 400, b"b" * 400, b"d" * 100], 1),
        # Each arrival evicts the oldest until it fits; 900 needs all three gone;
        # 1001 could never fit, so it is dropped rather than emptying the queue.
        ("drop_oldest", [b"e" * 900], 4),
    ],
)
def test_queue_over_max_queued_bytes(
    broker_factory: BrokerFactory, uid: str, policy: str, kept: list[bytes], dropped: int
) -> None:
    topic = f"{uid}/q"
    payloads = [b"a" * 400, b"b" * 400, b"c" * 400]
    payloads += [b"d" * 100] if policy == "drop_new" else [b"e" * 900, b"f" * 1001]
    with limited(broker_factory, max_queued_bytes=1000, queue_overflow=policy) as (raw, sys):
        _offline_subscriber(raw, f"{uid}-sub", topic, 5)
        _publish_qos1(raw, f"{uid}-pub", topic, payloads)
        back = raw.open()
        assert back.connect(f"{uid}-sub", **_persistent(5)).session_present
        assert [payload for _, payload in receive_all(back)] == kept
        sys.equals("limits/queued_bytes", dropped)


# -- retained messages ---------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_retained_messages_over_max_are_not_stored(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """The node's own $SYS messages count too, so the test measures them first.

    Over the limit, v5 QoS 1 gets PUBACK 0x97 and the message is not delivered
    either (an error ack means "not accepted"); v3 cannot be told, so its
    message is acknowledged and delivered live, only not stored. Replacing or
    clearing a retained topic is always allowed.
    """
    limit = 100
    with limited(broker_factory, max_retained_messages=limit) as (raw, sys):
        stored = sys.wait("retained messages/count", lambda n: n > 1)
        room = limit - stored
        live = subscriber(raw, f"{uid}-live", f"{uid}/#")
        pub = raw.connected(f"{uid}-pub", level=level)
        codes = []
        for i in range(room + 2):
            message = publish(
                f"{uid}/{i}", b"r%d" % i, qos=1, packet_id=i + 1, retain=True, level=level
            )
            pub.send(message)
            codes.append(pub.expect(PUBACK).reason_code)
        refused = QUOTA_EXCEEDED if level == 5 else 0
        assert codes == [0] * room + [refused] * 2
        delivered = [payload for _, payload in receive_all(live)]
        live_count = room if level == 5 else room + 2
        assert delivered == [b"r%d" % i for i in range(live_count)]

        pub.send(publish(f"{uid}/0", b"replaced", qos=1, packet_id=1, retain=True, level=level))
        assert pub.expect(PUBACK).reason_code == 0
        pub.send(publish(f"{uid}/1", b"", qos=1, packet_id=2, retain=True, level=level))
        assert pub.expect(PUBACK).reason_code == 0
        pub.send(publish(f"{uid}/new", b"fits", qos=1, packet_id=3, retain=True, level=level))
        assert pub.expect(PUBACK).reason_code == 0

        late = raw.connected(f"{uid}-late")
        late.send(subscribe(1, [(f"{uid}/#", 1)]))
        assert late.expect(SUBACK).reason_codes == [1]
        retained = dict(receive_all(late))
        expected = {f"{uid}/{i}": b"r%d" % i for i in range(2, room)}
        expected |= {f"{uid}/0": b"replaced", f"{uid}/new": b"fits"}
        assert retained == expected
        sys.equals("limits/retained_messages", 2)


@pytest.mark.parametrize("level", LEVELS)
def test_retained_bytes_over_max_are_not_stored(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """Same answers as the count limit. A QoS 0 publish has no ack to carry 0x97, so in
    both versions it is delivered live and only not stored."""
    with limited(broker_factory, max_retained_bytes=20_000) as (raw, sys):
        live = subscriber(raw, f"{uid}-live", f"{uid}/#")
        pub = raw.connected(f"{uid}-pub", level=level)
        big = b"B" * 30_000
        pub.send(publish(f"{uid}/big", big, qos=1, packet_id=1, retain=True, level=level))
        puback = pub.expect(PUBACK)
        assert puback.reason_code == (QUOTA_EXCEEDED if level == 5 else 0), puback
        pub.send(publish(f"{uid}/big0", big, retain=True, level=level))
        pub.send(publish(f"{uid}/small", b"s" * 5000, qos=1, packet_id=2, retain=True, level=level))
        assert pub.expect(PUBACK).reason_code == 0
        delivered = [topic for topic, _ in receive_all(live)]
        expected = [f"{uid}/big0", f"{uid}/small"]
        assert delivered == (expected if level == 5 else [f"{uid}/big", *expected])

        late = raw.connected(f"{uid}-late")
        late.send(subscribe(1, [(f"{uid}/#", 1)]))
        assert late.expect(SUBACK).reason_codes == [1]
        assert [topic for topic, _ in receive_all(late)] == [f"{uid}/small"]
        sys.equals("limits/retained_bytes", 2)
        sys.wait("retained messages/bytes", lambda n: n >= 5000 + len(f"{uid}/small"))


# -- publish rate ----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_publish_rate_over_max_disconnects(
    broker_factory: BrokerFactory, uid: str, level: int
) -> None:
    """A burst of one second's worth passes; the next PUBLISH disconnects (v5: 0x96).
    A client publishing below the rate is never affected."""
    with limited(broker_factory, max_publish_rate=5) as (raw, sys):
        steady = raw.connected(f"{uid}-steady", level=level)
        for i in range(8):
            steady.send(publish(f"{uid}/steady", b"%d" % i, level=level))
            time.sleep(0.3)  # 3.3/s, under 5/s
        steady.send(publish(f"{uid}/steady", b"last", qos=1, packet_id=1, level=level))
        assert steady.expect(PUBACK).packet_id == 1

        flood = raw.connected(f"{uid}-flood", level=level)
        flood.send(b"".join(publish(f"{uid}/flood", b"x", level=level) for _ in range(30)))
        assert_closed(flood, level, MESSAGE_RATE_TOO_HIGH)
        sys.equals("limits/publish_rate", 1)
