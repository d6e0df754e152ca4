"""The SWIM codec: every message survives a round trip, sizes are what the core
budgets with, and anything else (random bytes, truncations, flipped bytes, another
version) raises BadPacket and nothing else."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raftmq.cluster.swim import (
    Ack,
    BadPacket,
    MemberMeta,
    Nack,
    Ping,
    PingReq,
    PushPull,
    State,
    UnknownVersion,
    Update,
)
from raftmq.cluster.swim.wire import VERSION, base_size, decode, encode, update_size

META = MemberMeta("n1", "127.0.0.1:7946", "127.0.0.1:4400", "127.0.0.1:4500", "[::1]:1883")
UPDATES = (
    Update("n1", State.ALIVE, 3, META),
    Update("n2", State.SUSPECT, 7, accuser="n3"),
    Update("n3", State.DEAD, 0),
    Update("nœud-4", State.LEFT, 2**32 - 1),
)
MESSAGES = [
    Ping(1, "n2", "n1", UPDATES),
    Ping(0, "n2", "n1"),
    PingReq(2**32 - 1, "n3", "10.0.0.3:7946", "n1", UPDATES[:1]),
    Ack(5, "n3", UPDATES[1:]),
    Nack(6, "n2"),
    PushPull("n1", True, (Update("n1", State.ALIVE, 3, META),), UPDATES[2:]),
    PushPull("n1", False, (Update("n9", State.DEAD, 1, replace(META, node_id="n9")),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_a_round_trip(message: object) -> None:
    data = encode(message)  # type: ignore[arg-type]
    assert data[0] == VERSION
    assert decode(data) == message
    assert len(data) == base_size(message) + sum(map(update_size, message.updates))  # type: ignore[attr-defined, arg-type]


def test_the_format_is_compact() -> None:
    """A probe with nothing to gossip is a couple dozen bytes; an alive update with four
    addresses under 90: a 1400-byte datagram carries more than a dozen."""
    assert len(encode(Ping(1, "n2", "n1"))) < 16
    assert update_size(UPDATES[0]) < 90


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_a_bad_packet(message: object) -> None:
    data = encode(message)  # type: ignore[arg-type]
    for size in range(len(data)):
        with pytest.raises(BadPacket):
            decode(data[:size])
    with pytest.raises(BadPacket, match="after the last update"):
        decode(data + b"\0")


def test_another_version_is_named() -> None:
    data = bytearray(encode(MESSAGES[0]))
    data[0] = VERSION + 1
    with pytest.raises(UnknownVersion, match=f"version {VERSION + 1}") as caught:
        decode(bytes(data))
    assert caught.value.reason == "version"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (bytes((VERSION, 99)), "unknown message type 99"),
        (bytes((VERSION, 1, 0, 0, 0, 1, 2)) + b"\xff\xfe" + b"\x02n1\x00", "target is not UTF-8"),
        (bytes((VERSION, 3, 0, 0, 0, 1, 0, 0)), "sender is empty"),
        (encode(Ping(1, "n2", "n1"))[:-1] + bytes((1, 0, 0, 0, 0, 0, 0, 1)) + b"x", "alive update"),
        (encode(Ping(1, "n2", "n1"))[:-1] + bytes((1, 9, 0, 0, 0, 0, 0)), "unknown state 9"),
        (
            encode(PingReq(1, "n2", "host:7946", "n1")).replace(b"host:7946", b"host:port"),
            "host:port",
        ),
    ],
)
def test_what_is_wrong_is_named(data: bytes, problem: str) -> None:
    with pytest.raises(BadPacket, match=problem):
        decode(data)


def test_random_bytes_and_corruptions_raise_only_bad_packet() -> None:
    """Fuzzing: whatever arrives, decode returns a message or raises BadPacket."""
    rng = random.Random(12)
    seeds = [encode(message) for message in MESSAGES]
    decoded = failed = 0
    for _ in range(20_000):
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
            if data and rng.random() < 0.8:
                data = bytes((VERSION,)) + data[1:]  # get past the version check
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        try:
            decode(data)
        except BadPacket:
            failed += 1
        else:
            decoded += 1
    assert failed > 10_000 and decoded > 100  # both paths were exercised


def test_what_the_format_cannot_hold_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="target 'xxxx"):
        encode(Ping(1, "x" * 256, "n1"))
    with pytest.raises(ValueError, match="'n9' with the meta of 'n1'"):
        encode(Ack(1, "n1", (Update("n9", State.ALIVE, 1, META),)))
