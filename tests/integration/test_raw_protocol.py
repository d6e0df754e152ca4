"""What the broker puts on the wire when clients misbehave or push its limits.

Real clients never send most of these bytes, and their libraries hide much of
what the broker answers (DUP flags, packet ids, topic aliases), so these
tests speak MQTT over a plain socket through ``rawmqtt``. Each error case
also checks that the failure stayed on the one connection: a client that was
already connected, and one that connects afterwards, are still served.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from rawmqtt import (
    CONNACK,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    PAYLOAD_FORMAT_INDICATOR,
    PINGREQ_BYTES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFORMATION,
    SESSION_EXPIRY_INTERVAL,
    SUBACK,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    RawClient,
    RawClients,
    Will,
    ack,
    connect,
    disconnect,
    encode_properties,
    packet,
    publish,
    raw_clients,
    subscribe,
    utf8,
    varint,
)

MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_NAME_INVALID = 0x90
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95

if TYPE_CHECKING:
    from conftest import RunningBroker

raftmq_only = pytest.mark.raftmq_only


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def raw(broker: RunningBroker) -> Iterator[RawClients]:
    with raw_clients(broker.host, broker.port) as clients:
        yield clients


def watcher(raw: RawClients, topic: str) -> RawClient:
    """A v5 client subscribed to ``topic`` at QoS 1, connected before trouble starts."""
    client = raw.connected(f"{topic}-watch")
    client.send(subscribe(1, [(topic, 1)]))
    assert client.expect(SUBACK).reason_codes == [1]
    return client


def assert_still_serving(raw: RawClients, watching: RawClient, topic: str) -> None:
    """A new client can publish and the earlier ``watcher`` still receives."""
    newcomer = raw.connected(f"{topic}-new")
    newcomer.send(publish(topic, b"still serving", qos=1, packet_id=9))
    assert newcomer.expect(PUBACK).packet_id == 9
    delivered = watching.expect(PUBLISH)
    assert (delivered.topic, delivered.payload) == (topic, b"still serving")
    newcomer.send(disconnect())
    assert newcomer.read_until_closed() == []


def assert_closed_with(client: RawClient, level: int, reasons: frozenset[int]) -> None:
    """v5: exactly one DISCONNECT with one of ``reasons``, then EOF; v3: EOF and nothing else."""
    received = [(p.type, p.reason_code) for p in client.read_until_closed()]
    if level == 5:
        assert len(received) == 1, f"expected one DISCONNECT before the close, got {received}"
        assert received[0][0] == DISCONNECT and received[0][1] in reasons, received
    else:
        assert received == [], "a v3.1.1 connection must just be closed"


def _props(level: int) -> bytes:
    """An empty property block, which only v5 packets have."""
    return varint(0) if level == 5 else b""


def _publish_raw_topic(topic: bytes) -> Callable[[int], bytes]:
    return lambda level: packet(0x30, utf8(topic) + _props(level) + b"payload")


@dataclass(frozen=True)
class Fault:
    """One malformed or forbidden packet and what a v5 client must be told about it."""

    name: str
    make: Callable[[int], bytes]
    reasons: frozenset[int]
    v5_only: bool = False
    # Mosquitto 2.0 closes the v5 connection without the DISCONNECT the spec
    # says it SHOULD send (4.13.1), or ignores the fault at every level.
    mosquitto_silent_v5: bool = False
    mosquitto_ignores: bool = False


TWO_FORMAT_INDICATORS = encode_properties(
    [(PAYLOAD_FORMAT_INDICATOR, 0), (PAYLOAD_FORMAT_INDICATOR, 1)]
)

FAULTS = [
    Fault(
        "remaining-length-5-bytes",
        lambda level: bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        frozenset({MALFORMED}),
        mosquitto_silent_v5=True,
    ),
    Fault(
        "pingreq-reserved-flags",
        lambda level: bytes([0xC1, 0x00]),
        frozenset({MALFORMED}),
        mosquitto_ignores=True,
    ),
    Fault(
        "subscribe-flags-0",
        lambda level: packet(0x80, b"\x00\x01" + _props(level) + utf8("a") + b"\x01"),
        frozenset({MALFORMED}),
    ),
    Fault(
        "publish-qos-3",
        lambda level: packet(0x36, utf8("a") + b"\x00\x01" + _props(level) + b"payload"),
        frozenset({MALFORMED}),
    ),
    Fault("topic-with-nul", _publish_raw_topic(b"a/\x00/b"), frozenset({MALFORMED})),
    Fault("topic-invalid-utf8", _publish_raw_topic(b"a/\xc3\x28"), frozenset({MALFORMED})),
    # The spec forbids wildcards in a topic name ([MQTT-3.3.2-2]) without
    # naming a reason code; Protocol Error and Topic Name invalid both fit.
    Fault(
        "wildcard-in-topic",
        _publish_raw_topic(b"a/+/b"),
        frozenset({PROTOCOL_ERROR, TOPIC_NAME_INVALID}),
    ),
    # "It is a Protocol Error to include the Payload Format Indicator more than once."
    Fault(
        "duplicated-property",
        lambda level: packet(0x30, utf8("a") + TWO_FORMAT_INDICATORS + b"x"),
        frozenset({PROTOCOL_ERROR}),
        v5_only=True,
        mosquitto_silent_v5=True,
    ),
    # 0x7E is no property id, so the rest of the packet cannot be parsed.
    Fault(
        "unknown-property-id",
        lambda level: packet(0x30, utf8("a") + varint(2) + b"\x7e\x00" + b"x"),
        frozenset({MALFORMED}),
        v5_only=True,
    ),
    Fault(
        "second-connect",
        lambda level: connect("second", level=level),
        frozenset({PROTOCOL_ERROR}),
        mosquitto_silent_v5=True,
    ),
]


def _fault_params() -> list[object]:
    params = []
    for level in (4, 5):
        for fault in FAULTS:
            if fault.v5_only and level != 5:
                continue
            raftmq_choice = fault.mosquitto_ignores or (level == 5 and fault.mosquitto_silent_v5)
            params.append(
                pytest.param(
                    level,
                    fault,
                    id=f"v{level}-{fault.name}",
                    marks=[raftmq_only] if raftmq_choice else [],
                )
            )
    return params


@pytest.mark.parametrize(("level", "fault"), _fault_params())
def test_malformed_packet_closes_only_that_connection(
    raw: RawClients, uid: str, level: int, fault: Fault
) -> None:
    """Malformed packets must end the connection, and a v5 client should learn why."""
    watching = watcher(raw, f"{uid}/watch")
    bad = raw.connected(f"{uid}-bad", level=level)
    bad.send(fault.make(level))
    assert_closed_with(bad, level, fault.reasons)
    assert_still_serving(raw, watching, f"{uid}/watch")


@pytest.mark.parametrize("level", [4, 5])
def test_packet_over_max_packet_size(
    broker_factory: Callable[..., RunningBroker], uid: str, level: int
) -> None:
    """The limit protects the broker's memory, so it applies before the body is read."""
    broker = broker_factory(max_packet_size=1024)
    with raw_clients(broker.host, broker.port) as raw:
        watching = watcher(raw, f"{uid}/watch")
        bad = raw.connected(f"{uid}-bad", level=level)
        bad.send(publish(f"{uid}/big", b"x" * 2000, level=level))
        assert_closed_with(bad, level, frozenset({PACKET_TOO_LARGE}))
        assert_still_serving(raw, watching, f"{uid}/watch")


