"""MQTT 3.1.1 behaviour seen by real clients over real sockets.

paho drives everything a well-behaved client does. Wills and keepalive need a
client that misbehaves on purpose (vanishes without DISCONNECT, goes silent
without PINGREQ), which paho will not do, so those tests use a bare socket.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from clients import ClientPool, gather, unique, wait_published

if TYPE_CHECKING:
    from conftest import RunningBroker

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"


# -- a bare-socket 3.1.1 client ----------------------------------------------------------


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def _str(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


def _connect_packet(client_id: str, keepalive: int, will: Will | None) -> bytes:
    flags = 0x02  # clean session
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += _str(will.topic) + struct.pack("!H", len(will.payload)) + will.payload
    return _packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def _publish_qos0(topic: str, payload: bytes) -> bytes:
    return _packet(0x30, _str(topic) + payload)


class RawClient:
    """Just enough MQTT 3.1.1 to connect and then misbehave precisely."""

    def __init__(self, broker: RunningBroker) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=5)

    def connect(self, client_id: str, keepalive: int, will: Will | None = None) -> float:
        """Send CONNECT, check the CONNACK accepts it; return when it arrived."""
        self.sock.sendall(_connect_packet(client_id, keepalive, will))
        assert self._read_exactly(4) == b"\x20\x02\x00\x00", "CONNACK did not accept"
        return time.monotonic()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {data!r}")
            data += chunk
        return data

    def read(self, n: int, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        return self._read_exactly(n)

    def wait_closed(self, timeout: float) -> float:
        """Block until the broker closes the connection; return when it did."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            except ConnectionResetError:
                return time.monotonic()
            if not data:
                return time.monotonic()
            raise AssertionError(f"unexpected bytes from broker: {data!r}")
        raise AssertionError(f"broker kept the connection open for {timeout} s")

    def close(self) -> None:
        """Drop the TCP connection with no DISCONNECT: an abnormal loss for the broker."""
        self.sock.close()


@pytest.fixture
def raw_client(broker: RunningBroker) -> Iterator[Callable[[], RawClient]]:
    made: list[RawClient] = []

    def make() -> RawClient:
        made.append(RawClient(broker))
        return made[-1]

    yield make
    for raw in made:
        raw.close()


# -- QoS and ordering --------------------------------------------------------------------


@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_publish_and_subscription(
    broker: RunningBroker, clients: ClientPool, pub_qos: int
) -> None:
    """A subscription's QoS is a ceiling, and so is the publisher's: delivery uses the lower."""
    topic = unique("qos")
    subscribers = {}
    for sub_qos in (0, 1, 2):
        sub = clients.connect(broker)
        assert sub.subscribe(topic, sub_qos) == [sub_qos]
        subscribers[sub_qos] = sub
    pub = clients.connect(broker)
    payload = f"published at {pub_qos}".encode()
    pub.publish(topic, payload, qos=pub_qos)
    for sub_qos, sub in subscribers.items():
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
            topic,
            payload,
            min(pub_qos, sub_qos),
            False,
        ), f"subscribed at QoS {sub_qos}"
    subscribers[2].assert_no_message(0.3)  # exactly once, also at QoS 2
    for sub in subscribers.values():
        sub.assert_no_message(0.0)


