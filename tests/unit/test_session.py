"""Session delivery state, driven without sockets through a recording connection."""

from __future__ import annotations

import time

import pytest

from raftmq.node.message import Message
from raftmq.node.session import Delivery, Session


class RecordingConnection:
    """Stands in for MQTTConnection: records what the session asks it to send."""

    def __init__(self, send_window: int = 10) -> None:
        self.send_window = send_window
        self.stalled = False
        self.sent: list[tuple[bytes, int | None, bool]] = []
        self.pubrels: list[int] = []

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None:
        self.sent.append((delivery.message.payload, packet_id, dup))

    def send_pubrel(self, packet_id: int) -> None:
        self.pubrels.append(packet_id)


def delivery(payload: bytes, qos: int, expiry: int | None = None) -> Delivery:
    props = {"message_expiry_interval": expiry} if expiry is not None else {}
    return Delivery(Message.create("t", payload, qos, False, props), qos, False)


def session(max_queued: int = 100, drop_oldest: bool = False, qos0: bool = False) -> Session:
    return Session("c", max_queued=max_queued, overflow_drops_oldest=drop_oldest, queue_qos0=qos0)


def attach(s: Session, window: int = 10) -> RecordingConnection:
    conn = RecordingConnection(window)
    s.resume(conn)  # type: ignore[arg-type]
    return conn


def test_window_limits_in_flight_and_acks_refill_it_in_order() -> None:
    s = session()
    conn = attach(s, window=2)
    for i in range(5):
        s.deliver(delivery(b"%d" % i, 1))
    assert [p for p, _, _ in conn.sent] == [b"0", b"1"]
    first_id = conn.sent[0][1]
    assert first_id is not None and s.acknowledge(first_id, 1)
    assert [p for p, _, _ in conn.sent] == [b"0", b"1", b"2"]
    assert not s.acknowledge(first_id, 1), "an id completes once"


def test_qos0_is_not_queued_offline_unless_configured() -> None:
    plain, keeping = session(), session(qos0=True)
    assert plain.deliver(delivery(b"x", 0)) is False
    assert keeping.deliver(delivery(b"x", 0)) is True
    assert len(plain.queue) == 0 and len(keeping.queue) == 1


@pytest.mark.parametrize(("drop_oldest", "kept"), [(False, [b"0", b"1"]), (True, [b"2", b"3"])])
def test_overflow_policy(drop_oldest: bool, kept: list[bytes]) -> None:
    s = session(max_queued=2, drop_oldest=drop_oldest)
    results = [s.deliver(delivery(b"%d" % i, 1)) for i in range(4)]
    assert results == [True, True, False, False]
    assert [d.message.payload for d in s.queue] == kept


def test_resume_resends_unacknowledged_with_dup_and_pubrel_for_received() -> None:
    s = session()
    conn = attach(s)
    s.deliver(delivery(b"q1", 1))
    s.deliver(delivery(b"q2", 2))
    s.deliver(delivery(b"q2b", 2))
    (_, id1, _), (_, id2, _), (_, id3, _) = conn.sent
    assert id2 is not None and s.received(id2)
    s.connection = None
    s.deliver(delivery(b"later", 1))

    again = attach(s)
    assert again.pubrels == [id2]
    assert again.sent[:2] == [(b"q1", id1, True), (b"q2b", id3, True)]
    assert again.sent[2][0] == b"later" and again.sent[2][2] is False


def test_stalled_reader_queues_and_drain_keeps_order() -> None:
    s = session()
    conn = attach(s)
    conn.stalled = True
    s.deliver(delivery(b"a", 0))
    s.deliver(delivery(b"b", 1))
    assert conn.sent == []
    conn.stalled = False
    s.drain()
    assert [p for p, _, _ in conn.sent] == [b"a", b"b"]


def test_expired_queued_messages_are_dropped() -> None:
    s = session()
    s.deliver(delivery(b"old", 1, expiry=1))
    s.deliver(delivery(b"fresh", 1, expiry=60))
    s.queue[0].message.expires_at = time.monotonic() - 1
    conn = attach(s)
    assert [p for p, _, _ in conn.sent] == [b"fresh"]


def test_expiry_interval_counts_down() -> None:
    message = Message.create("t", b"x", 1, False, {"message_expiry_interval": 60})
    assert message.expires_at is not None
    message.expires_at -= 30
    assert 29 <= message.remaining_properties(time.monotonic())["message_expiry_interval"] <= 30


def test_hop_properties_are_not_forwarded() -> None:
    message = Message.create(
        "t", b"x", 1, False, {"topic_alias": 3, "subscription_identifier": [1], "content_type": "a"}
    )
    assert message.properties == {"content_type": "a"}