def test_first_packet_not_connect_is_closed_silently(raw: RawClients, uid: str) -> None:
    """No DISCONNECT may precede a successful CONNACK ([MQTT-3.14.0-1]): just close."""
    watching = watcher(raw, f"{uid}/watch")
    bad = raw.open()
    bad.send(PINGREQ_BYTES)
    assert bad.read_until_closed() == []
    assert_still_serving(raw, watching, f"{uid}/watch")


def test_truncated_packet_then_close_is_an_abnormal_loss(raw: RawClients, uid: str) -> None:
    """Half a packet and EOF is a lost connection: the will goes out, nothing else breaks."""
    watching = watcher(raw, f"{uid}/watch")
    bad = raw.open()
    connack = bad.connect(f"{uid}-bad", will=Will(f"{uid}/watch", b"lost", qos=1))
    assert connack.reason_code == 0
    bad.send(publish(f"{uid}/t", b"0123456789", qos=1, packet_id=1)[:7])
    bad.sock.shutdown(socket.SHUT_WR)
    assert bad.read_until_closed() == []
    will = watching.expect(PUBLISH)
    assert (will.topic, will.payload) == (f"{uid}/watch", b"lost")
    assert_still_serving(raw, watching, f"{uid}/watch")


def test_receive_maximum_exceeded(broker_factory: Callable[..., RunningBroker], uid: str) -> None:
    """QoS 2 PUBLISHes without PUBREL stay in the window, so the fourth of three overflows."""
    broker = broker_factory(receive_maximum=3)
    with raw_clients(broker.host, broker.port) as raw:
        watching = watcher(raw, f"{uid}/watch")
        bad = raw.open()
        connack = bad.connect(f"{uid}-bad")
        assert connack.prop(RECEIVE_MAXIMUM) == 3
        for packet_id in (1, 2, 3):
            bad.send(publish(f"{uid}/t", b"x", qos=2, packet_id=packet_id))
            assert bad.expect(PUBREC).packet_id == packet_id
        bad.send(publish(f"{uid}/t", b"x", qos=2, packet_id=4))
        assert_closed_with(bad, 5, frozenset({RECEIVE_MAXIMUM_EXCEEDED}))
        assert_still_serving(raw, watching, f"{uid}/watch")


