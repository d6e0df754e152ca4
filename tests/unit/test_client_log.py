"""The per-client warning limiter, the packet summaries of ``log_client``, and gRPC's quiet.

The limiter runs on a fake clock, so intervals pass without sleeping. What
the node really writes (connect, disconnect, refusal lines) is checked on a
node process in tests/integration/test_client_logs.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from raftmq.node.client_log import ClientWarnings
from raftmq.node.codec import encode
from raftmq.node.packet_trace import PacketTrace, summary
from raftmq.node.packets import (
    Connack,
    Connect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

LOGGER = "test.client_warnings"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, **kwargs: int) -> ClientWarnings:
    return ClientWarnings(logging.getLogger(LOGGER), clock=clock, **{"limit": 3, **kwargs})


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """What the limiter logged so far."""
    caplog.set_level(logging.WARNING, LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_client_gets_its_limit_then_one_line_with_the_count(
    clock: FakeClock, logged: Callable[[], list[str]]
) -> None:
    warnings = limiter(clock)
    for attempt in range(10):
        warnings.warn("c1", "attempt %d", attempt)
    assert logged() == ["attempt 0", "attempt 1", "attempt 2"]
    clock.now += 61  # the interval is over: the next warning about anyone reports it
    warnings.warn("c2", "other client")
    assert logged()[3:] == [
        "client 'c1': 7 more warnings suppressed (at most 3 per 60s)",
        "other client",
    ]


def test_a_new_interval_gives_the_client_its_limit_again(
    clock: FakeClock, logged: Callable[[], list[str]]
) -> None:
    warnings = limiter(clock, limit=1)
    warnings.warn("c1", "first")
    clock.now += 30
    warnings.warn("c1", "within the interval")
    clock.now += 31
    warnings.warn("c1", "next interval")
    assert logged() == [
        "first",
        "client 'c1': 1 more warnings suppressed (at most 1 per 60s)",
        "next interval",
    ]


def test_clients_are_limited_each_on_their_own(
    clock: FakeClock, logged: Callable[[], list[str]]
) -> None:
    warnings = limiter(clock, limit=1)
    for client in ("a", "b", "a", "b"):
        warnings.warn(client, "about %s", client)
    assert logged() == ["about a", "about b"]


def test_forget_and_flush_report_what_was_suppressed(
    clock: FakeClock, logged: Callable[[], list[str]]
) -> None:
    warnings = limiter(clock, limit=1)
    for client in ("gone", "gone", "stays", "stays", "stays", "quiet"):
        warnings.warn(client, client)
    warnings.forget("gone")
    assert logged()[-1] == "client 'gone': 1 more warnings suppressed (at most 1 per 60s)"
    warnings.flush()
    assert logged()[-1] == "client 'stays': 2 more warnings suppressed (at most 1 per 60s)"
    assert len(warnings) == 0  # and a client without suppressed warnings got no line


def test_memory_is_bounded_and_the_evicted_client_is_reported(
    clock: FakeClock, logged: Callable[[], list[str]]
) -> None:
    warnings = limiter(clock, limit=1, max_tracked=100)
    warnings.warn("first", "one")
    warnings.warn("first", "two")
    for n in range(1000):  # a client id per attempt: the table must not grow with them
        clock.now += 0.001
        warnings.warn(f"rotating-{n}", "x")
        assert len(warnings) <= 100
    assert "client 'first': 1 more warnings suppressed (at most 1 per 60s)" in logged()


def test_expired_intervals_are_dropped_as_time_passes(clock: FakeClock) -> None:
    warnings = limiter(clock)
    for n in range(50):
        warnings.warn(f"c{n}", "x")
    clock.now += 61
    warnings.warn("late", "x")
    assert len(warnings) == 1


# -- packet summaries (log_client) ------------------------------------------------------


def test_summaries_name_the_fields_and_never_the_payload_or_password() -> None:
    publish = Publish("a/b", b"SECRET-PAYLOAD", qos=1, retain=True, packet_id=7)
    assert summary(publish) == "PUBLISH id=7 topic='a/b' qos=1 retain=1 dup=0 bytes=14"
    connect = Connect("dev1", 5, keepalive=30, username="alice", password=b"hunter2")
    assert summary(connect) == (
        "CONNECT client_id='dev1' protocol=5 keepalive=30 clean_start=1 user='alice'"
    )
    subscribe = Subscribe(3, [("s/#", SubscriptionOptions(qos=2)), ("t", SubscriptionOptions())])
    assert summary(subscribe) == "SUBSCRIBE id=3 filter='s/#' qos=2 filter='t' qos=0"
    assert summary(Suback(3, [2, 0x87])) == "SUBACK id=3 codes=0x02,0x87"
    assert summary(Puback(7, 0x10)) == "PUBACK id=7 reason=0x10"
    assert summary(Connack(True, 0)) == "CONNACK session_present=1 reason=0x00"


def test_outgoing_bytes_are_decoded_across_split_writes(caplog: pytest.LogCaptureFixture) -> None:
    trace = PacketTrace("dev1", 5)
    wire = encode(Publish("x/y", b"12345", qos=1, packet_id=9), 5) + encode(Puback(4), 5)
    with caplog.at_level(logging.DEBUG, "raftmq.trace"):
        trace.outgoing([wire[:3]])  # a PUBLISH's head, its packet id and tail come apart
        trace.outgoing([wire[3:10], wire[10:]])
        trace.outgoing([b"\x00\x00"])  # not MQTT: said once, then the trace stops decoding
        trace.outgoing([encode(Puback(5), 5)])
    assert [r.getMessage() for r in caplog.records] == [
        "client 'dev1' out PUBLISH id=9 topic='x/y' qos=1 retain=0 dup=0 bytes=5",
        "client 'dev1' out PUBACK id=4 reason=0x00",
        "client 'dev1' out: cannot trace what follows: reserved packet type 0",
    ]


# -- gRPC's C core ----------------------------------------------------------------------


def _verbosity_after_import(**env: str) -> str:
    """GRPC_VERBOSITY as grpc sees it when a fresh process imports the cluster package."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    code = "import os, raftmq.cluster, grpc; print(os.environ.get('GRPC_VERBOSITY'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def test_grpc_info_lines_are_off_unless_the_user_asks_for_them() -> None:
    assert _verbosity_after_import() == "ERROR"
    assert _verbosity_after_import(GRPC_VERBOSITY="DEBUG") == "DEBUG"
    assert _verbosity_after_import(GRPC_TRACE="http") == "None"  # tracing needs its INFO lines
