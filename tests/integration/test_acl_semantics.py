"""Mosquitto's ACL semantics over real sockets, with paho v3.1.1 and v5 clients.

A SUBSCRIBE is judged by the rules covering the filter itself; a deny rule
that only overlaps a granted filter holds back the messages on its topics one
by one: live, retained, and forwarded from another node. These tests run
unchanged against Mosquitto (``RAFTMQ_TEST_BROKER=mosquitto``), which is the
reference, except the cross-node one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from clients import ClientPool, MqttClient, unique
from clusterkit import NodeClients, published_once_routed, received, start_cluster, subscribed
from paho.mqtt.enums import MQTTProtocolVersion

if TYPE_CHECKING:
    from conftest import RunningBroker

BrokerFactory = Callable[..., "RunningBroker"]
VERSIONS = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]
REFUSED = {mqtt.MQTTv311: 0x80, mqtt.MQTTv5: 0x87}
USERS = ("alice", "bob", "carol")
AGAINST_MOSQUITTO = os.environ.get("RAFTMQ_TEST_BROKER") == "mosquitto"

ACL = """\
# The most common shape: everything, bar one subtree. carol loses it all on reload.
user alice
topic readwrite #
topic deny secret/#

user bob
topic read sensors/kitchen/#
topic write sensors/#

user carol
topic readwrite #

