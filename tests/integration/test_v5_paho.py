"""MQTT 5 behaviour as a real v5 client (paho) sees it.

Each test drives the broker through paho's public API and checks what the
application receives. Where a "not delivered" has to be shown, a marker
message published afterwards proves the broker had its chance, so the test
needs no guessed sleep; the only sleeps are the protocol's own timers
(session expiry, will delay, message expiry).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from clients import ClientPool, ConnAck, MqttClient, gather
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

if TYPE_CHECKING:
    from conftest import RunningBroker

DISCONNECT_WITH_WILL = 0x04
BAD_AUTHENTICATION_METHOD = 0x8C
SESSION_TAKEN_OVER = 0x8E


@pytest.fixture
def uid() -> str:
    """Prefix for this test's client ids and topics."""
    return uuid.uuid4().hex[:10]


def props(packet_type: int, **values: object) -> Properties:
    """paho Properties from their paho names, e.g. ``SessionExpiryInterval=60``."""
    properties = Properties(packet_type)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def v5_client(
    clients: ClientPool,
    broker: RunningBroker,
    client_id: str,
    *,
    clean_start: bool = True,
    keepalive: int = 60,
    **connect_properties: object,
) -> MqttClient:
    """A tracked, not yet connected v5 client (for wills and refused CONNECTs)."""
    return clients.client(
        broker,
        client_id,
        protocol=mqtt.MQTTv5,
        clean_session=clean_start,
        keepalive=keepalive,
        connect_properties=props(PacketTypes.CONNECT, **connect_properties)
        if connect_properties
        else None,
    )


def v5(
    clients: ClientPool,
    broker: RunningBroker,
    client_id: str,
    *,
    clean_start: bool = True,
    **connect_properties: object,
) -> MqttClient:
    """A connected v5 client whose CONNECT was accepted."""
    client = v5_client(clients, broker, client_id, clean_start=clean_start, **connect_properties)
    answer = client.connect()
    assert answer.reason_code == 0, f"{client_id}: CONNACK refused: {answer}"
    return client


def connack(client: MqttClient) -> ConnAck:
    """The CONNACK of a client that has connected."""
    assert client.connack is not None, f"{client.client_id} never got a CONNACK"
    return client.connack


def prop(properties: Properties | None, name: str) -> object:
    """A property's value, or None when the packet did not carry it."""
    return getattr(properties, name, None)


def disconnect_with_will(client: MqttClient) -> None:
    """v5 DISCONNECT 0x04: the client leaves on purpose but wants its will sent."""
    client.paho.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    client.wait_disconnected()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_round_trip(broker: RunningBroker, clients: ClientPool, uid: str, qos: int) -> None:
    """The delivered QoS is the minimum of publish and subscription QoS (here: the publish's)."""
    topic = f"{uid}/rt"
    sub = v5(clients, broker, f"{uid}-sub")
    assert sub.subscribe(topic, 2) == [2]
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"payload %d" % qos, qos=qos)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"payload %d" % qos, qos, False)


def test_session_survives_disconnect_with_expiry(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Session Expiry Interval > 0 keeps subscriptions and queues QoS 1 messages while away."""
    topic, sub_id = f"{uid}/queued", f"{uid}-sub"
    sub = v5(clients, broker, sub_id, SessionExpiryInterval=60)
    assert not connack(sub).session_present
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()

    pub = v5(clients, broker, f"{uid}-pub")
    for n in range(3):
        pub.publish(topic, b"m%d" % n, qos=1)

    back = v5(clients, broker, sub_id, clean_start=False, SessionExpiryInterval=60)
    assert connack(back).session_present
    received = back.get_many(3)
    assert [(m.payload, m.qos) for m in received] == [(b"m0", 1), (b"m1", 1), (b"m2", 1)]


def test_session_expiry_zero_ends_with_the_connection(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Without a Session Expiry Interval the session is not kept, so nothing is queued."""
    topic, sub_id = f"{uid}/gone", f"{uid}-sub"
    sub = v5(clients, broker, sub_id, SessionExpiryInterval=0)
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"while away", qos=1)

    back = v5(clients, broker, sub_id, clean_start=False)
    assert not connack(back).session_present
    pub.publish(topic, b"after return", qos=1)  # the subscription went with the session
    back.assert_no_message(0.5)


