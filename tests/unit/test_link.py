"""The reliable link, driven by script: no gRPC, no socket, no event loop.

Each test offers items and feeds frames as a peer would send them, and reads
what the link sends back (real Cap'n Proto frames, decoded again here). The
same behaviour over real gRPC streams is in test_forwarding.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from recording_waiter import RecordingWaiter as Waiter

from raftmq.cluster.forwarding.frames import (
    Forwarded,
    Frame,
    Item,
    Kick,
    decode_frame,
    encode_frame,
)
from raftmq.cluster.forwarding.link import ForwardingSettings, ReliableLink
from raftmq.node.hooks import ClusterUnavailable
from raftmq.node.message import Message

ME = 1001
"""This process's incarnation: acks that name another do not count."""
PEER = 2002


def encode(seq: int, ack: int, items: Sequence[Item], ack_incarnation: int) -> bytes:
    return encode_frame(seq, ack, items, 0.0, ack_incarnation)


def link(**settings: int) -> ReliableLink:
    made = ReliableLink("peer", ME, ForwardingSettings(**settings), encode)  # type: ignore[arg-type]
    made.stream_started(PEER)
    return made


def item(payload: str) -> Forwarded:
    return Forwarded(Message.create("t", payload.encode(), 1, False))


def sent(data: bytes | None) -> Frame:
    assert data is not None
    return decode_frame(data, 0.0)


def payloads(frame: Frame) -> list[bytes]:
    return [i.message.payload for i in frame.items if isinstance(i, Forwarded)]


def from_peer(seq: int, *names: str, ack: int = 0, ack_incarnation: int = ME) -> Frame:
    return Frame(seq, ack, [item(n) for n in names], ack_incarnation)


def test_what_is_queued_goes_as_one_numbered_frame() -> None:
    one = link()
    for name in ("a", "b", "c"):
        assert one.offer(item(name), None) is False
    first = sent(one.next_frame())
    assert (first.seq, payloads(first)) == (1, [b"a", b"b", b"c"])
    one.offer(item("d"), None)
    second = sent(one.next_frame())
    assert (second.seq, payloads(second)) == (2, [b"d"])
    assert not one.wants_to_send


def test_frames_are_capped_and_the_rest_follows_in_order() -> None:
    one = link(max_frame_items=2)
    for i in range(5):
        one.offer(item(str(i)), None)
    frames = [sent(one.next_frame()) for _ in range(3)]
    assert [payloads(f) for f in frames] == [[b"0", b"1"], [b"2", b"3"], [b"4"]]
    assert [f.seq for f in frames] == [1, 2, 3]


def test_a_cumulative_ack_completes_every_frame_up_to_it() -> None:
    one = link()
    waiters = [Waiter() for _ in range(3)]
    for i, waiter in enumerate(waiters):
        one.offer(item(str(i)), waiter)
        one.next_frame()  # one frame each
    assert one.receive(Frame(0, 2, [], ME)) == []
    assert [w.hits for w in waiters] == [1, 1, 0]
    assert one.outstanding == 1 and len(one.resend()) == 1
    one.receive(Frame(0, 3, [], ME))
    assert [w.hits for w in waiters] == [1, 1, 1] and one.outstanding == 0


def test_an_ack_meant_for_a_previous_process_is_ignored() -> None:
    one = link()
    waiter = Waiter()
    one.offer(item("x"), waiter)
    one.next_frame()
    one.receive(Frame(0, 5, [], ME ^ 1))
    assert waiter.hits == 0 and one.outstanding == 1
    one.receive(Frame(0, 1, [], ME))
    assert waiter.hits == 1


def test_new_frames_are_handed_over_once_and_acknowledged() -> None:
    one = link()
    assert [i.message.payload for i in one.receive(from_peer(1, "a", "b"))] == [b"a", b"b"]  # type: ignore[union-attr]
    answer = sent(one.next_frame())
    assert (answer.seq, answer.ack, answer.ack_incarnation, answer.items) == (0, 1, PEER, [])


def test_duplicates_are_dropped_and_acknowledged_again() -> None:
    one = link()
    one.receive(from_peer(1, "a", "b"))
    one.next_frame()
    assert one.receive(from_peer(1, "a", "b")) == []  # resent after a reconnect
    assert one.duplicates == 1 and one.ack_due
    assert sent(one.next_frame()).ack == 1
    assert len(one.receive(from_peer(2, "c"))) == 1
    assert sent(one.next_frame()).ack == 2


def test_a_gap_left_by_discarded_frames_is_tolerated() -> None:
    one = link()
    one.receive(from_peer(1, "a"))
    assert len(one.receive(from_peer(4, "d"))) == 1  # 2 and 3 were given up by the peer
    assert one.receive(from_peer(3, "late")) == []  # never delivered out of order
    assert sent(one.next_frame()).ack == 4


def test_a_restarted_peer_starts_a_new_receive_cursor() -> None:
    one = link()
    one.receive(from_peer(1, "a"))
    one.receive(from_peer(2, "b"))
    one.stream_started(PEER)  # a reconnect of the same process keeps the cursor
    assert one.receive(from_peer(1, "a")) == []
    one.stream_started(PEER + 1)  # a new process numbers its frames from 1 again
    assert len(one.receive(from_peer(1, "new a"))) == 1
    assert sent(one.next_frame()).ack_incarnation == PEER + 1


