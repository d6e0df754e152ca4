"""Robustness of ``Decoder.feed`` against hostile input.

Whatever arrives, only ``MQTTProtocolError`` may escape; and whatever the
decoder accepts, the encoder must reproduce as something that decodes to the
same packets.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmq.node.codec import Decoder, encode
from raftmq.node.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import MQTTProtocolError

LEVELS = (None, 3, 4, 5)


def _session(level: int) -> list[Packet]:
    """One packet of every type valid at ``level``, with v5 properties where allowed."""
    v5 = level == 5
    user = {"user_property": [("k", "v"), ("k", "\u00e9")]} if v5 else {}
    packets: list[Packet] = [
        Connack(level > 3, 0, {"assigned_client_identifier": "id", "maximum_qos": 1} if v5 else {}),
        Publish("a/b/c", b"payload", 0),
        Publish(
            "s",
            b"\x00" * 40,
            2,
            True,
            True,
            0x1234,
            {"subscription_identifier": [1, 300], "correlation_data": b"cd", **user} if v5 else {},
        ),
        Puback(1, 0x10 if v5 else 0, {"reason_string": "r"} if v5 else {}),
        Pubrec(2),
        Pubrel(3, 0x92 if v5 else 0),
        Pubcomp(4),
        Subscribe(
            5,
            [("a/+/#", SubscriptionOptions(1)), ("$share/g/x", SubscriptionOptions(2))],
            {"subscription_identifier": [9]} if v5 else {},
        ),
        Suback(5, [1, 2, 0x80]),
        Unsubscribe(6, ["a/+/#", "x"], user),
        Unsuback(6, [0, 0x11] if v5 else []),
        Pingreq(),
        Pingresp(),
        Disconnect(0x04 if v5 else 0, {"session_expiry_interval": 10} if v5 else {}),
    ]
    if v5:
        packets.append(Auth(0x18, {"authentication_method": "m", "authentication_data": b"d"}))
    return packets


def _connect(level: int) -> Connect:
    v5 = level == 5
    return Connect(
        "client",
        level,
        "MQIsdp" if level == 3 else "MQTT",
        False,
        30,
        Will("w/t", b"bye", 1, True, {"will_delay_interval": 3} if v5 else {}),
        "user",
        b"pw",
        {"receive_maximum": 5, "authentication_method": "m"} if v5 else {},
    )


# (level the decoder starts at, wire bytes); a None level starts with a CONNECT.
CORPUS: list[tuple[int | None, bytes]] = []
CORPUS_IDS: list[str] = []
for _level in (3, 4, 5):
    _connect_wire = encode(_connect(_level), _level)
    CORPUS += [(None, _connect_wire), (None, _connect_wire + encode(Publish("t"), _level))]
    CORPUS_IDS += [f"v{_level}-CONNECT", f"v{_level}-CONNECT+PUBLISH"]
    for _index, _packet in enumerate(_session(_level)):
        CORPUS.append((_level, encode(_packet, _level)))
        CORPUS_IDS.append(f"v{_level}-{_index}-{_packet.type.name}")


def check_feed(chunks: list[bytes], level: int | None, max_packet_size: int | None = None) -> None:
    """Feed ``chunks``: only MQTTProtocolError may escape, and what is accepted re-encodes."""
    kwargs = {} if max_packet_size is None else {"max_packet_size": max_packet_size}
    decoder = Decoder(protocol_level=level, **kwargs)
    packets: list[Packet] = []
    try:
        for chunk in chunks:
            packets += decoder.feed(chunk)
            if max_packet_size is not None:
                # The pending partial packet never exceeds the limit (private, but
                # this is the memory bound the limit exists for).
                assert len(decoder._buf) < max(max_packet_size, 5)
    except MQTTProtocolError as exc:
        assert isinstance(exc.reason_code, ReasonCode)
        assert exc.message
        return
    if packets:
        assert_reencodes(packets, level, decoder.protocol_level)


def assert_reencodes(packets: list[Packet], start: int | None, level: int | None) -> None:
    assert level is not None
    wire = b"".join(encode(packet, level) for packet in packets)
    assert Decoder(protocol_level=start).feed(wire) == packets


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=400),
    level=st.sampled_from(LEVELS),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_random_bytes(data: bytes, level: int | None, cuts: list[int]) -> None:
    check_feed(split(data, cuts), level)


@settings(max_examples=400, deadline=None)
@given(
    b0=st.integers(0, 255),
    body=st.binary(max_size=200),
    level=st.sampled_from(LEVELS),
)
def test_random_bodies_behind_a_valid_header(b0: int, body: bytes, level: int | None) -> None:
    # A correct remaining length gets random content past the framing checks
    # and into every packet decoder.
    length = len(body)
    header = bytes((b0, length)) if length < 0x80 else bytes((b0, 0x80 | (length & 0x7F), 1))
    check_feed([header + body], level)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int | None, bytes]:
    level, wire = draw(st.sampled_from(CORPUS))
    data = bytearray(wire)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        index = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[index] = draw(st.integers(0, 255))
        elif op == "insert":
            data.insert(index, draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[index]
        elif op == "truncate":
            del data[index:]
    return level, bytes(data)


@settings(max_examples=400, deadline=None)
@given(case=mutations(), cuts=st.lists(st.integers(0, 200), max_size=3))
def test_mutated_valid_packets(case: tuple[int | None, bytes], cuts: list[int]) -> None:
    level, data = case
    check_feed(split(data, cuts), level)


@pytest.mark.parametrize(("level", "wire"), CORPUS, ids=CORPUS_IDS)
def test_every_bit_flip_and_truncation(level: int | None, wire: bytes) -> None:
    check_feed([wire], level)  # the unmutated packet must itself survive the round trip
    for index in range(len(wire)):
        check_feed([wire[:index]], level)
        for bit in range(8):
            flipped = bytearray(wire)
            flipped[index] ^= 1 << bit
            check_feed([bytes(flipped)], level)


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(CORPUS),
    repeat=st.integers(1, 3),
    limit=st.integers(2, 80),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_buffer_stays_below_max_packet_size(
    case: tuple[int | None, bytes], repeat: int, limit: int, cuts: list[int]
) -> None:
    level, wire = case
    check_feed(split(wire * repeat, cuts), level, max_packet_size=limit)