def test_session_gone_after_short_expiry(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """A 2 s session survives a blip but not a 3 s absence."""
    topic, sub_id = f"{uid}/short", f"{uid}-sub"
    sub = v5(clients, broker, sub_id, SessionExpiryInterval=2)
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"expires with the session", qos=1)
    time.sleep(3.0)

    back = v5(clients, broker, sub_id, clean_start=False, SessionExpiryInterval=2)
    assert not connack(back).session_present
    back.assert_no_message(0.5)


@pytest.mark.raftmq_only  # Mosquitto 2.0 sends one copy per matching subscription
def test_overlapping_subscriptions_one_copy_with_every_identifier(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """One copy at the highest QoS; its identifiers tell the client which subscriptions matched."""
    sub = v5(clients, broker, f"{uid}-sub")
    sid1 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1)
    sid2 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2)
    assert sub.subscribe(f"{uid}/a/+", 1, properties=sid1) == [1]
    assert sub.subscribe(f"{uid}/a/#", 2, properties=sid2) == [2]
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(f"{uid}/a/x", b"both", qos=2)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == (f"{uid}/a/x", b"both", 2)
    identifiers = prop(msg.properties, "SubscriptionIdentifier")
    assert isinstance(identifiers, list) and sorted(identifiers) == [1, 2]
    sub.assert_no_message(0.5)


def test_subscription_identifier_of_the_matching_subscription(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Only identifiers of subscriptions that match the topic are attached."""
    sub = v5(clients, broker, f"{uid}-sub")
    sid1 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1)
    sid2 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2)
    assert sub.subscribe(f"{uid}/a/+", 1, properties=sid1) == [1]
    assert sub.subscribe(f"{uid}/b/#", 1, properties=sid2) == [1]
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(f"{uid}/b/x", b"b only", qos=1)
    msg = sub.get()
    assert (msg.topic, prop(msg.properties, "SubscriptionIdentifier")) == (f"{uid}/b/x", [2])


def test_shared_subscription_delivers_each_message_once(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """A share group is one consumer: every message reaches exactly one member."""
    topic = f"{uid}/jobs"
    members = [
        v5(clients, broker, f"{uid}-m{n}")
        for n in range(3)  # three members, so "alternating" is not enough
    ]
    for member in members:
        assert member.subscribe(f"$share/{uid}/{topic}", 1) == [1]
    pub = v5(clients, broker, f"{uid}-pub")
    expected = [b"job %d" % n for n in range(12)]
    for payload in expected:
        pub.publish(topic, payload, qos=1)
    per_member = gather(members, len(expected))
    assert sorted(m.payload for got in per_member for m in got) == sorted(expected)
    assert all(got for got in per_member), [len(got) for got in per_member]
    time.sleep(0.3)
    assert all(member.messages.empty() for member in members), "a message arrived twice"


def _take_over(
    broker: RunningBroker, clients: ClientPool, uid: str, topic: str
) -> tuple[MqttClient, MqttClient]:
    """Connect a subscribed client, then a second one with the same id resuming its session."""
    client_id = f"{uid}-dup"
    old = v5(clients, broker, client_id, SessionExpiryInterval=60)
    assert old.subscribe(topic, 1) == [1]
    new = v5(clients, broker, client_id, clean_start=False, SessionExpiryInterval=60)
    assert connack(new).session_present
    return old, new


def test_takeover_moves_session_to_new_connection(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """One client id, one session: after takeover only the new connection is served."""
    topic = f"{uid}/owned"
    old, new = _take_over(broker, clients, uid, topic)
    old.wait_disconnected()
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"for the new one", qos=1)
    assert new.get().payload == b"for the new one"
    old.assert_no_message(0.3)


@pytest.mark.raftmq_only  # Mosquitto 2.0.11 closes the old connection without DISCONNECT
def test_takeover_tells_old_connection_0x8e(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """A v5 client must learn it was replaced, or it would reconnect and fight back."""
    old, _new = _take_over(broker, clients, uid, f"{uid}/owned")
    assert old.wait_disconnected() == SESSION_TAKEN_OVER


@pytest.mark.parametrize("handling", [0, 1, 2])
def test_retain_handling(
    broker: RunningBroker, clients: ClientPool, uid: str, handling: int
) -> None:
    """0: retained sent on every SUBSCRIBE; 1: only for a new subscription; 2: never."""
    topic, marker = f"{uid}/state", f"{uid}/marker"
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"kept", qos=1, retain=True)
    sub = v5(clients, broker, f"{uid}-sub")
    assert sub.subscribe(marker, 1) == [1]
    options = SubscribeOptions(qos=1, retainHandling=handling)

    got_per_subscribe = []
    for _ in range(2):
        assert sub.subscribe([(topic, options)]) == [1]
        pub.publish(marker, b"", qos=1)
        got_per_subscribe.append([(m.payload, m.retain) for m in sub.collect_until(marker)])
    expected_first = [(b"kept", True)] if handling in (0, 1) else []
    expected_again = [(b"kept", True)] if handling == 0 else []
    assert got_per_subscribe == [expected_first, expected_again]


def test_retain_as_published(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """The flag decides the RETAIN bit on live delivery; retained-on-subscribe always has it."""
    topic = f"{uid}/rap"
    keep = v5(clients, broker, f"{uid}-keep")
    assert keep.subscribe([(topic, SubscribeOptions(qos=1, retainAsPublished=True))]) == [1]
    clear = v5(clients, broker, f"{uid}-clear")
    assert clear.subscribe([(topic, SubscribeOptions(qos=1, retainAsPublished=False))]) == [1]

    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"live", qos=1, retain=True)
    assert [(m.payload, m.retain) for m in (keep.get(), clear.get())] == [
        (b"live", True),
        (b"live", False),
    ]

    late = v5(clients, broker, f"{uid}-late")
    assert late.subscribe([(topic, SubscribeOptions(qos=1, retainAsPublished=False))]) == [1]
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"live", True)


def test_will_sent_on_disconnect_with_will_message(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Reason 0x04 is a client asking for its will although it leaves cleanly."""
    will_topic = f"{uid}/will"
    watcher = v5(clients, broker, f"{uid}-watch")
    assert watcher.subscribe(will_topic, 1) == [1]
    leaver = v5_client(clients, broker, f"{uid}-leaver")
    leaver.paho.will_set(will_topic, b"farewell", qos=1)
    assert leaver.connect().reason_code == 0
    disconnect_with_will(leaver)
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos) == (will_topic, b"farewell", 1)