@pytest.mark.parametrize(
    "alias",
    [pytest.param("zero", id="alias-0", marks=raftmq_only), pytest.param("above", id="above-max")],
)
def test_invalid_topic_alias(raw: RawClients, uid: str, alias: str) -> None:
    """Alias 0 and aliases over the advertised maximum are both Topic Alias invalid (3.3.2.3.4).

    Mosquitto 2.0 answers alias 0 with Malformed Packet instead.
    """
    watching = watcher(raw, f"{uid}/watch")
    bad = raw.open()
    connack = bad.connect(f"{uid}-bad")
    maximum = connack.prop(TOPIC_ALIAS_MAXIMUM)
    assert isinstance(maximum, int) and maximum > 0
    value = 0 if alias == "zero" else maximum + 1
    bad.send(publish(f"{uid}/t", b"x", properties=[(TOPIC_ALIAS, value)]))
    assert_closed_with(bad, 5, frozenset({TOPIC_ALIAS_INVALID}))
    assert_still_serving(raw, watching, f"{uid}/watch")


def test_outbound_publish_over_client_maximum_is_dropped(raw: RawClients, uid: str) -> None:
    """A client's Maximum Packet Size binds the broker: too big is skipped, not truncated."""
    topic = f"{uid}/size"
    small = raw.connected(f"{uid}-small", properties=[(MAXIMUM_PACKET_SIZE, 100)])
    small.send(subscribe(1, [(topic, 0)]))
    assert small.expect(SUBACK).reason_codes == [0]
    pub = raw.connected(f"{uid}-pub")
    pub.send(publish(topic, b"B" * 200, qos=1, packet_id=1))
    assert pub.expect(PUBACK).packet_id == 1
    pub.send(publish(topic, b"s" * 20, qos=1, packet_id=2))
    assert pub.expect(PUBACK).packet_id == 2
    received = small.expect(PUBLISH)
    assert received.payload == b"s" * 20
    small.assert_silent(0.3)


def _persistent(level: int) -> dict[str, object]:
    """CONNECT arguments that keep the session after the connection drops."""
    if level == 5:
        return {"clean": False, "properties": [(SESSION_EXPIRY_INTERVAL, 300)]}
    return {"clean": False}