def test_burst_of_qos1_messages_keeps_publisher_order(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Per-publisher order is an MQTT guarantee; an in-flight window must not reorder."""
    topic = unique("burst")
    sub = clients.connect(broker, subscribe=topic, qos=1)
    pub = clients.connect(broker)
    infos = [pub.publish(topic, str(i), qos=1, wait=False) for i in range(500)]
    for info in infos:
        wait_published(info, timeout=15)
    got = sub.get_many(500, timeout=15)
    assert [m.payload for m in got] == [str(i).encode() for i in range(500)]
    assert {m.qos for m in got} == {1}


@pytest.mark.raftmq_only  # Mosquitto sends one copy per matching subscription
def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """raftmq chose one copy per client, not one per matching subscription."""
    base = unique("overlap")
    sub = clients.connect(broker)
    assert sub.subscribe([(f"{base}/+", 1), (f"{base}/#", 2)]) == [1, 2]
    pub = clients.connect(broker)
    pub.publish(f"{base}/b", b"once", qos=2)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == (f"{base}/b", b"once", 2)
    sub.assert_no_message(0.5)


def test_shared_subscription_gives_each_message_to_one_member_round_robin(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """A group shares the load, while an ordinary subscription on the same topics still gets all."""
    base = unique("shared")
    members = [clients.connect(broker, subscribe=f"$share/g/{base}/#", qos=1) for _ in range(3)]
    normal = clients.connect(broker, subscribe=f"{base}/#", qos=1)
    pub = clients.connect(broker)
    sent = [str(i).encode() for i in range(30)]
    for payload in sent:
        pub.publish(f"{base}/t", payload, qos=1)

    assert [m.payload for m in normal.get_many(30)] == sent
    shares = gather(members, 30)
    for member in members:
        member.assert_no_message(0.2)
    received = [m.payload for share in shares for m in share]
    assert sorted(received, key=int) == sent, "every message to exactly one member"
    for share in shares:
        payloads = [int(m.payload) for m in share]
        assert payloads == sorted(payloads), "a member sees its share in publish order"
    assert [len(share) for share in shares] == [10, 10, 10], "round robin over three members"


# -- sessions ------------------------------------------------------------------------------


def test_persistent_session_queues_qos1_and_qos2_while_offline(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """clean_session=0 keeps subscriptions and queues messages; clean_session=1 throws both away."""
    topic, client_id = unique("offline"), unique("persistent")
    first = clients.connect(broker, client_id, clean_session=False, subscribe=topic, qos=2)
    assert first.connack is not None
    assert first.connack.session_present is False
    first.disconnect()

    pub = clients.connect(broker)
    sent = [(f"m{i}".encode(), 1 + i % 2) for i in range(6)]
    for payload, qos in sent:
        pub.publish(topic, payload, qos=qos)

    resumed = clients.client(broker, client_id, clean_session=False)
    assert resumed.connect().session_present is True
    got = [(m.payload, m.qos) for m in resumed.get_many(6)]
    # paho hands a QoS 2 message over only after PUBREL, a round trip later than a
    # QoS 1 one, so order is only observable per QoS level through paho.
    for qos in (1, 2):
        assert [g for g in got if g[1] == qos] == [s for s in sent if s[1] == qos]
    resumed.assert_no_message(0.3)
    resumed.disconnect()

    pub.publish(topic, b"queued then discarded", qos=1)
    clean = clients.client(broker, client_id, clean_session=True)
    assert clean.connect().session_present is False
    clean.assert_no_message(0.5)


def test_qos0_messages_are_not_queued_for_offline_session(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """QoS 0 promises nothing, so queuing it would only cost memory (queue_qos0 = false)."""
    topic, client_id = unique("offline-q0"), unique("persistent")
    clients.connect(broker, client_id, clean_session=False, subscribe=topic, qos=1).disconnect()
    pub = clients.connect(broker)
    pub.publish(topic, b"qos0", qos=0)
    pub.publish(topic, b"qos1", qos=1)
    resumed = clients.client(broker, client_id, clean_session=False)
    assert resumed.connect().session_present is True
    msg = resumed.get()
    assert (msg.payload, msg.qos) == (b"qos1", 1)
    resumed.assert_no_message(0.3)


@pytest.mark.parametrize(
    ("overflow", "kept"),
    [
        (None, range(5)),
        pytest.param("drop_oldest", range(5, 10), marks=pytest.mark.raftmq_only),
    ],
)
def test_offline_queue_is_bounded_and_overflow_policy_applies(
    broker_factory: Callable[..., RunningBroker],
    clients: ClientPool,
    overflow: str | None,
    kept: range,
) -> None:
    """A bounded queue protects the broker from a client that never returns.

    The default (drop_new, as Mosquitto does) keeps the oldest messages.
    """
    config: dict[str, object] = {"max_queued_messages": 5}
    if overflow is not None:
        config["queue_overflow"] = overflow
    broker = broker_factory(**config)
    topic, client_id = unique("bounded"), unique("persistent")
    clients.connect(broker, client_id, clean_session=False, subscribe=topic, qos=1).disconnect()
    pub = clients.connect(broker)
    for i in range(10):
        pub.publish(topic, f"m{i}", qos=1)
    resumed = clients.client(broker, client_id, clean_session=False)
    assert resumed.connect().session_present is True
    assert [m.payload for m in resumed.get_many(5)] == [f"m{i}".encode() for i in kept]
    resumed.assert_no_message(0.5)


def test_second_connection_with_same_client_id_takes_over(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Only one connection may own a client id; the old one must stop receiving at once."""
    topic, client_id = unique("takeover"), unique("owner")
    first = clients.connect(broker, client_id, subscribe=topic, qos=1)
    second = clients.connect(broker, client_id, subscribe=topic, qos=1)
    first.wait_disconnected()
    pub = clients.connect(broker)
    pub.publish(topic, b"after takeover", qos=1)
    assert second.get().payload == b"after takeover"
    first.assert_no_message(0.3)
    assert not second.disconnected.is_set()


# -- retained messages -------------------------------------------------------------------


def test_retained_message_reaches_later_subscribers_and_is_replaced(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Only the last retained message per topic is kept and it is flagged as retained."""
    topic = unique("retained")
    pub = clients.connect(broker)
    pub.publish(topic, b"v1", qos=1, retain=True)
    early = clients.connect(broker, subscribe=topic, qos=1)
    msg = early.get()
    assert (msg.payload, msg.qos, msg.retain) == (b"v1", 1, True)

    pub.publish(topic, b"v2", qos=1, retain=True)
    assert early.get().payload == b"v2"
    late = clients.connect(broker, subscribe=topic, qos=1)
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"v2", True)
    late.assert_no_message(0.3)


def test_live_delivery_of_retained_publish_has_retain_flag_cleared(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """In 3.1.1 retain=1 tells a subscriber "this is old state", which a live message is not."""
    topic = unique("live")
    sub = clients.connect(broker, subscribe=topic, qos=1)
    clients.connect(broker).publish(topic, b"now", qos=1, retain=True)
    msg = sub.get()
    assert (msg.payload, msg.retain) == (b"now", False)


def test_empty_retained_payload_clears_the_topic(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """The empty retained publish is forwarded like any message, but is not itself kept."""
    topic = unique("clear")
    pub = clients.connect(broker)
    pub.publish(topic, b"state", qos=1, retain=True)
    sub = clients.connect(broker, subscribe=topic, qos=1)
    assert sub.get().payload == b"state"
    pub.publish(topic, b"", qos=1, retain=True)
    assert sub.get().payload == b""
    clients.connect(broker, subscribe=topic, qos=1).assert_no_message(0.5)


def test_wildcard_subscribe_receives_every_matching_retained_message(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Retained state is per topic, so a wildcard subscriber gets one message per matching topic."""
    base = unique("tree")
    retained = {base: b"root", f"{base}/a": b"A", f"{base}/b": b"B", f"{base}/a/b": b"AB"}
    pub = clients.connect(broker)
    for topic, payload in retained.items():
        pub.publish(topic, payload, qos=1, retain=True)
    pub.publish(f"{base}/c", b"not retained", qos=1)
    pub.publish(f"{unique('other')}/a", b"other tree", qos=1, retain=True)

    everything = clients.connect(broker, subscribe=f"{base}/#", qos=1)
    got = everything.get_many(4)
    assert {m.topic: m.payload for m in got} == retained
    assert all(m.retain for m in got)
    one_level = clients.connect(broker, subscribe=f"{base}/+", qos=1)
    got = one_level.get_many(2)
    assert {m.topic: m.payload for m in got} == {f"{base}/a": b"A", f"{base}/b": b"B"}
    everything.assert_no_message(0.3)
    one_level.assert_no_message(0.0)


# -- wills -------------------------------------------------------------------------------


def test_will_is_published_when_connection_drops_without_disconnect(
    broker: RunningBroker, clients: ClientPool, raw_client: Callable[[], RawClient]
) -> None:
    """A will exists to report a client that vanished without saying goodbye."""
    topic = unique("will")
    watcher = clients.connect(broker, subscribe=topic, qos=1)
    raw = raw_client()
    raw.connect(unique("mortal"), keepalive=60, will=Will(topic, b"gone", qos=1))
    raw.close()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"gone", 1, False)


@pytest.mark.raftmq_only  # Mosquitto 2.0.11 checks keepalives only every ~5 s
def test_will_is_published_when_keepalive_expires(
    broker: RunningBroker, clients: ClientPool, raw_client: Callable[[], RawClient]
) -> None:
    """A client that is silent for 1.5 keepalives counts as lost, even with its socket open."""
    topic = unique("will-keepalive")
    watcher = clients.connect(broker, subscribe=topic, qos=1)
    raw = raw_client()
    connected_at = raw.connect(unique("silent"), keepalive=1, will=Will(topic, b"timed out"))
    msg = watcher.get()
    assert msg.payload == b"timed out"
    assert 1.0 <= msg.received_at - connected_at <= 3.0


def test_will_is_not_published_after_normal_disconnect(
    broker: RunningBroker, clients: ClientPool, raw_client: Callable[[], RawClient]
) -> None:
    """DISCONNECT means the client left on purpose, so the broker must discard the will."""
    topic = unique("will-disconnect")
    watcher = clients.connect(broker, subscribe=topic, qos=1)
    raw = raw_client()
    raw.connect(unique("polite"), keepalive=60, will=Will(topic, b"must not appear"))
    raw.send(_publish_qos0(topic, b"last words") + DISCONNECT)
    raw.close()
    assert watcher.get().payload == b"last words"  # the broker has read up to DISCONNECT
    watcher.assert_no_message(1.0)


def test_will_retain_flag_makes_the_will_retained(
    broker: RunningBroker, clients: ClientPool, raw_client: Callable[[], RawClient]
) -> None:
    """A retained will leaves "offline" state behind for subscribers that come later."""
    topic = unique("will-retain")
    watcher = clients.connect(broker, subscribe=topic, qos=1)
    raw = raw_client()
    raw.connect(unique("mortal"), keepalive=60, will=Will(topic, b"offline", retain=True))
    raw.close()
    live = watcher.get()
    assert (live.payload, live.retain) == (b"offline", False)
    later = clients.connect(broker, subscribe=topic, qos=1).get()
    assert (later.payload, later.retain) == (b"offline", True)


# -- keepalive ---------------------------------------------------------------------------


@pytest.mark.raftmq_only  # Mosquitto 2.0.11 checks keepalives only every ~5 s
def test_silent_client_is_disconnected_after_one_and_a_half_keepalives(
    raw_client: Callable[[], RawClient],
) -> None:
    """The broker must notice a dead peer (1.5 x keepalive) but never before keepalive ran out."""
    raw = raw_client()
    connected_at = raw.connect(unique("silent"), keepalive=2)
    closed_after = raw.wait_closed(timeout=6.0) - connected_at
    assert 2.0 <= closed_after <= 4.0


def test_client_sending_pingreq_stays_connected(raw_client: Callable[[], RawClient]) -> None:
    """PINGREQ alone is enough traffic to keep a connection alive well past 1.5 x keepalive."""
    raw = raw_client()
    raw.connect(unique("pinger"), keepalive=2)
    for _ in range(5):
        time.sleep(1.0)
        raw.send(PINGREQ)
        assert raw.read(2) == PINGRESP


# -- topic matching ----------------------------------------------------------------------


def test_wildcard_filters_match_by_level(broker: RunningBroker, clients: ClientPool) -> None:
    """'+' is exactly one level, '#' any number including zero (so a/# matches a)."""
    base = unique("wild")
    topics = [base, f"{base}/a", f"{base}/b", f"{base}/a/b", f"{base}/b/b", f"{base}/a/b/c"]
    expected = {
        f"{base}/+": {f"{base}/a", f"{base}/b"},
        f"{base}/+/b": {f"{base}/a/b", f"{base}/b/b"},
        f"{base}/#": set(topics),
        f"{base}/a/#": {f"{base}/a", f"{base}/a/b", f"{base}/a/b/c"},
        "+/a/+": {f"{base}/a/b"},
        f"{base}/+/+/#": {f"{base}/a/b", f"{base}/b/b", f"{base}/a/b/c"},
    }
    sentinel = unique("sync")
    subs = {f: clients.connect(broker, subscribe=[(f, 1), (sentinel, 1)]) for f in expected}
    pub = clients.connect(broker)
    for topic in topics:
        pub.publish(topic, b"x", qos=1)
    pub.publish(sentinel, b"", qos=1)
    received = {f: {m.topic for m in sub.collect_until(sentinel)} for f, sub in subs.items()}
    assert received == expected


def test_leading_wildcards_do_not_match_dollar_topics(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """$-topics are broker or application internals: only a filter naming the $ level sees them."""
    dollar, plain = "$" + unique("app"), unique("plain")
    expected = {
        "#": {f"{plain}/x"},
        "+/x": {f"{plain}/x"},
        f"{dollar}/#": {f"{dollar}/x"},
    }
    sentinel = unique("sync")
    subs = {f: clients.connect(broker, subscribe=[(f, 1), (sentinel, 1)]) for f in expected}
    pub = clients.connect(broker)
    pub.publish(f"{dollar}/x", b"x", qos=1)
    pub.publish(f"{plain}/x", b"x", qos=1)
    pub.publish(sentinel, b"", qos=1)
    received = {f: {m.topic for m in sub.collect_until(sentinel)} for f, sub in subs.items()}
    assert received == expected


# -- shutdown ----------------------------------------------------------------------------


def test_sigterm_disconnects_clients_and_exits_zero(
    broker: RunningBroker, clients: ClientPool
) -> None:
    """Orchestrators stop brokers with SIGTERM; that is a clean shutdown, not a crash."""
    connected = [clients.connect(broker) for _ in range(2)]
    returncode = broker.stop()
    assert returncode == 0, "\n".join(broker.output[-20:])
    for client in connected:
        client.wait_disconnected()