def test_no_will_on_normal_disconnect(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """DISCONNECT 0x00 deletes the will: it is only for connections that end badly."""
    will_topic, marker = f"{uid}/will", f"{uid}/marker"
    watcher = v5(clients, broker, f"{uid}-watch")
    assert watcher.subscribe([(will_topic, 1), (marker, 1)]) == [1, 1]
    leaver = v5_client(clients, broker, f"{uid}-leaver")
    leaver.paho.will_set(will_topic, b"must not appear", qos=1)
    assert leaver.connect().reason_code == 0
    leaver.disconnect()
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(marker, b"", qos=1)
    assert watcher.collect_until(marker) == []
    watcher.assert_no_message(0.5)


def _delayed_will_client(
    clients: ClientPool, broker: RunningBroker, client_id: str, will_topic: str
) -> MqttClient:
    """A client whose will waits 2 s; its session outlives that, so the delay governs."""
    client = v5_client(clients, broker, client_id, SessionExpiryInterval=60)
    client.paho.will_set(
        will_topic, b"late", qos=1, properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    )
    assert client.connect().reason_code == 0
    return client


def test_will_delay_interval(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """The will must wait its delay (a reconnect might still cancel it), then go out."""
    will_topic = f"{uid}/will"
    watcher = v5(clients, broker, f"{uid}-watch")
    assert watcher.subscribe(will_topic, 1) == [1]
    leaver = _delayed_will_client(clients, broker, f"{uid}-leaver", will_topic)
    start = time.monotonic()
    disconnect_with_will(leaver)
    msg = watcher.get(timeout=6.0)
    assert (msg.topic, msg.payload) == (will_topic, b"late")
    assert msg.received_at - start >= 1.95, "will published before its delay"


def test_reconnect_within_will_delay_cancels_will(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Coming back to the session within the delay means the client is not gone after all."""
    will_topic, client_id = f"{uid}/will", f"{uid}-blip"
    watcher = v5(clients, broker, f"{uid}-watch")
    assert watcher.subscribe(will_topic, 1) == [1]
    leaver = _delayed_will_client(clients, broker, client_id, will_topic)
    disconnect_with_will(leaver)
    back = v5(clients, broker, client_id, clean_start=False, SessionExpiryInterval=60)
    assert connack(back).session_present
    watcher.assert_no_message(3.0)


def test_server_keep_alive(
    broker_factory: Callable[..., RunningBroker], clients: ClientPool, uid: str
) -> None:
    """A client asking more than max_keepalive is told the broker's value instead."""
    broker = broker_factory(max_keepalive=10)
    client = v5_client(clients, broker, f"{uid}-ka", keepalive=60)
    answer = client.connect()
    assert answer.reason_code == 0
    assert prop(answer.properties, "ServerKeepAlive") == 10


def test_topic_alias_from_client(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """The broker resolves a client's aliases, including one remapped to another topic."""
    one, two = f"{uid}/alias/one", f"{uid}/alias/two"
    sub = v5(clients, broker, f"{uid}-sub")
    assert sub.subscribe(f"{uid}/alias/#", 1) == [1]
    pub = v5(clients, broker, f"{uid}-pub")
    maximum = prop(connack(pub).properties, "TopicAliasMaximum")
    assert isinstance(maximum, int) and maximum >= 2

    def send(topic: str, alias: int, payload: bytes) -> None:
        pub.publish(topic, payload, qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=alias))

    send(one, 1, b"a")
    send(two, 2, b"b")
    send("", 1, b"c")
    send("", 2, b"d")
    send(two, 1, b"e")  # alias 1 now means "two"
    send("", 1, b"f")
    received = [(m.topic, m.payload) for m in sub.get_many(6)]
    assert received == [
        (one, b"a"),
        (two, b"b"),
        (one, b"c"),
        (two, b"d"),
        (two, b"e"),
        (two, b"f"),
    ]


def test_message_expiry_while_queued(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """Queued messages age: an expired one is dropped, a live one arrives with less time left."""
    topic, sub_id = f"{uid}/expiring", f"{uid}-sub"
    sub = v5(clients, broker, sub_id, SessionExpiryInterval=300)
    assert sub.subscribe(topic, 1) == [1]
    sub.disconnect()
    pub = v5(clients, broker, f"{uid}-pub")
    for payload, expiry in ((b"short", 1), (b"long", 60)):
        expiring = props(PacketTypes.PUBLISH, MessageExpiryInterval=expiry)
        pub.publish(topic, payload, qos=1, properties=expiring)
    time.sleep(2.0)

    back = v5(clients, broker, sub_id, clean_start=False, SessionExpiryInterval=300)
    assert connack(back).session_present
    msg = back.get()
    assert msg.payload == b"long", "the expired message was delivered"
    remaining = prop(msg.properties, "MessageExpiryInterval")
    assert isinstance(remaining, int) and 0 < remaining < 60, remaining
    back.assert_no_message(0.3)


def test_application_properties_pass_through(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """Request/response and metadata properties are the publisher's, not the broker's to edit."""
    topic = f"{uid}/props"
    sub = v5(clients, broker, f"{uid}-sub")
    assert sub.subscribe(topic, 1) == [1]
    pub = v5(clients, broker, f"{uid}-pub")
    user_properties = [("k", "1"), ("z", "2"), ("k", "1"), ("k", "3"), ("ünï", "cödé")]
    pub.publish(
        topic,
        b'{"ok": true}',
        qos=1,
        properties=props(
            PacketTypes.PUBLISH,
            PayloadFormatIndicator=1,
            ContentType="application/json",
            ResponseTopic=f"{uid}/reply",
            CorrelationData=b"\x00\x01corr\xff",
            UserProperty=user_properties,
        ),
    )
    msg = sub.get()
    assert msg.payload == b'{"ok": true}'
    assert prop(msg.properties, "PayloadFormatIndicator") == 1
    assert prop(msg.properties, "ContentType") == "application/json"
    assert prop(msg.properties, "ResponseTopic") == f"{uid}/reply"
    assert prop(msg.properties, "CorrelationData") == b"\x00\x01corr\xff"
    assert prop(msg.properties, "UserProperty") == user_properties


def test_no_local(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """A client can share a topic with others without hearing its own messages back."""
    topic = f"{uid}/chat"
    me = v5(clients, broker, f"{uid}-me")
    assert me.subscribe([(topic, SubscribeOptions(qos=1, noLocal=True))]) == [1]
    other = v5(clients, broker, f"{uid}-other")
    me.publish(topic, b"mine", qos=1)
    other.publish(topic, b"theirs", qos=1)
    assert me.get().payload == b"theirs"
    me.assert_no_message(0.3)


def test_assigned_client_identifier(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """An empty client id gets a real one, which names a session the client can resume."""
    topic = f"{uid}/anon"
    anon = v5(clients, broker, "", SessionExpiryInterval=60)
    assigned = prop(connack(anon).properties, "AssignedClientIdentifier")
    assert isinstance(assigned, str) and assigned
    assert anon.subscribe(topic, 1) == [1]
    anon.disconnect()
    pub = v5(clients, broker, f"{uid}-pub")
    pub.publish(topic, b"kept for you", qos=1)

    back = v5(clients, broker, assigned, clean_start=False, SessionExpiryInterval=60)
    assert connack(back).session_present
    assert back.get().payload == b"kept for you"


def test_enhanced_authentication_is_refused(
    broker: RunningBroker, clients: ClientPool, uid: str
) -> None:
    """No AUTH methods are supported, so asking for one must fail rather than be ignored."""
    client = v5_client(clients, broker, f"{uid}-scram", AuthenticationMethod="SCRAM-SHA-1")
    assert client.connect().reason_code == BAD_AUTHENTICATION_METHOD


def test_connack_advertises_maximum_packet_size(
    broker_factory: Callable[..., RunningBroker], clients: ClientPool, uid: str
) -> None:
    """Clients must not send bigger packets, so they need to be told the limit."""
    broker = broker_factory(max_packet_size=2048)
    properties = connack(v5(clients, broker, f"{uid}-c")).properties
    assert prop(properties, "MaximumPacketSize") == 2048


def test_connack_advertises_topic_alias_maximum(
    broker_factory: Callable[..., RunningBroker], clients: ClientPool, uid: str
) -> None:
    """A client may use aliases 1..Topic Alias Maximum only, so it must get the configured value."""
    broker = broker_factory(topic_alias_maximum=7)
    properties = connack(v5(clients, broker, f"{uid}-c")).properties
    assert prop(properties, "TopicAliasMaximum") == 7


def test_connack_advertises_receive_maximum(
    broker_factory: Callable[..., RunningBroker], clients: ClientPool, uid: str
) -> None:
    """The client's in-flight window toward the broker comes from the CONNACK."""
    broker = broker_factory(receive_maximum=5)
    properties = connack(v5(clients, broker, f"{uid}-c")).properties
    assert prop(properties, "ReceiveMaximum") == 5


@pytest.mark.raftmq_only  # Mosquitto omits Maximum Packet Size and advertises 20
def test_connack_defaults(broker: RunningBroker, clients: ClientPool, uid: str) -> None:
    """raftmq's documented defaults; QoS 2 and retain are available, so they may be omitted."""
    properties = connack(v5(clients, broker, f"{uid}-c")).properties
    assert prop(properties, "ReceiveMaximum") == 100
    assert prop(properties, "MaximumPacketSize") == 1_048_576
    assert prop(properties, "TopicAliasMaximum") == 10
    assert prop(properties, "RetainAvailable") in (None, 1)
    assert prop(properties, "MaximumQoS") is None
    for name in ("WildcardSubscriptionAvailable", "SubscriptionIdentifierAvailable"):
        assert prop(properties, name) in (None, 1), name
    assert prop(properties, "SharedSubscriptionAvailable") in (None, 1)
