"""The limit bookkeeping without sockets: token bucket, session byte accounting, docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftmq.node.limits import LimitCounters, TokenBucket, retained_size
from raftmq.node.message import Message
from raftmq.node.session import Delivery, Session
from raftmq.node.stats import Stats

BEHAVIOUR = Path(__file__).resolve().parents[2] / "docs" / "behaviour.md"


def test_bucket_allows_a_burst_then_refuses_until_refilled() -> None:
    bucket = TokenBucket(rate=5, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(100.1), "0.1 s refills half a token"
    assert bucket.take(100.2), "0.2 s after the burst one token is back"
    assert not bucket.take(100.2)


def test_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0.0)
    assert bucket.take(3600.0) and bucket.take(3600.0)
    assert not bucket.take(3600.0), "an hour idle still allows only one burst"


def test_bucket_sustains_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0.0)
    granted = sum(bucket.take(i / 20) for i in range(20 * 60))  # 20/s asked for 60 s
    assert 10 * 60 <= granted <= 10 * 60 + 10


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_bucket_rejects_meaningless_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst, 0.0)


def test_retained_size_counts_topic_bytes_and_payload() -> None:
    assert retained_size(Message.create("tö/x", b"12345", 0, True)) == 5 + 5
    assert retained_size(None) == 0


class Window:
    """A connection whose in-flight window is closed, so every delivery queues."""

    send_window = 0
    stalled = False

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None:
        raise AssertionError("nothing may be sent through a closed window")


def delivery(size: int) -> Delivery:
    return Delivery(Message.create("t", b"x" * size, 1, False), 1, False)


def test_queued_bytes_follow_the_queue_through_drain() -> None:
    stats = Stats()
    s = Session(
        "c",
        max_queued=100,
        overflow_drops_oldest=False,
        queue_qos0=False,
        max_queued_bytes=1000,
        stats=stats,
    )
    assert [s.deliver(delivery(400)) for _ in range(3)] == [True, True, False]
    assert s.queued_bytes == 800 and stats.limits.queued_bytes == 1

    sent: list[bytes] = []

    class Open(Window):
        send_window = 10

        def send_publish(self, d: Delivery, packet_id: int | None, dup: bool) -> None:
            sent.append(d.message.payload)

    s.resume(Open())  # type: ignore[arg-type]
    assert len(sent) == 2 and s.queued_bytes == 0
    s.connection = None
    assert [s.deliver(delivery(400)) for _ in range(3)] == [True, True, False], (
        "drained bytes must be given back to the bound"
    )
    s.clear_delivery_state()
    assert s.queued_bytes == 0


def test_drop_oldest_evicts_as_many_as_needed_and_counts_each() -> None:
    stats = Stats()
    s = Session(
        "c",
        max_queued=100,
        overflow_drops_oldest=True,
        queue_qos0=False,
        max_queued_bytes=1000,
        stats=stats,
    )
    for _ in range(4):
        s.deliver(delivery(250))
    assert s.deliver(delivery(600)) is False
    assert [len(d.message.payload) for d in s.queue] == [250, 600]
    assert s.queued_bytes == 850
    assert stats.limits.queued_bytes == 3 and stats.messages_dropped == 3


def test_every_limit_counter_is_documented() -> None:
    behaviour = BEHAVIOUR.read_text()
    missing = [name for name, _ in LimitCounters().items() if f"`{name}`" not in behaviour]
    assert not missing, f"docs/behaviour.md does not list $SYS/broker/limits/ counters {missing}"