def test_unacknowledged_frames_are_resent_first_in_order() -> None:
    one = link()
    waiters = [Waiter(), Waiter()]
    one.offer(item("one"), waiters[0])
    one.offer(item("two"), waiters[1])
    first = one.next_frame()
    one.offer(item("three"), None)
    second = one.next_frame()
    # the stream broke before any ack came: a new one starts with both, as they were
    assert one.resend() == [first, second]
    one.count_sent(resent=True)
    assert (one.resends, one.frames_sent) == (1, 1)
    one.receive(Frame(0, 1, [], ME))
    assert one.resend() == [second]
    assert [w.hits for w in waiters] == [1, 1]


def test_the_queue_limit_says_when_to_wait_and_when_there_is_room() -> None:
    one = link(queue_limit=3)
    assert [one.offer(item(str(i)), None) for i in range(4)] == [False, False, True, True]
    assert not one.has_room and one.outstanding == 4
    one.next_frame()
    assert not one.has_room, "sent but unacknowledged items still count"
    one.receive(Frame(0, 1, [], ME))
    assert one.has_room and one.outstanding == 0


def test_giving_up_fails_what_is_held_and_every_send_until_a_stream_is_back() -> None:
    one = link()
    queued, in_flight, later = Waiter(), Waiter(), Waiter()
    one.offer(item("in flight"), in_flight)
    one.next_frame()
    one.offer(item("queued"), queued)
    one.last_error = "connection refused"
    one.give_up()
    for waiter in (queued, in_flight):
        [failure] = waiter.failures
        assert isinstance(failure, ClusterUnavailable) and "connection refused" in str(failure)
    assert (one.dropped, one.outstanding, one.resend(), one.unreachable) == (2, 0, [], True)
    assert one.offer(item("later"), later) is False
    assert isinstance(later.failures[0], ClusterUnavailable) and one.dropped == 3
    one.stream_started(PEER)
    assert not one.unreachable
    one.offer(item("again"), None)
    assert sent(one.next_frame()).seq == 2, "numbering goes on: the peer tolerates the gap"


def test_a_peer_declared_down_hands_back_everything_it_held_with_its_waiters() -> None:
    """For the cluster to send on where the dead peer's sessions went (rehoming.py):
    nothing is failed or counted as dropped, and the order is the order sent."""
    one = link()
    waiters = [Waiter(), Waiter(), Waiter()]
    one.offer(item("in flight"), waiters[0])
    one.offer(item("no waiter"), None)
    one.next_frame()
    one.offer(item("queued"), waiters[1])
    one.offer(item("queued too"), waiters[2])
    held = one.declared_down(streaming=False)
    assert [(i.message.payload, w) for i, w in held] == [  # type: ignore[union-attr]
        (b"in flight", waiters[0]),
        (b"no waiter", None),
        (b"queued", waiters[1]),
        (b"queued too", waiters[2]),
    ]
    assert all(w.hits == 0 and not w.failures for w in waiters)
    assert (one.dropped, one.outstanding, one.resend(), one.unreachable) == (0, 0, [], True)
    late = Waiter()
    one.offer(item("later"), late)
    assert isinstance(late.failures[0], ClusterUnavailable), "offers fail until a stream"


def test_a_peer_declared_down_with_its_stream_up_stays_reachable() -> None:
    """Found by the fault campaign: a node whose partition healed just before the
    declaration took effect kept its stream; marking the link unreachable failed every
    later send to it (hand-overs, publishes) although it had rejoined."""
    one = link()
    one.offer(item("held"), Waiter())
    assert len(one.declared_down(streaming=True)) == 1
    assert not one.unreachable
    assert one.offer(item("after"), None) is False and len(one.pending) == 1


def test_an_item_that_cannot_be_encoded_fails_its_sender_only() -> None:
    one = link()
    good, bad, after = Waiter(), Waiter(), Waiter()
    one.offer(item("good"), good)
    one.offer(Forwarded(Message.create("t", b"x", 1, False, {"content_type": 12345})), bad)
    one.offer(item("after"), after)
    frames = []
    while one.pending:
        data = one.next_frame()
        if data is not None:
            frames.append(sent(data))
    assert [payloads(f) for f in frames] == [[b"good"], [b"after"]]
    assert len(bad.failures) == 1 and not good.failures and not after.failures
    one.receive(Frame(0, frames[-1].seq, [], ME))
    assert (good.hits, after.hits, one.outstanding) == (1, 1, 0)


def test_kicks_and_publishes_share_the_numbering() -> None:
    one = link()
    one.offer(item("p"), None)
    one.offer(Kick("c1", 7), None)
    frame = sent(one.next_frame())
    assert frame.seq == 1 and frame.items[1] == Kick("c1", 7)


@pytest.mark.parametrize("ack_due", [False, True])
def test_an_idle_link_sends_an_ack_only_frame_when_one_is_owed(ack_due: bool) -> None:
    one = link()
    if ack_due:
        one.receive(from_peer(3, "x"))
    assert one.wants_to_send is ack_due
    frame = sent(one.next_frame())
    assert (frame.seq, frame.ack, frame.items) == (0, 3 if ack_due else 0, [])
