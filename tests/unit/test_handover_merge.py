"""handover_merge: a moved session's hand-over put together with its direct arrivals,
without sockets, Raft or clocks (the scenarios of cluster/replication/releases.py)."""

from __future__ import annotations

from raftmq.node.handover_merge import had, late, marks, merge
from raftmq.node.hooks import SessionMessages
from raftmq.node.message import Message
from raftmq.node.session import Delivery, Outgoing, Session


def delivery(origin: str, seq: int, qos: int = 1) -> Delivery:
    message = Message.create(f"t/{origin}", f"{origin}:{seq}".encode(), qos, False)
    message.origin, message.seq = origin, seq
    return Delivery(message, qos, False)


def names(deliveries: object) -> list[str]:
    return [d.message.payload.decode() for d in deliveries]  # type: ignore[attr-defined]


def session_with(*direct: Delivery) -> Session:
    session = Session("c", max_queued=100, overflow_drops_oldest=False, queue_qos0=True)
    for d in direct:
        session.deliver(d)  # offline: queued, as during a move
    return session


def test_the_overlap_is_delivered_once_in_each_publishers_order() -> None:
    """x published 1..6. The old node had 1..4 (1 in flight, 2..4 queued) when it let go;
    the new node got 3..6 directly, once x routed to it. Result: 1 in flight, then
    2, 3, 4 from the hand-over, then 5, 6: each once, in order."""
    held = SessionMessages(
        queued=[delivery("x", 2), delivery("x", 3), delivery("x", 4)],
        outgoing={9: Outgoing(delivery("x", 1))},
        seen={"x": 4},
    )
    session = session_with(delivery("x", 3), delivery("x", 4), delivery("x", 5), delivery("x", 6))
    duplicates = merge(session, held)
    assert names(duplicates) == ["x:3", "x:4"]
    assert names(session.queue) == ["x:2", "x:3", "x:4", "x:5", "x:6"]
    assert list(session.outgoing) == [9] and session.next_packet_id == 10
    assert session.queued_bytes == sum(len(d.message.payload) for d in session.queue)


def test_what_the_old_node_completed_is_not_delivered_again() -> None:
    """The old node delivered y:1..3 and its client acknowledged them before the claim; the
    new node got y:3 directly too. Nothing of y is in the hand-over, and y:3 must not
    come again (QoS 2: exactly once)."""
    held = SessionMessages(seen={"y": 3})
    session = session_with(delivery("y", 3, qos=2), delivery("y", 4, qos=2))
    assert names(merge(session, held)) == ["y:3"]
    assert names(session.queue) == ["y:4"]


def test_origins_are_judged_apart_and_unstamped_messages_always_kept() -> None:
    held = SessionMessages(queued=[delivery("a", 10)], seen={"a": 10, "b": 2})
    unstamped = Delivery(Message.create("t/s", b"local", 1, False), 1, False)
    session = session_with(delivery("b", 3), delivery("a", 9), unstamped, delivery("c", 1))
    merge(session, held)
    assert names(session.queue) == ["a:10", "b:3", "local", "c:1"]
    assert not had(unstamped, {"": 5}), "sequence 0 is no identity"


def test_incoming_qos2_ids_come_along() -> None:
    session = session_with()
    session.incoming_qos2 = {1}
    merge(session, SessionMessages(incoming_qos2={4, 5}))
    assert session.incoming_qos2 == {1, 4, 5}


def test_marks_are_the_highest_sequence_per_origin() -> None:
    got = marks([delivery("a", 3), delivery("b", 7), delivery("a", 5), delivery("a", 4)])
    assert got == {"a": 5, "b": 7}


def test_a_late_hand_over_brings_only_what_did_not_reach_the_session_directly() -> None:
    """The old node was paused: the session resumed here without its messages, and they
    come later. x:3 on reached the session directly (its first direct arrival, as
    ``Session.first_direct`` records it); the released QoS 2 message reached the
    client's application already."""
    direct = session_with()
    direct.first_direct = {}
    for d in (delivery("x", 3), delivery("x", 4)):
        direct.deliver(d)
    assert direct.first_direct == {"x": 3}
    held = SessionMessages(
        queued=[delivery("x", 2), delivery("x", 3), delivery("y", 8)],
        outgoing={
            4: Outgoing(delivery("x", 1, qos=2), released=True),
            5: Outgoing(delivery("w", 1, qos=2)),
        },
    )
    assert names(late(held, direct.first_direct)) == ["w:1", "x:2", "y:8"]
