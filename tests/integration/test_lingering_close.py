"""The node's last word reaches a client that is still sending (``close_linger``).

Closing a socket while the client's bytes sit unread makes the kernel answer
with a reset: the client's next send fails with ECONNRESET/EPIPE, and a
client library that stops there never reads the DISCONNECT or CONNACK that
says why. So the node half-closes after it, reads and drops what still comes,
and closes at the client's EOF or after ``close_linger`` seconds.

The client here goes on publishing (``KeepSending``) as a real one would:
between every read, and before its first read after CONNECT. Any reset before
the reason code fails the test. ``close_linger = 0`` is the old immediate
close: the tests that read a reason code or count sockets fail with it
(checked by running them so), and ``test_without_linger_the_client_gets_a_reset``
keeps showing that this client does see the reset.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from rawmqtt import (
    CONNACK,
    DISCONNECT,
    PUBREC,
    PUBREL,
    Closed,
    Packet,
    RawClient,
    RawClients,
    ack,
    connect,
    publish,
    raw_clients,
)

if TYPE_CHECKING:
    from conftest import RunningBroker

BrokerFactory = Callable[..., "RunningBroker"]

RECEIVE_MAXIMUM_EXCEEDED = 0x93
NOT_AUTHORIZED = 0x87
QUOTA_EXCEEDED = 0x97
SERVER_SHUTTING_DOWN = 0x8B
V3_UNACCEPTABLE_PROTOCOL = 0x01
UNSUPPORTED_PROTOCOL_VERSION = 0x84

FILLER = publish("linger/filler", b"x" * 512)
"""What a client that is still publishing sends: a QoS 0 PUBLISH."""
PACE = 0.01
"""Seconds between the client's sends: the reset of a closed socket is back long before."""

# close_linger is raftmq's; Mosquitto closes at once.
pytestmark = pytest.mark.raftmq_only


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


class Reset(AssertionError):
    """The broker reset the connection before the client read what it waited for."""


def _send(client: RawClient, data: bytes, got: list[Packet]) -> None:
    try:
        client.send(data)
    except OSError as exc:
        raise Reset(f"send failed with {exc!r} after reading {got}") from None


def read_while_sending(
    client: RawClient, until: int, *, lead: float = 0.0, timeout: float = 5.0
) -> list[Packet]:
    """Packets up to the first of type ``until``, sending FILLER all along.

    For ``lead`` seconds the client only sends (it does not wait for CONNACK);
    then it sends FILLER before every read, and answers each PUBREC with its
    PUBREL as it arrives. A failed send, a reset or an EOF before ``until``
    raises Reset.
    """
    got: list[Packet] = []
    start = time.monotonic()
    while time.monotonic() - start < lead:
        _send(client, FILLER, got)
        time.sleep(PACE)
    while True:
        _send(client, FILLER, got)
        try:
            pkt = client.read(PACE)
        except TimeoutError:
            assert time.monotonic() - start < timeout, f"no packet {until} in time; got {got}"
            continue
        except Closed as exc:
            raise Reset(f"connection ended ({exc}) after reading {got}") from None
        got.append(pkt)
        if pkt.type == until:
            return got
        if pkt.type == PUBREC:
            assert pkt.packet_id is not None
            _send(client, ack(PUBREL, pkt.packet_id), got)
        time.sleep(PACE)


def assert_half_closed(client: RawClient, *, sends: int = 10) -> None:
    """After its last word the broker sends EOF, not a reset, and still takes our bytes."""
    try:
        pkt = client.read(2.0)
    except Closed as exc:
        assert str(exc) == "EOF", f"reset instead of EOF: {exc}"
    except TimeoutError:
        raise AssertionError("the broker neither closed nor half-closed") from None
    else:
        raise AssertionError(f"expected EOF, got {pkt}")
    for _ in range(sends):  # read and dropped by the lingering socket: no reset
        _send(client, FILLER, [])
        time.sleep(PACE)


def over_receive_maximum(client: RawClient, uid: str, receive_maximum: int) -> list[Packet]:
    """receive_maximum + 1 QoS 2 PUBLISHes at once, then keep sending until the DISCONNECT."""
    burst = b"".join(
        publish(f"{uid}/t", b"m", qos=2, packet_id=pid) for pid in range(1, receive_maximum + 2)
    )
    client.send(burst)
    return read_while_sending(client, DISCONNECT)


def test_disconnect_reaches_a_client_that_keeps_sending(
    broker_factory: BrokerFactory, uid: str
) -> None:
    """Receive maximum 2, three QoS 2 PUBLISHes: two PUBRECs, then DISCONNECT 0x93."""
    broker = broker_factory(receive_maximum=2, close_linger=5)
    with raw_clients(broker.host, broker.port) as raw:
        client = raw.connected(f"{uid}-fast")
        packets = over_receive_maximum(client, uid, 2)
        assert [p.type for p in packets] == [PUBREC, PUBREC, DISCONNECT], packets
        assert packets[-1].reason_code == RECEIVE_MAXIMUM_EXCEEDED
        assert_half_closed(client)
        raw.connected(f"{uid}-next")  # the node goes on serving