@pytest.mark.parametrize("level", [4, 5])
def test_unacknowledged_messages_are_resent_with_dup(raw: RawClients, uid: str, level: int) -> None:
    """On resume the broker owes every unacknowledged message, flagged DUP, same packet id."""
    topic = f"{uid}/dup"
    sub_id = f"{uid}-sub"
    sub = raw.connected(sub_id, level=level, **_persistent(level))
    sub.send(subscribe(1, [(topic, 2)], level=level))
    assert sub.expect(SUBACK).reason_codes == [2]

    pub = raw.connected(f"{uid}-pub")
    pub.send(publish(topic, b"one", qos=1, packet_id=1))
    assert pub.expect(PUBACK).packet_id == 1
    pub.send(publish(topic, b"two", qos=2, packet_id=2))
    assert pub.expect(PUBREC).packet_id == 2
    pub.send(ack(PUBREL, 2))
    assert pub.expect(PUBCOMP).packet_id == 2

    first = [sub.expect(PUBLISH), sub.expect(PUBLISH)]
    assert [(p.payload, p.qos, p.dup) for p in first] == [(b"one", 1, False), (b"two", 2, False)]
    sub.close()  # without acknowledging either

    sub = raw.open(level)
    connack = sub.connect(sub_id, **_persistent(level))
    assert (connack.reason_code, connack.session_present) == (0, True)
    again = [sub.expect(PUBLISH), sub.expect(PUBLISH)]
    assert [(p.payload, p.qos, p.dup, p.packet_id) for p in again] == [
        (b"one", 1, True, first[0].packet_id),
        (b"two", 2, True, first[1].packet_id),
    ]
    sub.send(ack(PUBACK, again[0].packet_id or 0))
    sub.send(ack(PUBREC, again[1].packet_id or 0))
    assert sub.expect(PUBREL).packet_id == again[1].packet_id
    sub.send(ack(PUBCOMP, again[1].packet_id or 0))
    sub.assert_silent(0.5)


@pytest.mark.parametrize("level", [4, 5])
def test_pubrel_is_resent_after_pubrec(raw: RawClients, uid: str, level: int) -> None:
    """Once PUBREC'd the message is delivered; on resume only the release is owed."""
    topic = f"{uid}/rel"
    sub_id = f"{uid}-sub"
    sub = raw.connected(sub_id, level=level, **_persistent(level))
    sub.send(subscribe(1, [(topic, 2)], level=level))
    assert sub.expect(SUBACK).reason_codes == [2]

    pub = raw.connected(f"{uid}-pub")
    pub.send(publish(topic, b"four", qos=2, packet_id=2))
    assert pub.expect(PUBREC).packet_id == 2
    pub.send(ack(PUBREL, 2))
    assert pub.expect(PUBCOMP).packet_id == 2
    delivered = sub.expect(PUBLISH)
    assert (delivered.payload, delivered.qos) == (b"four", 2)
    sub.send(ack(PUBREC, delivered.packet_id or 0))
    assert sub.expect(PUBREL).packet_id == delivered.packet_id
    sub.close()  # without PUBCOMP

    sub = raw.open(level)
    connack = sub.connect(sub_id, **_persistent(level))
    assert (connack.reason_code, connack.session_present) == (0, True)
    assert sub.expect(PUBREL).packet_id == delivered.packet_id
    sub.send(ack(PUBCOMP, delivered.packet_id or 0))
    sub.assert_silent(0.5)


