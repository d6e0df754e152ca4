"""The node's log about its clients, read from a real ``raftmq node`` process.

One node at the default log level serves a client for each way a connection
ends (its DISCONNECT, keep-alive timeout, a malformed packet, a takeover, an
abrupt close, a reset, the node's SIGTERM), refused CONNECTs, a password
guesser and a client the ACL refuses; its log is then checked line by line,
and for the passwords, which must appear nowhere. A second node, at debug
with ``log_client``, traces one client's packets and no other's.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clients import unique
from rawmqtt import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    SUBACK,
    RawClient,
    ack,
    connect,
    disconnect,
    publish,
    raw_clients,
    subscribe,
)
from securitykit import connect_packet

from raftmq.node.passwords import hash_password

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # raftmq's own log lines
BrokerFactory = Callable[..., "RunningBroker"]
TIMEOUT = 5.0
PASSWORD = "right-pw-Q7xK2-must-never-be-logged"
WRONG_PASSWORD = "wrong-pw-Z3vN8-must-never-be-logged"
GUESSES = 12
WARNINGS_PER_INTERVAL = 5  # client_log.WARNINGS_PER_INTERVAL, as the log states it
LINE = re.compile(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) (raftmq\.[\w.]+): (.*)$")


def entries(broker: RunningBroker, logger: str) -> list[tuple[str, str]]:
    """(level, message) of each line ``logger`` wrote so far."""
    found = []
    for line in list(broker.output):
        match = LINE.search(line)
        if match and match.group(2) == logger:
            found.append((match.group(1), match.group(3)))
    return found


def wait_for(broker: RunningBroker, logger: str, pattern: str) -> tuple[str, str]:
    """The first line of ``logger`` matching ``pattern`` (a regex), waiting for it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for level, message in entries(broker, logger):
            if re.search(pattern, message):
                return level, message
        time.sleep(0.02)
    lines = "\n".join(broker.output)
    raise AssertionError(f"no {logger} line matching {pattern!r}; the log:\n{lines}")


def peer(client: RawClient) -> str:
    """The client's address, as the node sees it."""
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}"


