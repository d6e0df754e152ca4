"""The per-client MQTT protocol, driven by script: no socket, no event loop.

Each test feeds ``ClientProtocol`` packets (or bytes) and reads back the bytes
it wants sent, decoded with the client-side decoder. The socket-level tests of
the same features stay in tests/integration (test_raw_protocol, test_v5_paho).
"""

from __future__ import annotations

from typing import Any

import pytest

from raftmq.node.codec import Decoder, encode
from raftmq.node.config import load_config
from raftmq.node.message import Message
from raftmq.node.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    SubscriptionOptions,
)
from raftmq.node.protocol import (
    CLOSED,
    CONNECTED,
    ClientProtocol,
    Disconnected,
    ProtocolViolation,
)
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.session import NEVER_EXPIRES, Delivery, Session
from raftmq.node.stats import Stats


class RecordingLink:
    """Stands in for the asyncio driver: records what the protocol asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def output_ready(self) -> None:
        self.calls.append("output_ready")

    def flush(self) -> None:
        self.calls.append("flush")

    def close(self, linger: bool = False) -> None:
        self.calls.append("close-linger" if linger else "close")

    def connected(self) -> None:
        self.calls.append("connected")

    def hold(self, publisher: Any) -> None:
        self.calls.append("hold")

    def peer_certificate(self) -> Any:
        return None


def make(**overrides: object) -> tuple[ClientProtocol, RecordingLink]:
    link = RecordingLink()
    config = load_config(overrides={"listen": ["tcp://127.0.0.1:0"], **overrides})
    return ClientProtocol(config, Stats(), link, "tcp"), link


def sent(client: ClientProtocol) -> list[Any]:
    """Decode (and take) everything the protocol queued for the client."""
    data = b"".join(client.take_output())
    return Decoder(protocol_level=client.protocol_level).feed(data)


def session_for(client: ClientProtocol) -> Session:
    return Session("c", max_queued=100, overflow_drops_oldest=False, queue_qos0=False)


def connected(level: int = 5, **properties: object) -> tuple[ClientProtocol, Session]:
    """A client past CONNECT, its CONNACK already taken."""
    client, _ = make()
    packet = Connect("c", protocol_level=level, keepalive=30, properties=dict(properties))
    client.check_order(packet)
    granted = client.negotiate(packet, lambda: "made-up")
    session = session_for(client)
    client.accept(packet, granted, session, 1, False)
    session.connection = client
    sent(client)
    return client, session


def test_only_a_first_connect_may_come_before_connected() -> None:
    client, _ = make()
    with pytest.raises(ProtocolViolation) as before:
        client.check_order(Pingreq())
    assert before.value.reason == ReasonCode.PROTOCOL_ERROR
    assert "PINGREQ before CONNECT" in before.value.detail
    client, _ = connected()
    with pytest.raises(ProtocolViolation, match="second CONNECT"):
        client.check_order(Connect("c", protocol_level=5))


def test_auth_is_always_out_of_turn() -> None:
    client, _ = connected()
    with pytest.raises(ProtocolViolation) as exc:
        client.receive(Auth(0x18))
    assert exc.value.reason == ReasonCode.PROTOCOL_ERROR


def test_connack_carries_the_node_limits_and_the_assigned_id() -> None:
    client, link = make(receive_maximum=50, topic_alias_maximum=7, max_inflight=20)
    packet = Connect("", protocol_level=5, properties={"receive_maximum": 5})
    client.check_order(packet)
    granted = client.negotiate(packet, lambda: "made-up")
    assert granted.assigned and granted.client_id == "made-up"
    client.accept(packet, granted, session_for(client), 3, False)
    (connack,) = sent(client)
    assert isinstance(connack, Connack) and connack.reason_code == 0
    props = connack.properties
    assert props["receive_maximum"] == 50
    assert props["topic_alias_maximum"] == 7
    assert props["assigned_client_identifier"] == "made-up"
    assert client.send_window == 5, "the client's receive maximum bounds what we send"
    assert client.state == CONNECTED and client.epoch == 3
    assert "connected" in link.calls


@pytest.mark.parametrize(("asked", "granted"), [(0, 120), (500, 120), (60, 60)])
def test_v5_keepalive_is_capped_and_announced(asked: int, granted: int) -> None:
    client, _ = make(max_keepalive=120)
    packet = Connect("c", protocol_level=5, keepalive=asked)
    client.check_order(packet)
    result = client.negotiate(packet, lambda: "x")
    assert result.keepalive == granted
    assert result.server_keepalive == (None if asked == granted else granted)


def test_v3_keepalive_above_the_maximum_is_refused() -> None:
    client, link = make(max_keepalive=120)
    packet = Connect("c", protocol_level=4, keepalive=500)
    client.check_order(packet)
    with pytest.raises(Disconnected):
        client.negotiate(packet, lambda: "x")
    (connack,) = sent(client)
    assert connack.reason_code == 2  # identifier rejected: v3 cannot say otherwise
    assert link.calls[-1] == "close-linger"  # the refusing CONNACK must be readable


def test_v3_without_client_id_and_without_clean_session_is_refused() -> None:
    client, _ = make()
    packet = Connect("", protocol_level=4, clean_start=False)
    client.check_order(packet)
    with pytest.raises(Disconnected):
        client.negotiate(packet, lambda: "x")
    assert sent(client)[0].reason_code == 2


def test_session_expiry_comes_from_the_version_rules() -> None:
    client, _ = make()
    v5 = Connect("c", protocol_level=5, properties={"session_expiry_interval": 99})
    assert client.negotiate(v5, lambda: "x").expiry_interval == 99
    v3 = Connect("c", protocol_level=4, clean_start=False)
    assert client.negotiate(v3, lambda: "x").expiry_interval == NEVER_EXPIRES


def test_incoming_topic_alias_is_set_then_resolved() -> None:
    client, _ = connected()
    assert client.topic_of(Publish("a/b", properties={"topic_alias": 2})) == "a/b"
    assert client.topic_of(Publish("", properties={"topic_alias": 2})) == "a/b"


@pytest.mark.parametrize(
    ("alias", "topic", "reason"),
    [
        (0, "a", ReasonCode.TOPIC_ALIAS_INVALID),
        (11, "a", ReasonCode.TOPIC_ALIAS_INVALID),
        (3, "", ReasonCode.PROTOCOL_ERROR),
    ],
)
def test_bad_incoming_alias_breaks_the_protocol(alias: int, topic: str, reason: int) -> None:
    client, _ = make(topic_alias_maximum=10)
    with pytest.raises(ProtocolViolation) as exc:
        client.topic_of(Publish(topic, properties={"topic_alias": alias}))
    assert exc.value.reason == reason


def test_outgoing_aliases_are_assigned_up_to_the_clients_maximum() -> None:
    client, _ = connected(topic_alias_maximum=1)
    for topic in ("t/1", "t/1", "t/2"):
        message = Message.create(topic, b"x", 0, False)
        client.send_publish(Delivery(message, 0, False), None, False)
    first, second, third = sent(client)
    assert (first.topic, first.properties.get("topic_alias")) == ("t/1", 1)
    assert (second.topic, second.properties.get("topic_alias")) == ("", 1)
    assert third.topic == "t/2" and "topic_alias" not in third.properties


def test_publish_over_the_clients_maximum_packet_size_is_dropped_as_delivered() -> None:
    client, session = connected(maximum_packet_size=64)
    session.deliver(Delivery(Message.create("t", b"x" * 100, 1, False), 1, False))
    assert sent(client) == []
    assert not session.outgoing, "discarded as if delivered, so the window is not held"


def test_acks_say_no_matching_subscribers_only_to_v5() -> None:
    v5, _ = connected(5)
    v5.acknowledge(Publish("t", qos=1, packet_id=7), matched=0)
    (ack,) = sent(v5)
    assert isinstance(ack, Puback) and ack.reason_code == ReasonCode.NO_MATCHING_SUBSCRIBERS
    v3, _ = connected(4)
    v3.acknowledge(Publish("t", qos=1, packet_id=7), matched=0)
    assert v3.take_output() == [encode(Puback(7), 4)]


def test_qos2_ack_is_a_pubrec_and_remembers_the_id() -> None:
    client, session = connected()
    client.acknowledge(Publish("t", qos=2, packet_id=9), matched=1)
    (ack,) = sent(client)
    assert isinstance(ack, Pubrec) and ack.packet_id == 9
    assert 9 in session.incoming_qos2
    client.receive(Pubrel(9))
    client.receive(Pubrel(9))
    done, unknown = sent(client)
    assert isinstance(done, Pubcomp) and done.reason_code == 0
    assert unknown.reason_code == ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


def test_receive_maximum_counts_pending_and_awaiting_release() -> None:
    client, _ = make(receive_maximum=3)
    client.protocol_level = 5
    client.pending_started()
    client.check_receive_maximum(1)
    client.pending_started()
    with pytest.raises(ProtocolViolation) as exc:
        client.check_receive_maximum(1)
    assert exc.value.reason == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    assert client.stats.limits.receive_maximum == 1
    client.pending_done(2)
    client.check_receive_maximum(2)


def test_outgoing_qos1_completes_with_puback_and_qos2_with_pubrec_pubrel_pubcomp() -> None:
    client, session = connected()
    session.deliver(Delivery(Message.create("t", b"1", 1, False), 1, False))
    session.deliver(Delivery(Message.create("t", b"2", 2, False), 2, False))
    one, two = sent(client)
    client.receive(Puback(one.packet_id))
    client.receive(Pubrec(two.packet_id))
    (pubrel,) = sent(client)
    assert isinstance(pubrel, Pubrel) and pubrel.packet_id == two.packet_id
    client.receive(Pubcomp(two.packet_id))
    assert not session.outgoing


def test_disconnect_cannot_revive_a_session_that_was_to_end() -> None:
    client, session = connected()
    session.expiry_interval = 0
    with pytest.raises(ProtocolViolation, match="after 0"):
        client.receive(Disconnect(0, {"session_expiry_interval": 10}))


def test_disconnect_with_will_is_not_clean() -> None:
    client, _ = connected()
    client.receive(Disconnect(ReasonCode.DISCONNECT_WITH_WILL))
    assert client.clean_disconnect is False
    clean, link = make()
    clean.receive(Disconnect(0))
    assert clean.clean_disconnect is True and link.calls[-1] == "close"


def test_output_held_for_the_store_goes_out_on_release() -> None:
    client, link = make()
    client.awaiting_commit = True
    client.receive(Pingreq())
    assert client.take_output() == []
    client.release_output()
    assert link.calls == ["output_ready", "flush"]
    assert client.take_output() == [b"\xd0\x00"]


def test_violation_while_connecting_answers_with_a_v5_connack() -> None:
    client, _ = make()
    # A v5 CONNECT whose properties are broken: the decoder knows the level by then.
    bad = bytearray(encode(Connect("c", protocol_level=5), 5))
    bad[10] = 0xFF  # property length: malformed variable byte integer
    with pytest.raises(ProtocolViolation) as exc:
        client.receive_data(bytes(bad) + b"\xff\xff\xff\xff")
    client.violated(exc.value.reason, exc.value.detail)
    (connack,) = sent(client)
    assert isinstance(connack, Connack) and connack.reason_code >= 0x80
    assert client.stats.protocol_errors == 1
    assert client.link.calls[-1] == "close-linger"  # type: ignore[attr-defined]


def test_the_link_lingers_only_after_a_last_word() -> None:
    """Lingering is for a DISCONNECT or CONNACK just sent; with nothing sent it closes at once."""
    v3, _ = connected(level=4)
    v3.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
    assert sent(v3) == [] and v3.link.calls[-1] == "close"  # type: ignore[attr-defined]
    first_not_connect, link = make()
    first_not_connect.violated(ReasonCode.PROTOCOL_ERROR, "PUBLISH before CONNECT")
    assert sent(first_not_connect) == [] and link.calls[-1] == "close"
    v5, _ = connected(level=5)
    v5.violated(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
    (packet,) = sent(v5)
    assert isinstance(packet, Disconnect) and packet.reason_code == 0x93
    assert v5.link.calls[-1] == "close-linger"  # type: ignore[attr-defined]


def test_server_disconnect_tells_a_v5_client_why_and_closes() -> None:
    client, _ = connected()
    client.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
    (packet,) = sent(client)
    assert isinstance(packet, Disconnect)
    assert packet.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert packet.properties == {"reason_string": "session taken over"}
    assert client.link.calls[-1] == "close-linger"  # type: ignore[attr-defined]
    client.state = CLOSED
    client.send(Subscribe(1, [("t", SubscriptionOptions())]))
    assert client.take_output() == [], "nothing goes out once closed"