def test_qos2_resent_publish_is_delivered_once(raw: RawClients, uid: str) -> None:
    """A publisher that lost the PUBREC resends with DUP; subscribers must not see it twice."""
    topic = f"{uid}/once"
    sub = raw.connected(f"{uid}-sub")
    sub.send(subscribe(1, [(topic, 1)]))
    assert sub.expect(SUBACK).reason_codes == [1]

    pub = raw.connected(f"{uid}-pub")
    pub.send(publish(topic, b"exactly once", qos=2, packet_id=7))
    assert pub.expect(PUBREC).packet_id == 7
    pub.send(publish(topic, b"exactly once", qos=2, packet_id=7, dup=True))
    assert pub.expect(PUBREC).packet_id == 7
    pub.send(ack(PUBREL, 7))
    assert pub.expect(PUBCOMP).packet_id == 7
    pub.send(publish(topic, b"marker"))

    first = sub.expect(PUBLISH)
    assert first.payload == b"exactly once"
    sub.send(ack(PUBACK, first.packet_id or 0))
    assert sub.expect(PUBLISH).payload == b"marker"


def test_mqisdp_protocol_level_3(raw: RawClients, uid: str) -> None:
    """MQTT 3.1 clients still exist in the field; their CONNACK is the two-byte v3 form."""
    topic = f"{uid}/v31"
    old = raw.open(level=3)
    old.send(connect(f"{uid}-31", level=3))
    connack = old.expect(CONNACK)
    assert connack.body == b"\x00\x00"
    old.send(subscribe(1, [(topic, 1)], level=3))
    assert old.expect(SUBACK).reason_codes == [1]
    old.send(publish(topic, b"from 3.1", qos=1, packet_id=2, level=3))
    # Its own PUBACK and the delivery to itself may come in either order.
    delivered, acked = sorted((old.read(), old.read()), key=lambda p: p.type)
    assert (delivered.type, delivered.topic, delivered.payload) == (PUBLISH, topic, b"from 3.1")
    assert (acked.type, acked.packet_id) == (PUBACK, 2)


def test_unknown_protocol_level_is_refused(raw: RawClients, uid: str) -> None:
    """Level 6 does not exist: a CONNACK old clients can read must say so, then close."""
    watching = watcher(raw, f"{uid}/watch")
    future = raw.open(level=6)
    future.send(connect(f"{uid}-6", level=6))
    received = future.read_until_closed()
    assert len(received) == 1 and received[0].type == CONNACK, received
    body = received[0].body
    assert body == b"\x00\x01" or body[:2] == b"\x00\x84", f"CONNACK body {body!r}"
    assert_still_serving(raw, watching, f"{uid}/watch")


def test_silent_connection_closed_after_connect_timeout(
    broker_factory: Callable[..., RunningBroker],
) -> None:
    """An idle socket that never sends CONNECT only costs the broker until connect_timeout."""
    broker = broker_factory(connect_timeout=1)
    with raw_clients(broker.host, broker.port) as raw:
        idle = raw.open()
        start = time.monotonic()
        assert idle.read_until_closed(timeout=5) == []
        assert 0.8 <= time.monotonic() - start < 3.0


def test_no_topic_alias_for_client_that_allows_none(raw: RawClients, uid: str) -> None:
    """Without Topic Alias Maximum in CONNECT the client has said 0: no aliases ever."""
    topic = f"{uid}/plain"
    sub = raw.connected(f"{uid}-sub")
    sub.send(subscribe(1, [(topic, 0)]))
    assert sub.expect(SUBACK).reason_codes == [0]
    pub = raw.connected(f"{uid}-pub")
    for payload in (b"1", b"2"):
        pub.send(publish(topic, payload))
    received = [sub.expect(PUBLISH), sub.expect(PUBLISH)]
    assert [(p.topic, p.payload, p.prop(TOPIC_ALIAS)) for p in received] == [
        (topic, b"1", None),
        (topic, b"2", None),
    ]