def test_connect_refusal_and_every_disconnect_reason_have_their_line(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    users = tmp_path / "passwd"
    users.write_text(f"alice:{hash_password(PASSWORD.encode())}\n")
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite logs/#\ntopic deny logs/secret/#\n")
    broker = broker_factory(
        listen=["tcp://127.0.0.1:0"],
        password_file=str(users),
        acl_file=str(acl),
        allow_anonymous=True,
        durability="memory",
        close_linger=0.5,
        connect_timeout=1,
    )
    ids = {name: unique(f"logs-{name}") for name in ("alice", "v4", "idle", "junk", "gone")}
    ids |= {name: unique(f"logs-{name}") for name in ("reset", "guess", "denied", "stays")}
    expected: list[tuple[str, str]] = []
    """(level, exact message) the node must have written, each exactly once."""

    def expect(level: str, message: str) -> None:
        expected.append((level, message))
        wait_for(broker, "raftmq.clients", "^" + re.escape(message) + "$")

    with raw_clients(broker.host, broker.port) as clients:
        silent = clients.open()  # sends no CONNECT: dropped after connect_timeout

        # A user with a password, v5, who leaves with DISCONNECT 0x04 (with will).
        alice = clients.open(5)
        alice.send(
            connect_packet(ids["alice"], username="alice", password=PASSWORD.encode(), keepalive=30)
        )
        assert alice.read().reason_code == 0
        alice.send(disconnect(0x04))
        alice.read_until_closed()
        expect(
            "INFO",
            f"client {ids['alice']!r} connected: peer {peer(alice)}, user 'alice', protocol 5, "
            "keepalive 30s, clean start 1, session present 0",
        )
        expect(
            "INFO",
            f"client {ids['alice']!r} disconnected: peer {peer(alice)}, "
            "reason client DISCONNECT disconnect with will (0x04)",
        )

        # v3.1.1 with a persistent session, taken over by a second connection that
        # finds it; the second one then drops its socket without a word.
        first = clients.open(4)
        assert first.connect(ids["v4"], clean=False, keepalive=20).reason_code == 0
        second = clients.open(4)
        assert second.connect(ids["v4"], clean=False, keepalive=20).session_present
        first.read_until_closed()
        expect(
            "INFO",
            f"client {ids['v4']!r} connected: peer {peer(first)}, user anonymous, protocol 4, "
            "keepalive 20s, clean start 0, session present 0",
        )
        expect(
            "INFO",
            f"client {ids['v4']!r} disconnected: peer {peer(first)}, reason session taken "
            f"over (0x8E): by a new connection from {peer(second)}",
        )
        expect(
            "INFO",
            f"client {ids['v4']!r} connected: peer {peer(second)}, user anonymous, protocol 4, "
            "keepalive 20s, clean start 0, session present 1",
        )
        second_peer = peer(second)
        second.close()
        expect(
            "INFO",
            f"client {ids['v4']!r} disconnected: peer {second_peer}, "
            "reason closed by the client without DISCONNECT",
        )

        # Keep alive 1 s, then silence: the node gives up after 1.5 s.
        idle = clients.connected(ids["idle"], level=4, keepalive=1)
        idle.read_until_closed()
        _, line = wait_for(broker, "raftmq.clients", f"^client {ids['idle']!r} disconnected")
        assert re.fullmatch(
            f"client {ids['idle']!r} disconnected: peer {peer(idle)}, reason keep alive "
            r"timeout \(0x8D\): nothing received for \d+\.\ds, keepalive 1s",  # 1.5 s, or late
            line,
        ), line
        expected.append(("INFO", line))

        # A PUBLISH with QoS 3: malformed, and the line names the packet.
        junk = clients.connected(ids["junk"])
        junk.send(b"\x36\x00")
        assert [p.reason_code for p in junk.read_until_closed()] == [0x81]
        expect(
            "INFO",
            f"client {ids['junk']!r} disconnected: peer {peer(junk)}, "
            "reason protocol error malformed packet (0x81): PUBLISH: QoS 3",
        )

        # A reset instead of a close (SO_LINGER 0): a socket error.
        reset = clients.connected(ids["reset"])
        reset_peer = peer(reset)
        reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()
        _, line = wait_for(broker, "raftmq.clients", f"^client {ids['reset']!r} disconnected")
        assert line.startswith(
            f"client {ids['reset']!r} disconnected: peer {reset_peer}, reason socket error "
            "ConnectionResetError("
        ), line
        expected.append(("INFO", line))

        # Refused CONNECTs: a protocol level nobody speaks, and a v3.1.1 client
        # without an id that wants its session kept.
        alien = clients.open(5)
        alien.send(connect("logs-alien", level=7))
        alien.read_until_closed()
        expect(
            "INFO",
            f"connection from {peer(alien)} ended before CONNECT: reason protocol error "
            "unsupported protocol version (0x84): CONNECT: unsupported protocol level 7 for 'MQTT'",
        )
        nameless = clients.open(4)
        assert nameless.connect("", clean=False).reason_code == 2
        expect(
            "INFO",
            f"client '' refused: peer {peer(nameless)}, user anonymous, protocol 4, "
            "reason client identifier not valid (0x85)",
        )

        # A password guesser: a few warnings, then silence, then the count.
        for _ in range(GUESSES):
            guesser = clients.open(5)
            guesser.send(
                connect_packet(ids["guess"], username="alice", password=WRONG_PASSWORD.encode())
            )
            assert guesser.read().reason_code == 0x86
            guesser.close()
        wait_for(broker, "raftmq.clients", f"^client {ids['guess']!r} login failed")

        # The ACL refuses publishes and a subscription; allowed publishes get no line.
        denied = clients.connected(ids["denied"])
        for packet_id in range(1, 9):
            denied.send(publish("logs/secret/x", b"no", qos=1, packet_id=packet_id))
            assert denied.expect(PUBACK).reason_code == 0x87
        denied.send(subscribe(9, [("logs/secret/#", 1)]))
        assert denied.expect(SUBACK).reason_codes == [0x87]
        for _ in range(50):
            denied.send(publish("logs/ok", b"fine"))
        denied.send(disconnect())
        denied.read_until_closed()
        denied_peer = peer(denied)
        expect(
            "INFO",
            f"client {ids['denied']!r} disconnected: peer {denied_peer}, "
            "reason client DISCONNECT normal disconnection (0x00)",
        )

        silent.read_until_closed()
        expect(
            "INFO",
            f"connection from {peer(silent)} ended before CONNECT: reason no CONNECT within "
            "connect_timeout (1.0s)",
        )

        # SIGTERM with a v5 client connected: told 0x8B, and the line says so.
        stays = clients.connected(ids["stays"])
        broker.stop()
        assert [p.type for p in stays.read_until_closed()] == [DISCONNECT]
        expect(
            "INFO",
            f"client {ids['stays']!r} disconnected: peer {peer(stays)}, "
            "reason server shutting down (0x8B)",
        )
        suppressed = GUESSES - WARNINGS_PER_INTERVAL
        expect(
            "WARNING",
            f"client {ids['guess']!r}: {suppressed} more warnings suppressed "
            f"(at most {WARNINGS_PER_INTERVAL} per 60s)",
        )

    lines = entries(broker, "raftmq.clients")
    for line in expected:
        assert lines.count(line) == 1, (line, lines)
    failed = [m for _, m in lines if m.startswith(f"client {ids['guess']!r} login failed")]
    assert len(failed) == WARNINGS_PER_INTERVAL
    assert set(failed) == {m for m in failed if ", user 'alice', protocol 5, reason bad user " in m}

    # Denials: the first five of nine, the count when the client left, then its disconnect.
    about_denied = [(lvl, m) for lvl, m in lines if m.startswith(f"client {ids['denied']!r}")]
    denial = f"client {ids['denied']!r} denied publish 'logs/secret/x' by the ACL: user anonymous"
    assert about_denied == [
        ("INFO", about_denied[0][1]),
        *[("WARNING", denial)] * WARNINGS_PER_INTERVAL,
        ("WARNING", f"client {ids['denied']!r}: 4 more warnings suppressed (at most 5 per 60s)"),
        ("INFO", about_denied[-1][1]),
    ], about_denied
    assert "connected" in about_denied[0][1] and "disconnected" in about_denied[-1][1]

    # Every connection: one line when it came, one when it went; never one per message.
    for name in ("v4", "idle", "junk", "reset", "stays"):
        mine = [m for _, m in lines if m.startswith(f"client {ids[name]!r} ")]
        arrivals = 2 if name == "v4" else 1
        assert len(mine) == 2 * arrivals, mine
    everything = "\n".join(broker.output)
    assert PASSWORD not in everything and WRONG_PASSWORD not in everything
    assert "logs/ok" not in everything


def test_log_client_traces_that_client_packet_by_packet(
    broker_factory: BrokerFactory,
) -> None:
    traced_id, other_id = unique("logs-traced"), unique("logs-other")
    broker = broker_factory(
        listen=["tcp://127.0.0.1:0"],
        durability="memory",
        log_level="debug",
        log_client=traced_id,
    )
    payload = b"PAYLOAD-must-not-be-logged"
    with raw_clients(broker.host, broker.port) as clients:
        other = clients.connected(other_id)
        traced = clients.connected(traced_id)
        for client in (other, traced):
            client.send(subscribe(1, [("logs/t", 1)]))
            client.expect(SUBACK)
        traced.send(publish("logs/t", payload, qos=1, packet_id=2, retain=True))
        delivered = [traced.read(), traced.read()]
        [puback] = [p for p in delivered if p.type == PUBACK]
        [message] = [p for p in delivered if p.type == PUBLISH]
        assert (puback.packet_id, message.payload) == (2, payload)
        traced.send(ack(PUBACK, message.packet_id or 0))
        assert other.expect(PUBLISH).payload == payload
        traced.send(disconnect())
        traced.read_until_closed()
        wait_for(broker, "raftmq.trace", "in  DISCONNECT")

    trace = [m for level, m in entries(broker, "raftmq.trace") if level == "DEBUG"]
    pid = message.packet_id
    me = f"client {traced_id!r}"
    sent_back = {  # the PUBACK and the delivery to itself, in the order they came
        PUBACK: f"{me} out PUBACK id=2 reason=0x00",
        PUBLISH: f"{me} out PUBLISH id={pid} topic='logs/t' qos=1 retain=0 dup=0 "
        f"bytes={len(payload)}",
    }
    assert trace == [
        f"{me}: tracing its packets (log_client)",
        f"{me} out CONNACK session_present=0 reason=0x00",
        f"{me} in  SUBSCRIBE id=1 filter='logs/t' qos=1",
        f"{me} out SUBACK id=1 codes=0x01",
        f"{me} in  PUBLISH id=2 topic='logs/t' qos=1 retain=1 dup=0 bytes={len(payload)}",
        *(sent_back[p.type] for p in delivered),
        f"{me} in  PUBACK id={pid} reason=0x00",
        f"{me} in  DISCONNECT reason=0x00",
    ]
    assert other_id not in "\n".join(m for _, m in entries(broker, "raftmq.trace"))
    assert payload.decode() not in "\n".join(broker.output)