pattern readwrite clients/%c/#
pattern read users/%u/inbox/#
pattern write users/+/inbox/#
"""


@pytest.fixture
def acl_file(tmp_path: Path) -> Path:
    path = tmp_path / "broker.acl"
    path.write_text(ACL)
    return path


@pytest.fixture
def secured(broker_factory: BrokerFactory, acl_file: Path, tmp_path: Path) -> RunningBroker:
    """A broker with a Mosquitto password file (made by the real mosquitto_passwd) and ACL."""
    passwords = tmp_path / "passwd"
    for index, user in enumerate(USERS):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwords), user, f"{user}-pw"],
            check=True,
            timeout=10,
        )
    return broker_factory(
        password_file=str(passwords), acl_file=str(acl_file), allow_anonymous=False
    )


def login(
    clients: ClientPool,
    broker: RunningBroker,
    user: str,
    protocol: MQTTProtocolVersion,
    client_id: str | None = None,
) -> MqttClient:
    client = clients.client(broker, client_id, protocol=protocol)
    client.paho.username_pw_set(user, f"{user}-pw")
    connack = client.connect()
    assert connack.reason_code == 0, f"{user}: {connack}"
    return client


def delivered(
    subscriber: MqttClient, publisher: MqttClient, topics: list[str], sentinel: str
) -> list[str]:
    """Publish on each topic, then on ``sentinel`` (which ``subscriber`` may read, so it
    proves the others had their chance); the topics that reached ``subscriber``."""
    for topic in topics:
        publisher.publish(topic, b"x", qos=1)
    publisher.publish(sentinel, b"end", qos=1)
    return [m.topic for m in subscriber.collect_until(sentinel)]


@pytest.mark.parametrize("protocol", VERSIONS)
def test_broad_filter_granted_and_denied_topics_held_back(
    clients: ClientPool, secured: RunningBroker, protocol: MQTTProtocolVersion
) -> None:
    alice = login(clients, secured, "alice", protocol)
    publisher = login(clients, secured, "carol", protocol)
    level = unique("t")
    publisher.publish(f"secret/{level}/retained", b"r", qos=1, retain=True)
    publisher.publish(f"open/{level}/retained", b"r", qos=1, retain=True)
    try:
        assert alice.subscribe(f"+/{level}/#", qos=1) == [1]
        # Of the retained messages only the readable one comes on subscribe.
        first = alice.get()
        assert (first.topic, first.retain) == (f"open/{level}/retained", True)
        topics = [f"secret/{level}/a", f"open/{level}/a", f"secret/{level}/b/c", f"x/{level}"]
        got = delivered(alice, publisher, topics, f"open/{level}/end")
        assert got == [f"open/{level}/a", f"x/{level}"]
        assert alice.subscribe("#", qos=1) == [1]
    finally:
        for topic in (f"secret/{level}/retained", f"open/{level}/retained"):
            publisher.publish(topic, b"", qos=1, retain=True)


def granted_as_expected(codes: list[int], expected: list[int]) -> None:
    """Mosquitto 2.0 grants every SUBSCRIBE and then filters each message, so a filter
    that can deliver nothing still gets a success code there; raftmq refuses it."""
    if not AGAINST_MOSQUITTO:
        assert codes == expected


@pytest.mark.parametrize("protocol", VERSIONS)
def test_filters_a_deny_covers_are_refused(
    clients: ClientPool, secured: RunningBroker, protocol: MQTTProtocolVersion
) -> None:
    alice = login(clients, secured, "alice", protocol)
    carol = login(clients, secured, "carol", protocol)
    refused = REFUSED[protocol]
    # Whole-subtree and exact denies; a filter under the denied subtree.
    filters = ["secret/#", "secret", "secret/x", "secret/+/y"]
    codes = alice.subscribe([*((f, 1) for f in filters), ("open/#", 1)])
    granted_as_expected(codes, [refused] * 4 + [1])
    got = delivered(alice, carol, ["secret", "secret/x", "secret/a/y"], "open/end")
    assert got == []


@pytest.mark.parametrize("protocol", VERSIONS)
def test_filter_broader_than_the_read_rule_is_refused(
    clients: ClientPool, secured: RunningBroker, protocol: MQTTProtocolVersion
) -> None:
    bob = login(clients, secured, "bob", protocol)
    alice = login(clients, secured, "alice", protocol)
    # sensors/# is broader than bob's read rule; the kitchen subtree is his.
    codes = bob.subscribe([("sensors/#", 1), ("sensors/kitchen/+", 1)])
    granted_as_expected(codes, [REFUSED[protocol], 1])
    got = delivered(bob, alice, ["sensors/garage/x", "sensors/kitchen/x"], "sensors/kitchen/end")
    # Mosquitto sends a v5 client one copy per matching subscription.
    assert set(got) == {"sensors/kitchen/x"}


@pytest.mark.parametrize("protocol", VERSIONS)
def test_pattern_rules_substitute_user_and_client_id(
    clients: ClientPool, secured: RunningBroker, protocol: MQTTProtocolVersion
) -> None:
    own_id = unique("dev")
    bob = login(clients, secured, "bob", protocol, client_id=own_id)
    refused = REFUSED[protocol]
    codes = bob.subscribe(
        [
            (f"clients/{own_id}/#", 1),
            ("clients/other/#", 1),
            ("users/bob/inbox/#", 1),
            ("users/alice/inbox/#", 1),
        ]
    )
    granted_as_expected(codes, [1, refused, 1, refused])
    alice = login(clients, secured, "alice", protocol)
    topics = ["users/bob/inbox/a", "users/alice/inbox/a", "clients/other/x"]
    assert delivered(bob, alice, topics, "users/bob/inbox/end") == ["users/bob/inbox/a"]
    bob.publish(f"clients/{own_id}/x", b"own", qos=1)
    assert bob.get().topic == f"clients/{own_id}/x"


def test_sighup_revocation_stops_an_existing_subscription(
    clients: ClientPool, secured: RunningBroker, acl_file: Path
) -> None:
    carol = login(clients, secured, "carol", mqtt.MQTTv5)
    alice = login(clients, secured, "alice", mqtt.MQTTv5)
    topic = f"news/{unique('t')}"
    assert carol.subscribe([("news/#", 1), ("users/carol/inbox/#", 1)]) == [1, 1]
    end = "users/carol/inbox/end"  # still hers after the reload
    assert delivered(carol, alice, [topic], end) == [topic]
    acl_file.write_text(ACL.replace("user carol\ntopic readwrite #\n", "user carol\n"))
    os.kill(secured.pid, signal.SIGHUP)
    # Mosquitto reloads in its next loop turn, raftmq in the signal handler: allow for both,
    # then require that nothing more arrives once the first message was held back.
    deadline = time.monotonic() + 5
    while delivered(carol, alice, [topic], end) == [topic]:
        assert time.monotonic() < deadline, "still delivered 5 s after the SIGHUP"
        time.sleep(0.1)
    assert delivered(carol, alice, [topic, topic, topic], end) == []


@pytest.mark.raftmq_only
def test_forwarded_messages_are_checked_on_the_subscribers_node(
    broker_factory: BrokerFactory, node_clients: NodeClients, acl_file: Path
) -> None:
    # Everyone may write everywhere; no one may read the secret/ subtree of its own id.
    acl_file.write_text("pattern readwrite #\npattern deny secret/%c/#\n")
    cluster = start_cluster(broker_factory, ("n1", "n2"), acl_file=str(acl_file))
    sub_id = unique("sub")
    subscriber = node_clients(cluster["n2"], sub_id)
    subscribed(subscriber, "#", 1)
    publisher = node_clients(cluster["n1"], unique("pub"))
    published_once_routed(publisher, "open/first", b"1", 1, packet_id=1)
    topics = (f"secret/{sub_id}/a", f"secret/{sub_id}/b/c", "open/second")
    for packet_id, topic in enumerate(topics, start=2):
        published_once_routed(publisher, topic, b"x", 1, packet_id=packet_id)
    assert [p.topic for p in received(subscriber, 2)] == ["open/first", "open/second"]


@pytest.mark.raftmq_only
def test_share_group_copy_goes_to_a_member_who_may_read_it(
    clients: ClientPool, secured: RunningBroker
) -> None:
    """Mosquitto picks the member in turn and then drops a denied copy; raftmq skips past it."""
    alice = login(clients, secured, "alice", mqtt.MQTTv5)  # denied secret/#
    carol = login(clients, secured, "carol", mqtt.MQTTv5)
    group = f"$share/{unique('g')}/#"
    assert alice.subscribe(group, qos=1) == [1]
    assert carol.subscribe(group, qos=1) == [1]
    bob = login(clients, secured, "bob", mqtt.MQTTv5)  # may write sensors/#
    for index in range(4):
        bob.publish(f"sensors/x/{index}", b"x", qos=1)
    # alice may read sensors/..., so the group alternates; none is lost either way.
    got = [m.topic for m in (*alice.get_many(2), *carol.get_many(2))]
    assert sorted(got) == [f"sensors/x/{i}" for i in range(4)]
    publisher = login(clients, secured, "carol", mqtt.MQTTv5)
    for index in range(4):
        publisher.publish(f"secret/{index}", b"s", qos=1)
    assert [m.topic for m in carol.get_many(4)] == [f"secret/{i}" for i in range(4)]
    alice.assert_no_message(within=0.3)