@raftmq_only
def test_broker_assigns_outgoing_topic_aliases(raw: RawClients, uid: str) -> None:
    """Repeated long topics cost bandwidth; raftmq sends each topic once, then only its alias."""
    topic = f"{uid}/aliased/with/a/longer/name"
    sub = raw.connected(f"{uid}-sub", properties=[(TOPIC_ALIAS_MAXIMUM, 5)])
    sub.send(subscribe(1, [(topic, 0)]))
    assert sub.expect(SUBACK).reason_codes == [0]
    pub = raw.connected(f"{uid}-pub")
    for payload in (b"1", b"2", b"3"):
        pub.send(publish(topic, payload))
    first, second, third = sub.expect(PUBLISH), sub.expect(PUBLISH), sub.expect(PUBLISH)
    alias = first.prop(TOPIC_ALIAS)
    assert isinstance(alias, int) and 1 <= alias <= 5
    assert (first.topic, first.payload) == (topic, b"1")
    assert (second.topic, second.prop(TOPIC_ALIAS), second.payload) == ("", alias, b"2")
    assert (third.topic, third.prop(TOPIC_ALIAS), third.payload) == ("", alias, b"3")


def test_no_problem_information_when_not_requested(
    broker_factory: Callable[..., RunningBroker], uid: str
) -> None:
    """Request Problem Information 0 forbids reason strings on acks (3.1.2.11.7)."""
    broker = broker_factory(max_topic_levels=2)
    with raw_clients(broker.host, broker.port) as raw:
        sub = raw.connected(f"{uid}-quiet", properties=[(REQUEST_PROBLEM_INFORMATION, 0)])
        sub.send(subscribe(1, [(f"{uid}/too/deep", 1), (f"{uid}/ok", 1)]))
        suback = sub.expect(SUBACK)
        assert suback.reason_codes == [0x8F, 1]
        assert suback.props(REASON_STRING) == [] and suback.props(USER_PROPERTY) == []


def test_problem_information_by_default(
    broker_factory: Callable[..., RunningBroker], uid: str
) -> None:
    """Without Request Problem Information 0, a refused subscription says why."""
    broker = broker_factory(max_topic_levels=2)
    with raw_clients(broker.host, broker.port) as raw:
        sub = raw.connected(f"{uid}-chatty")
        sub.send(subscribe(1, [(f"{uid}/too/deep", 1), (f"{uid}/ok", 1)]))
        suback = sub.expect(SUBACK)
        assert suback.reason_codes == [0x8F, 1]
        (reason,) = suback.props(REASON_STRING)
        assert isinstance(reason, str) and f"{uid}/too/deep" in reason


@pytest.mark.parametrize("level", [4, 5])
def test_offline_queue_keeps_publish_order_across_qos(
    raw: RawClients, uid: str, level: int
) -> None:
    """Queued QoS 1 and 2 messages go out on resume in the order they were published.

    Checked on the wire: paho hands QoS 2 messages to the application only at
    PUBREL, so through paho a QoS 1 message may overtake one that came first.
    """
    topic = f"{uid}/order"
    sub_id = f"{uid}-sub"
    sub = raw.connected(sub_id, level=level, **_persistent(level))
    sub.send(subscribe(1, [(topic, 2)], level=level))
    assert sub.expect(SUBACK).reason_codes == [2]
    sub.close()

    pub = raw.connected(f"{uid}-pub")
    sent = [(f"m{i}".encode(), 1 + i % 2) for i in range(30)]
    for packet_id, (payload, qos) in enumerate(sent, start=1):
        pub.send(publish(topic, payload, qos=qos, packet_id=packet_id))
        if qos == 1:
            assert pub.expect(PUBACK).packet_id == packet_id
        else:
            assert pub.expect(PUBREC).packet_id == packet_id
            pub.send(ack(PUBREL, packet_id))
            assert pub.expect(PUBCOMP).packet_id == packet_id

    sub = raw.open(level)
    assert sub.connect(sub_id, **_persistent(level)).session_present
    received = []
    while len(received) < len(sent):
        packet = sub.read()
        if packet.type == PUBREL:
            sub.send(ack(PUBCOMP, packet.packet_id or 0))
            continue
        assert packet.type == PUBLISH, packet
        received.append((packet.payload, packet.qos))
        sub.send(ack(PUBACK if packet.qos == 1 else PUBREC, packet.packet_id or 0))
    assert received == sent