@pytest.mark.parametrize("refusal", ["not-authorized", "unsupported-protocol"])
def test_refusing_connack_reaches_a_client_that_keeps_sending(
    broker_factory: BrokerFactory, uid: str, refusal: str
) -> None:
    """A client that publishes right after CONNECT, as MQTT allows, reads its refusal."""
    if refusal == "not-authorized":
        broker = broker_factory(allow_anonymous=False, close_linger=5)
        level, expected = 5, {NOT_AUTHORIZED}
    else:
        broker = broker_factory(close_linger=5)
        level, expected = 6, {V3_UNACCEPTABLE_PROTOCOL, UNSUPPORTED_PROTOCOL_VERSION}
    with raw_clients(broker.host, broker.port) as raw:
        client = raw.open(level=level)
        client.send(connect(f"{uid}-refused", level=level))
        (connack,) = read_while_sending(client, CONNACK, lead=0.3)
        assert connack.reason_code in expected, connack
        assert_half_closed(client)


@pytest.mark.parametrize("linger", [0.0, 1.0])
def test_linger_is_bounded(broker_factory: BrokerFactory, uid: str, linger: float) -> None:
    """A client that never stops sending nor closes is cut off after about close_linger;
    with 0 at once (the old close). Its bytes do not move the deadline."""
    broker = broker_factory(allow_anonymous=False, close_linger=linger)
    with raw_clients(broker.host, broker.port) as raw:
        client = raw.open()
        client.send(connect(f"{uid}-stubborn"))
        start = time.monotonic()
        try:
            while time.monotonic() - start < linger + 3:
                client.send(FILLER)
                time.sleep(PACE)
        except OSError:
            pass
        else:
            raise AssertionError(f"still open {linger + 3} s after the refusal")
        elapsed = time.monotonic() - start
        assert linger * 0.8 <= elapsed < linger + 1.5, elapsed


def test_without_linger_the_client_gets_a_reset(broker_factory: BrokerFactory, uid: str) -> None:
    """close_linger = 0 is the old close, and the client above would fail against it:
    this is what the tests of this module guard against."""
    broker = broker_factory(receive_maximum=2, close_linger=0)
    with raw_clients(broker.host, broker.port) as raw:
        client = raw.connected(f"{uid}-fast")
        with pytest.raises(Reset):
            over_receive_maximum(client, uid, 2)


def refused_and_left_open(raw: RawClients, client_id: str) -> None:
    """CONNACK 0x97 and EOF; the client keeps its socket open, so the broker's lingers."""
    client = raw.open()
    assert client.connect(client_id).reason_code == QUOTA_EXCEEDED
    assert_half_closed(client, sends=1)


def test_lingering_sockets_count_against_max_connections(
    broker_factory: BrokerFactory, uid: str
) -> None:
    """A lingering socket is no client any more (its slot is free at once), but it is still
    a socket: past max_connections + 16 of them, new sockets are reset on accept, until
    the lingering ones close."""
    broker = broker_factory(max_connections=1, receive_maximum=1, close_linger=3)
    with raw_clients(broker.host, broker.port) as raw:
        first = raw.connected(f"{uid}-first")
        assert over_receive_maximum(first, uid, 1)[-1].reason_code == RECEIVE_MAXIMUM_EXCEEDED
        assert_half_closed(first, sends=1)
        raw.connected(f"{uid}-second")  # the disconnected client no longer counts
        for n in range(15):  # first + second + 15 = max_connections + 16 sockets
            refused_and_left_open(raw, f"{uid}-refused-{n}")
        extra = raw.open()
        with pytest.raises((Closed, OSError)):
            extra.connect(f"{uid}-extra")
        deadline = time.monotonic() + 6
        while True:  # once the lingering sockets close, new ones are let in to be told
            try:
                if raw.open().connect(f"{uid}-later").reason_code == QUOTA_EXCEEDED:
                    break
            except (Closed, OSError):
                pass
            assert time.monotonic() < deadline, "lingering sockets were never released"
            time.sleep(0.2)


def test_shutdown_disconnect_reaches_a_client_that_keeps_sending(
    broker_factory: BrokerFactory, uid: str
) -> None:
    """SIGTERM: DISCONNECT 0x8B, then EOF, although the client goes on publishing; the
    node waits for the lingering socket before it exits, and exits once the client closes."""
    broker = broker_factory(close_linger=5)
    with raw_clients(broker.host, broker.port) as raw:
        client = raw.connected(f"{uid}-busy")
        broker.proc.send_signal(signal.SIGTERM)
        (packet,) = read_while_sending(client, DISCONNECT)
        assert packet.reason_code == SERVER_SHUTTING_DOWN
        assert_half_closed(client)
        assert broker.proc.poll() is None, "the node exited under a lingering socket"
        client.close()
        assert broker.proc.wait(4) == 0
