"""Codec tests: every validation rule by reason code, golden bytes, framing, round trips.

Wire bytes here are written by hand (``frame``/``utf8`` below) rather than with
the encoder, so that a bug shared by encoder and decoder cannot hide.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftmq.node.codec import Decoder, encode
from raftmq.node.encoders import encode_publish_parts
from raftmq.node.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
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
from raftmq.node.properties import ALLOWED, PROPERTIES, PropertySpec, WireType
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import MQTTProtocolError, validate_topic_filter, validate_topic_name

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def frame(b0: int, body: bytes) -> bytes:
    assert len(body) < 128, "hand-built packets stay below the 2-byte length form"
    return bytes((b0, len(body))) + body


def connect_bytes(
    level: int = 4,
    flags: int = 0x02,
    payload: bytes = utf8("cid"),
    props: bytes = b"\x00",
    name: str | None = None,
) -> bytes:
    if name is None:
        name = "MQIsdp" if level == 3 else "MQTT"
    body = utf8(name) + bytes((level, flags)) + u16(60)
    if level == 5:
        body += props
    return frame(0x10, body + payload)


def decode(data: bytes, level: int | None = None, **kwargs: int) -> list[Packet]:
    return Decoder(protocol_level=level, **kwargs).feed(data)


def decode_one(data: bytes, level: int | None = None) -> Packet:
    (packet,) = decode(data, level)
    return packet


def assert_error(
    data: bytes, reason: ReasonCode, level: int | None = None, match: str | None = None
) -> None:
    with pytest.raises(MQTTProtocolError, match=match) as info:
        decode(data, level)
    assert info.value.reason_code == reason, info.value.message


# --------------------------------------------------------------------------
# Golden bytes captured from paho-mqtt 2.2.0 talking to a plain socket:
# CONNECT (will qos 1 retained, user/pass, keepalive 30), PUBLISH qos 1,
# SUBSCRIBE qos 2 -- once per protocol level.

PAHO_V31 = bytes.fromhex(
    "10 36 00 06 4d 51 49 73 64 70 03 ee 00 1e 00 0b 70 61 68 6f 2d 67 6f 6c 64 65 6e"
    " 00 0a 77 69 6c 6c 2f 74 6f 70 69 63 00 03 62 79 65 00 04 75 73 65 72 00 04 70 61"
    " 73 73 32 0c 00 03 61 2f 62 00 01 68 65 6c 6c 6f 82 0a 00 02 00 05 78 2f 2b 2f 79 02"
)
PAHO_V311 = bytes.fromhex(
    "10 34 00 04 4d 51 54 54 04 ee 00 1e 00 0b 70 61 68 6f 2d 67 6f 6c 64 65 6e 00 0a"
    " 77 69 6c 6c 2f 74 6f 70 69 63 00 03 62 79 65 00 04 75 73 65 72 00 04 70 61 73 73"
    " 32 0c 00 03 61 2f 62 00 01 68 65 6c 6c 6f 82 0a 00 02 00 05 78 2f 2b 2f 79 02"
)
PAHO_V5 = bytes.fromhex(
    "10 36 00 04 4d 51 54 54 05 ee 00 1e 00 00 0b 70 61 68 6f 2d 67 6f 6c 64 65 6e 00"
    " 00 0a 77 69 6c 6c 2f 74 6f 70 69 63 00 03 62 79 65 00 04 75 73 65 72 00 04 70 61"
    " 73 73 32 0d 00 03 61 2f 62 00 01 00 68 65 6c 6c 6f 82 0b 00 02 00 00 05 78 2f 2b"
    " 2f 79 02"
)
# paho-mqtt 2.2.0, v5 with properties: CONNECT (session expiry 3600, receive
# maximum 10), PUBLISH qos 2 (message expiry, content type, user property),
# SUBSCRIBE $share/g/a/# (subscription id 7, RAP, retain handling 2),
# UNSUBSCRIBE a/#, DISCONNECT.
PAHO_V5_PROPS = bytes.fromhex(
    "10 17 00 04 4d 51 54 54 05 02 00 3c 08 11 00 00 0e 10 21 00 0a 00 02 70 35 34 23"
    " 00 03 73 2f 74 00 01 19 02 00 00 00 1e 03 00 0a 74 65 78 74 2f 70 6c 61 69 6e 26"
    " 00 01 6b 00 01 76 68 69 82 14 00 02 02 0b 07 00 0c 24 73 68 61 72 65 2f 67 2f 61"
    " 2f 23 29 a2 08 00 03 00 00 03 61 2f 23 e0 00"
)


def _paho_packets(level: int) -> list[Packet]:
    return [
        Connect(
            "paho-golden",
            level,
            "MQIsdp" if level == 3 else "MQTT",
            True,
            30,
            Will("will/topic", b"bye", 1, True),
            "user",
            b"pass",
        ),
        Publish("a/b", b"hello", 1, packet_id=1),
        Subscribe(2, [("x/+/y", SubscriptionOptions(2))]),
    ]


@pytest.mark.parametrize(("level", "wire"), [(3, PAHO_V31), (4, PAHO_V311), (5, PAHO_V5)])
def test_golden_paho_session(level: int, wire: bytes) -> None:
    decoder = Decoder()
    assert decoder.feed(wire) == _paho_packets(level)
    assert decoder.protocol_level == level
    assert b"".join(encode(p, level) for p in _paho_packets(level)) == wire


def test_golden_paho_v5_properties() -> None:
    expected: list[Packet] = [
        Connect(
            "p5",
            5,
            keepalive=60,
            properties={"session_expiry_interval": 3600, "receive_maximum": 10},
        ),
        Publish(
            "s/t",
            b"hi",
            2,
            packet_id=1,
            properties={
                "message_expiry_interval": 30,
                "content_type": "text/plain",
                "user_property": [("k", "v")],
            },
        ),
        Subscribe(
            2,
            [("$share/g/a/#", SubscriptionOptions(1, retain_as_published=True, retain_handling=2))],
            {"subscription_identifier": [7]},
        ),
        Unsubscribe(3, ["a/#"]),
        Disconnect(),
    ]
    assert Decoder().feed(PAHO_V5_PROPS) == expected
    assert b"".join(encode(p, 5) for p in expected) == PAHO_V5_PROPS


@pytest.mark.parametrize(
    ("packet", "level", "wire"),
    [
        # Remaining length boundaries from the spec's table in 1.5.5 / 2.2.3.
        (Publish("t", b"x" * 124), 4, b"\x30\x7f\x00\x01t" + b"x" * 124),
        (Publish("t", b"x" * 125), 4, b"\x30\x80\x01\x00\x01t" + b"x" * 125),
        (Publish("t", b"x" * 16380), 4, b"\x30\xff\x7f\x00\x01t" + b"x" * 16380),
        (Publish("t", b"x" * 16381), 4, b"\x30\x80\x80\x01\x00\x01t" + b"x" * 16381),
        (Publish("a/b", b"", 1, True, True, 10), 4, b"\x3b\x07\x00\x03a/b\x00\x0a"),
        (Puback(5), 5, b"\x40\x02\x00\x05"),
        (Puback(5, 0x10), 5, b"\x40\x03\x00\x05\x10"),
        (Puback(5, 0, {"reason_string": "x"}), 5, b"\x40\x08\x00\x05\x00\x04\x1f\x00\x01x"),
        (Puback(5, 0x10, {"reason_string": "x"}), 4, b"\x40\x02\x00\x05"),
        (Pubrel(7), 4, b"\x62\x02\x00\x07"),
        (Pubrel(7, 0x92), 5, b"\x62\x03\x00\x07\x92"),
        (Connack(True, 0), 4, b"\x20\x02\x01\x00"),
        (Connack(True, 0), 3, b"\x20\x02\x00\x00"),
        (Connack(False, ReasonCode.NOT_AUTHORIZED), 4, b"\x20\x02\x00\x05"),
        (Connack(False, ReasonCode.SERVER_BUSY), 4, b"\x20\x02\x00\x03"),
        (Connack(False, 0x87), 5, b"\x20\x03\x00\x87\x00"),
        (Suback(1, [0, 1, 2, 0x87]), 4, b"\x90\x06\x00\x01\x00\x01\x02\x80"),
        (Suback(1, [0x87]), 5, b"\x90\x04\x00\x01\x00\x87"),
        (Unsuback(3, [0x11]), 4, b"\xb0\x02\x00\x03"),
        (Unsuback(3, [0x11]), 5, b"\xb0\x04\x00\x03\x00\x11"),
        (Unsubscribe(4, ["a", "b"]), 4, b"\xa2\x08\x00\x04\x00\x01a\x00\x01b"),
        (Pingreq(), 4, b"\xc0\x00"),
        (Pingresp(), 5, b"\xd0\x00"),
        (Disconnect(0x04), 4, b"\xe0\x00"),
        (Disconnect(), 5, b"\xe0\x00"),
        (Disconnect(0x04), 5, b"\xe0\x01\x04"),
        (Auth(), 5, b"\xf0\x00"),
        (
            Auth(0x18, {"authentication_method": "m"}),
            5,
            b"\xf0\x06\x18\x04\x15\x00\x01m",
        ),
        (
            # The 3.1.1 spec's CONNECT example: flags 0xCE, keep alive 10.
            Connect("c", 4, keepalive=10, will=Will("w", b"p", 1), username="u", password=b"p"),
            4,
            b"\x10\x19\x00\x04MQTT\x04\xce\x00\x0a\x00\x01c\x00\x01w\x00\x01p\x00\x01u\x00\x01p",
        ),
        (
            # The 5.0 spec's CONNECT example variable header: flags 0xC2, keep
            # alive 10, session expiry interval 10.
            Connect(
                "c",
                5,
                keepalive=10,
                username="u",
                password=b"p",
                properties={"session_expiry_interval": 10},
            ),
            5,
            b"\x10\x19\x00\x04MQTT\x05\xc2\x00\x0a\x05\x11\x00\x00\x00\x0a\x00\x01c\x00\x01u\x00\x01p",
        ),
    ],
)
def test_golden_encoding(packet: Packet, level: int, wire: bytes) -> None:
    assert encode(packet, level) == wire
    if isinstance(packet, Publish):  # also covers 1-, 2- and 3-byte remaining lengths
        assert decode_one(wire, level) == packet


def test_v3_suback_and_connack_translate_v5_codes_on_encode() -> None:
    # Documented normalisation: these do not round-trip, they are mapped.
    assert decode_one(encode(Suback(1, [0x97]), 3), 3) == Suback(1, [0x80])
    assert decode_one(encode(Connack(False, 0x8A), 4), 4) == Connack(False, 5)


# --------------------------------------------------------------------------
# Fixed header and framing


def test_remaining_length_not_minimal() -> None:
    assert_error(b"\xc0\x80\x00", MALFORMED, 4, "minimally")


def test_remaining_length_longer_than_four_bytes() -> None:
    assert_error(b"\x30\xff\xff\xff\xff\x01", MALFORMED, 4, "longer than 4")


def test_largest_remaining_length_is_accepted_and_waits_for_the_body() -> None:
    assert decode(b"\x30\xff\xff\xff\x7f\x00", 4) == []


def test_packet_too_large_is_raised_from_the_header_alone() -> None:
    decoder = Decoder(protocol_level=4, max_packet_size=100)
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(b"\x30\xc8\x01")  # 3 + 200 bytes announced, nothing of the body sent
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_boundary_counts_the_whole_packet() -> None:
    packet = frame(0x30, utf8("t") + b"x" * 10)  # 2 + 3 + 10 = 15 bytes
    assert decode(packet, 4, max_packet_size=15) == [Publish("t", b"x" * 10)]
    with pytest.raises(MQTTProtocolError) as info:
        decode(packet, 4, max_packet_size=14)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_may_change_between_feeds() -> None:
    packet = frame(0x30, utf8("t") + b"x" * 10)
    decoder = Decoder(protocol_level=4)
    assert decoder.feed(packet) == [Publish("t", b"x" * 10)]
    decoder.max_packet_size = 10
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(packet)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_packet_type_zero_is_malformed() -> None:
    assert_error(b"\x00\x00", MALFORMED, 4)
    assert_error(b"\x00", MALFORMED, None)


def _bad_flag_bytes() -> list[int]:
    bad = []
    for kind in PacketType:
        if kind in (PacketType.PUBLISH, PacketType.CONNECT):
            continue
        good = (
            0x02 if kind in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
        )
        bad += [(kind << 4) | flags for flags in range(16) if flags != good]
    return bad


@pytest.mark.parametrize("b0", _bad_flag_bytes())
def test_reserved_flags_are_malformed(b0: int) -> None:
    assert_error(bytes((b0, 0)), MALFORMED, 5)


@pytest.mark.parametrize("flags", range(1, 16))
def test_connect_reserved_flags_are_malformed(flags: int) -> None:
    assert_error(bytes((0x10 | flags,)) + connect_bytes()[1:], MALFORMED)


def test_level_3_tolerates_dup_on_qos_1_control_packets() -> None:
    # MQTT 3.1 sent PUBREL/SUBSCRIBE/UNSUBSCRIBE at QoS 1 with DUP on retry.
    assert decode_one(b"\x6a\x02\x00\x07", 3) == Pubrel(7)
    assert_error(b"\x6a\x02\x00\x07", MALFORMED, 4)


def test_auth_only_exists_at_level_5() -> None:
    assert_error(b"\xf0\x00", MALFORMED, 4)
    assert_error(b"\xf0\x00", MALFORMED, 3)
    assert decode_one(b"\xf0\x00", 5) == Auth()


@pytest.mark.parametrize(
    "wire", [b"\xc0\x00", b"\x30\x03\x00\x01t", b"\xf0\x00", b"\x20\x02\x00\x00"]
)
def test_only_connect_before_the_protocol_level_is_known(wire: bytes) -> None:
    assert_error(wire, PROTOCOL, None, "before CONNECT")


def test_second_connect_is_a_protocol_error() -> None:
    decoder = Decoder()
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(connect_bytes() + connect_bytes())
    assert info.value.reason_code == PROTOCOL
    assert_error(connect_bytes(), PROTOCOL, 4)


@pytest.mark.parametrize(
    "wire",
    [
        frame(0x30, b"\x00"),  # topic length cut
        frame(0x30, b"\x00\x05ab"),  # topic shorter than its length
        frame(0x32, utf8("t") + b"\x00"),  # packet id cut
        frame(0x40, b"\x00"),
        frame(0x82, b"\x00\x01" + utf8("a")),  # options byte missing
    ],
)
def test_truncated_content_is_malformed(wire: bytes) -> None:
    assert_error(wire, MALFORMED, 4, "truncated")


@pytest.mark.parametrize(
    "wire",
    [
        frame(0x40, b"\x00\x01\x00"),
        frame(0xB0, b"\x00\x01\x00"),
        frame(0xC0, b"\x00"),
        frame(0xD0, b"\x00"),
        frame(0xE0, b"\x00"),
        frame(0x20, b"\x00\x00\x00"),
        connect_bytes(payload=utf8("cid") + b"\x00"),
    ],
)
def test_leftover_bytes_are_malformed(wire: bytes) -> None:
    level = None if wire[0] == 0x10 else 4
    assert_error(wire, MALFORMED, level, "unexpected bytes")


@pytest.mark.parametrize(
    "wire",
    [
        frame(0x40, b"\x00\x01\x00\x00\x00"),  # property length 0, then a stray byte
        frame(0xE0, b"\x00\x00\x00"),
    ],
)
def test_leftover_bytes_after_v5_properties_are_malformed(wire: bytes) -> None:
    assert_error(wire, MALFORMED, 5, "unexpected bytes")


# --------------------------------------------------------------------------
# CONNECT


def test_connect_sets_protocol_level_and_defaults() -> None:
    decoder = Decoder()
    assert decoder.protocol_level is None
    assert decoder.feed(connect_bytes(level=5, flags=0)) == [
        Connect("cid", 5, clean_start=False, keepalive=60)
    ]
    assert decoder.protocol_level == 5


@pytest.mark.parametrize(
    ("wire", "level"),
    [
        (connect_bytes(level=5, flags=0x03), 5),  # malformed after the level: answer in v5
        (connect_bytes(level=4, flags=0x03), 4),
        (connect_bytes(level=6), None),  # unsupported: the broker answers in 3.x
        (connect_bytes(name="HTTP"), None),
    ],
)
def test_failed_connect_reports_the_level_it_announced(wire: bytes, level: int | None) -> None:
    decoder = Decoder()
    with pytest.raises(MQTTProtocolError):
        decoder.feed(wire)
    assert decoder.protocol_level == level


def test_connect_and_following_packets_in_one_feed_use_the_new_level() -> None:
    publish_v5 = frame(0x30, utf8("t") + b"\x03\x23\x00\x01" + b"hi")  # topic_alias 1
    assert decode(connect_bytes(level=5) + publish_v5) == [
        Connect("cid", 5),
        Publish("t", b"hi", properties={"topic_alias": 1}),
    ]


def test_empty_client_id_is_left_to_the_broker() -> None:
    assert decode_one(connect_bytes(payload=utf8(""))) == Connect("", 4)


@pytest.mark.parametrize(
    ("name", "level"), [("MQTT", 3), ("MQIsdp", 4), ("MQTT", 6), ("MQTT", 0), ("MQIsdp", 5)]
)
def test_connect_unsupported_protocol_version(name: str, level: int) -> None:
    assert_error(connect_bytes(name=name, level=level), ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)


@pytest.mark.parametrize("name", ["HTTP", "mqtt", "MQTT\u00e9", ""])
def test_connect_unknown_protocol_name(name: str) -> None:
    assert_error(connect_bytes(name=name), PROTOCOL, match="protocol name")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (0x03, "reserved connect flag"),
        (0x0A, "without will flag"),  # will qos 1, no will flag
        (0x22, "without will flag"),  # will retain, no will flag
        (0x1E, "will QoS is 3"),
    ],
)
def test_connect_flag_rules(flags: int, match: str) -> None:
    assert_error(connect_bytes(flags=flags), MALFORMED, match=match)


@pytest.mark.parametrize("level", [3, 4])
def test_password_without_username_is_malformed_before_v5(level: int) -> None:
    wire = connect_bytes(level=level, flags=0x42, payload=utf8("cid") + utf8("pw"))
    assert_error(wire, MALFORMED, match="password flag")


def test_password_without_username_is_allowed_at_v5() -> None:
    wire = connect_bytes(level=5, flags=0x42, payload=utf8("cid") + utf8("pw"))
    assert decode_one(wire) == Connect("cid", 5, password=b"pw")


def test_connect_v5_will_properties() -> None:
    will_props = b"\x07\x18\x00\x00\x00\x05\x01\x01"  # will_delay_interval 5, payload format 1
    wire = connect_bytes(
        level=5, flags=0x2E, payload=utf8("cid") + will_props + utf8("w/t") + utf8("bye")
    )
    assert decode_one(wire) == Connect(
        "cid",
        5,
        will=Will(
            "w/t", b"bye", 1, True, {"will_delay_interval": 5, "payload_format_indicator": 1}
        ),
    )


def test_connect_will_property_not_allowed_in_will() -> None:
    will_props = b"\x03\x23\x00\x01"  # topic_alias is a PUBLISH property
    wire = connect_bytes(level=5, flags=0x06, payload=utf8("c") + will_props + utf8("w") + utf8(""))
    assert_error(wire, PROTOCOL, match="CONNECT will: property topic_alias is not allowed")


@pytest.mark.parametrize("topic", ["a/+", "#", ""])
def test_connect_will_topic_must_be_a_topic_name(topic: str) -> None:
    wire = connect_bytes(flags=0x06, payload=utf8("c") + utf8(topic) + utf8("p"))
    assert_error(wire, ReasonCode.TOPIC_NAME_INVALID)


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_connect_truncated_payload(cut: int) -> None:
    payload = utf8("cid") + utf8("w") + utf8("p") + utf8("u") + utf8("pw")
    wire = connect_bytes(flags=0xC6, payload=payload)
    body = wire[2:-cut]
    assert_error(frame(0x10, body), MALFORMED, match="truncated")


# --------------------------------------------------------------------------
# UTF-8 strings


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"\xc0\x80",  # overlong NUL (Java "modified UTF-8")
        b"\xed\xa0\x80",  # CESU-8 encoded surrogate U+D800
        b"\xed\xbf\xbf",  # U+DFFF
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"a\xe2\x82",  # truncated sequence
    ],
)
def test_invalid_utf8_is_malformed(raw: bytes) -> None:
    client_id = len(raw).to_bytes(2, "big") + raw
    assert_error(connect_bytes(payload=client_id), MALFORMED, match="UTF-8")
    publish = frame(0x30, len(raw).to_bytes(2, "big") + raw)
    assert_error(publish, MALFORMED, 4, "UTF-8")


def test_null_character_is_malformed() -> None:
    assert_error(connect_bytes(payload=utf8("a\x00b")), MALFORMED, match="U\\+0000")
    assert_error(frame(0x30, utf8("a\x00b")), MALFORMED, 4, "U\\+0000")


def test_byte_order_mark_is_kept() -> None:
    # [MQTT-1.5.4-3]: 0xEF 0xBB 0xBF must not be skipped or stripped.
    assert decode_one(frame(0x30, utf8("\ufeffa")), 4) == Publish("\ufeffa")


# --------------------------------------------------------------------------
# PUBLISH


def test_publish_qos_3_is_malformed() -> None:
    assert_error(frame(0x36, utf8("t") + b"\x00\x01"), MALFORMED, 4, "QoS 3")


def test_publish_dup_on_qos_0_is_malformed() -> None:
    assert_error(frame(0x38, utf8("t")), MALFORMED, 4, "DUP")


def test_publish_packet_id_zero() -> None:
    assert_error(frame(0x32, utf8("t") + b"\x00\x00"), PROTOCOL, 4, "packet identifier is 0")


@pytest.mark.parametrize("wildcard", ["+", "#"])
def test_publish_topic_with_wildcard(wildcard: str) -> None:
    assert_error(
        frame(0x30, utf8(f"a/{wildcard}")),
        ReasonCode.TOPIC_NAME_INVALID,
        4,
        f"PUBLISH: topic name contains wildcard '\\{wildcard}'",
    )


@pytest.mark.parametrize("level", [3, 4])
def test_publish_empty_topic_before_v5(level: int) -> None:
    assert_error(frame(0x30, utf8("")), ReasonCode.TOPIC_NAME_INVALID, level)


def test_publish_empty_topic_at_v5_needs_a_topic_alias() -> None:
    assert_error(frame(0x30, utf8("") + b"\x00"), PROTOCOL, 5, "topic alias")
    packet = decode_one(frame(0x30, utf8("") + b"\x03\x23\x00\x02" + b"p"), 5)
    assert packet == Publish("", b"p", properties={"topic_alias": 2})


def test_publish_fields() -> None:
    packet = decode_one(frame(0x3D, utf8("a/b") + b"\x12\x34" + b"\x00\x01\x02"), 4)
    assert packet == Publish("a/b", b"\x00\x01\x02", 2, True, True, 0x1234)
    assert type(packet.payload) is bytes


def test_publish_v5_properties_missing_is_malformed() -> None:
    assert_error(frame(0x30, utf8("t")), MALFORMED, 5, "property length")


# --------------------------------------------------------------------------
# Properties


def publish_with_props(props: bytes) -> bytes:
    return frame(0x30, utf8("t") + bytes((len(props),)) + props + b"payload")


def test_property_table_matches_the_spec() -> None:
    spec_table = {
        0x01: ("payload_format_indicator", WireType.BYTE),
        0x02: ("message_expiry_interval", WireType.FOUR_BYTE_INT),
        0x03: ("content_type", WireType.UTF8),
        0x08: ("response_topic", WireType.UTF8),
        0x09: ("correlation_data", WireType.BINARY),
        0x0B: ("subscription_identifier", WireType.VARINT),
        0x11: ("session_expiry_interval", WireType.FOUR_BYTE_INT),
        0x12: ("assigned_client_identifier", WireType.UTF8),
        0x13: ("server_keep_alive", WireType.TWO_BYTE_INT),
        0x15: ("authentication_method", WireType.UTF8),
        0x16: ("authentication_data", WireType.BINARY),
        0x17: ("request_problem_information", WireType.BYTE),
        0x18: ("will_delay_interval", WireType.FOUR_BYTE_INT),
        0x19: ("request_response_information", WireType.BYTE),
        0x1A: ("response_information", WireType.UTF8),
        0x1C: ("server_reference", WireType.UTF8),
        0x1F: ("reason_string", WireType.UTF8),
        0x21: ("receive_maximum", WireType.TWO_BYTE_INT),
        0x22: ("topic_alias_maximum", WireType.TWO_BYTE_INT),
        0x23: ("topic_alias", WireType.TWO_BYTE_INT),
        0x24: ("maximum_qos", WireType.BYTE),
        0x25: ("retain_available", WireType.BYTE),
        0x26: ("user_property", WireType.UTF8_PAIR),
        0x27: ("maximum_packet_size", WireType.FOUR_BYTE_INT),
        0x28: ("wildcard_subscription_available", WireType.BYTE),
        0x29: ("subscription_identifier_available", WireType.BYTE),
        0x2A: ("shared_subscription_available", WireType.BYTE),
    }
    assert {p.id: (p.name, p.wire) for p in PROPERTIES} == spec_table
    assert set(ALLOWED["PINGREQ"]) == set()
    assert set(ALLOWED["WILL"]) == {0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26}
    assert set(ALLOWED["SUBSCRIBE"]) == {0x0B, 0x26}
    assert set(ALLOWED["UNSUBSCRIBE"]) == {0x26}


def test_unknown_property_id_is_malformed() -> None:
    assert_error(publish_with_props(b"\x7f\x00"), MALFORMED, 5, "unknown property id 0x7F")
    # Identifiers are varints; a continuation bit can only start an unknown one.
    assert_error(publish_with_props(b"\x81\x00\x00"), MALFORMED, 5, "unknown property")


def test_property_not_allowed_in_packet() -> None:
    assert_error(
        publish_with_props(b"\x11\x00\x00\x00\x01"),
        PROTOCOL,
        5,
        "PUBLISH: property session_expiry_interval is not allowed",
    )
    assert_error(frame(0x40, b"\x00\x01\x00\x03\x23\x00\x01"), PROTOCOL, 5, "topic_alias")


def test_duplicate_property_is_a_protocol_error() -> None:
    props = b"\x02\x00\x00\x00\x01" * 2
    assert_error(publish_with_props(props), PROTOCOL, 5, "more than once")


def test_user_properties_repeat_in_order() -> None:
    props = b"\x26" + utf8("k") + utf8("1") + b"\x26" + utf8("k") + utf8("2")
    packet = decode_one(publish_with_props(props), 5)
    assert packet.properties == {"user_property": [("k", "1"), ("k", "2")]}


def test_subscription_identifiers_repeat_in_publish_only() -> None:
    packet = decode_one(publish_with_props(b"\x0b\x01\x0b\xff\xff\xff\x7f"), 5)
    assert packet.properties == {"subscription_identifier": [1, 268_435_455]}
    subscribe = frame(0x82, b"\x00\x01\x04\x0b\x01\x0b\x02" + utf8("a") + b"\x00")
    assert_error(subscribe, PROTOCOL, 5, "more than once")


@pytest.mark.parametrize(
    ("props", "reason", "match"),
    [
        (b"\x0b\x00", PROTOCOL, "subscription_identifier must not be 0"),
        (b"\x0b\x80\x00", MALFORMED, "not minimally encoded"),
        (b"\x0b\xff\xff\xff\xff\x01", MALFORMED, "longer than 4 bytes"),
        (b"\x23\x00\x00", ReasonCode.TOPIC_ALIAS_INVALID, "topic_alias must not be 0"),
        (b"\x01\x02", PROTOCOL, "payload_format_indicator must be 0 or 1"),
        (b"\x08" + utf8("a/+"), PROTOCOL, "response_topic"),
        (b"\x08" + utf8(""), PROTOCOL, "response_topic"),
        (b"\x02\x00\x00", MALFORMED, "message_expiry_interval is truncated"),
        (b"\x03\x00\x05ab", MALFORMED, "content_type is truncated"),
        (b"\x26\x00\x01k", MALFORMED, "user_property is truncated"),
    ],
)
def test_property_value_rules(props: bytes, reason: ReasonCode, match: str) -> None:
    assert_error(publish_with_props(props), reason, 5, match)


def test_property_length_beyond_packet_is_malformed() -> None:
    assert_error(frame(0x30, utf8("t") + b"\x09\x01\x01"), MALFORMED, 5, "truncated")


@pytest.mark.parametrize(
    ("props", "match"),
    [
        (b"\x21\x00\x00", "receive_maximum must not be 0"),
        (b"\x27\x00\x00\x00\x00", "maximum_packet_size must not be 0"),
        (b"\x17\x02", "request_problem_information must be 0 or 1"),
        (b"\x19\x05", "request_response_information must be 0 or 1"),
        (b"\x16\x00\x01x", "authentication_data without authentication_method"),
    ],
)
def test_connect_property_rules(props: bytes, match: str) -> None:
    wire = connect_bytes(level=5, props=bytes((len(props),)) + props)
    assert_error(wire, PROTOCOL, match=match)


@pytest.mark.parametrize("prop", [b"\x24\x02", b"\x25\x02", b"\x28\x02", b"\x29\x02", b"\x2a\x02"])
def test_connack_boolean_properties(prop: bytes) -> None:
    assert_error(frame(0x20, b"\x00\x00\x02" + prop), PROTOCOL, 5, "must be 0 or 1")


# --------------------------------------------------------------------------
# SUBSCRIBE / UNSUBSCRIBE and topic filters

VALID_FILTERS = [
    "#",
    "+",
    "a/+/b",
    "a/#",
    "/",
    "//",
    "+/+",
    "/+",
    "$SYS/#",
    "$share/g/#",
    "$share/g/a/+/b",
    "$share/g//",
    "$share",
    "$sharex/a",
    "sport/tennis/player1/#",
    "\u00e9t\u00e9/+",
]
INVALID_FILTERS = [
    "",
    "a/#/b",
    "a#",
    "#/",
    "a/b#",
    "a/b+",
    "+a",
    "a/+b/c",
    "$share/g",
    "$share/g/",
    "$share//a",
    "$share/g+/a",
    "$share/#/a",
    "$share/+/a",
    "$share/g/a#",
    "a\x00b",
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)
    wire = frame(0x82, b"\x00\x01" + utf8(topic_filter) + b"\x01")
    assert decode_one(wire, 4) == Subscribe(1, [(topic_filter, SubscriptionOptions(1))])


@pytest.mark.parametrize("topic_filter", [f for f in INVALID_FILTERS if "\x00" not in f])
@pytest.mark.parametrize("kind", [0x82, 0xA2])
def test_invalid_topic_filters(topic_filter: str, kind: int) -> None:
    options = b"\x00" if kind == 0x82 else b""
    wire = frame(kind, b"\x00\x01" + utf8(topic_filter) + options)
    name = "SUBSCRIBE" if kind == 0x82 else "UNSUBSCRIBE"
    assert_error(wire, ReasonCode.TOPIC_FILTER_INVALID, 4, f"{name}: topic filter")


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS)
def test_validate_topic_filter_is_public(topic_filter: str) -> None:
    with pytest.raises(MQTTProtocolError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason_code == ReasonCode.TOPIC_FILTER_INVALID


@pytest.mark.parametrize("topic", ["", "a/+", "#", "a\x00"])
def test_validate_topic_name_is_public(topic: str) -> None:
    with pytest.raises(MQTTProtocolError) as info:
        validate_topic_name(topic)
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID
    validate_topic_name("a/b/$c/ /")


@pytest.mark.parametrize(("level", "reason"), [(3, MALFORMED), (4, MALFORMED), (5, PROTOCOL)])
def test_subscribe_without_filters(level: int, reason: ReasonCode) -> None:
    props = b"\x00" if level == 5 else b""
    assert_error(frame(0x82, b"\x00\x01" + props), reason, level, "no topic filters")
    assert_error(frame(0xA2, b"\x00\x01" + props), reason, level, "no topic filters")


@pytest.mark.parametrize("options", [0x03, 0x04, 0x08, 0x10, 0x80])
def test_subscribe_options_before_v5_allow_only_qos(options: int) -> None:
    wire = frame(0x82, b"\x00\x01" + utf8("a") + bytes((options,)))
    assert_error(wire, MALFORMED, 4, "requested QoS")


@pytest.mark.parametrize(
    ("options", "reason", "match"),
    [
        (0x40, MALFORMED, "reserved option bits"),
        (0x80, MALFORMED, "reserved option bits"),
        (0x03, PROTOCOL, "maximum QoS is 3"),
        (0x30, PROTOCOL, "retain handling is 3"),
    ],
)
def test_subscribe_options_v5(options: int, reason: ReasonCode, match: str) -> None:
    wire = frame(0x82, b"\x00\x01\x00" + utf8("a") + bytes((options,)))
    assert_error(wire, reason, 5, match)


def test_subscribe_options_v5_fields() -> None:
    wire = frame(0x82, b"\x00\x01\x00" + utf8("a") + b"\x2e" + utf8("b") + b"\x10")
    assert decode_one(wire, 5) == Subscribe(
        1,
        [
            ("a", SubscriptionOptions(2, True, True, 2)),
            ("b", SubscriptionOptions(0, False, False, 1)),
        ],
    )


def test_no_local_on_shared_subscription_is_a_protocol_error() -> None:
    wire = frame(0x82, b"\x00\x01\x00" + utf8("$share/g/a") + b"\x04")
    assert_error(wire, PROTOCOL, 5, "no local")


@pytest.mark.parametrize("kind", [0x82, 0xA2])
def test_subscribe_packet_id_zero(kind: int) -> None:
    options = b"\x00" if kind == 0x82 else b""
    assert_error(frame(kind, b"\x00\x00" + utf8("a") + options), PROTOCOL, 4, "identifier is 0")


# --------------------------------------------------------------------------
# Acknowledgements, CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH


@pytest.mark.parametrize(
    ("b0", "cls"), [(0x40, Puback), (0x50, Pubrec), (0x62, Pubrel), (0x70, Pubcomp)]
)
def test_ack_forms_at_v5(b0: int, cls: type[Puback]) -> None:
    code = 0x92 if cls in (Pubrel, Pubcomp) else 0x10
    assert decode_one(frame(b0, b"\x00\x09"), 5) == cls(9)
    assert decode_one(frame(b0, b"\x00\x09" + bytes((code,))), 5) == cls(9, code)
    assert decode_one(frame(b0, b"\x00\x09\x00\x00"), 5) == cls(9)
    with_reason = b"\x00\x09" + bytes((code,)) + b"\x04\x1f" + utf8("x")
    assert decode_one(frame(b0, with_reason), 5) == cls(9, code, {"reason_string": "x"})
    assert_error(frame(b0, b"\x00\x09\x01"), PROTOCOL, 5, "invalid reason code 0x01")
    assert_error(frame(b0, b"\x00\x00"), PROTOCOL, 5, "identifier is 0")
    assert_error(frame(b0, b"\x00\x09\x00"), MALFORMED, 4, "unexpected bytes")


def test_connack_rules() -> None:
    assert decode_one(b"\x20\x02\x01\x00", 4) == Connack(True, 0)
    assert decode_one(b"\x20\x02\xff\x02", 3) == Connack(False, 2)  # 3.1: first byte unused
    assert_error(b"\x20\x02\x02\x00", MALFORMED, 4, "reserved acknowledge flags")
    assert_error(b"\x20\x02\x00\x06", PROTOCOL, 4, "invalid return code")
    assert_error(b"\x20\x02\x01\x05", PROTOCOL, 4, "session present")
    assert_error(b"\x20\x03\x00\x10\x00", PROTOCOL, 5, "invalid reason code")
    assert_error(b"\x20\x02\x00\x00", MALFORMED, 5, "property length is truncated")
    wire = frame(0x20, b"\x00\x00\x05\x12" + utf8("id"))
    assert decode_one(wire, 5) == Connack(False, 0, {"assigned_client_identifier": "id"})


def test_suback_rules() -> None:
    assert decode_one(frame(0x90, b"\x00\x01\x00\x01\x02\x80"), 4) == Suback(1, [0, 1, 2, 0x80])
    assert_error(frame(0x90, b"\x00\x01\x03"), PROTOCOL, 4, "invalid reason code 0x03")
    assert_error(frame(0x90, b"\x00\x01\x87"), PROTOCOL, 4, "invalid reason code 0x87")
    assert_error(frame(0x90, b"\x00\x01"), PROTOCOL, 4, "no reason codes")
    assert decode_one(frame(0x90, b"\x00\x01\x00\x87\xa2"), 5) == Suback(1, [0x87, 0xA2])
    assert_error(frame(0x90, b"\x00\x01\x00\x04"), PROTOCOL, 5, "invalid reason code 0x04")


def test_unsuback_rules() -> None:
    assert decode_one(b"\xb0\x02\x00\x01", 4) == Unsuback(1)
    assert decode_one(frame(0xB0, b"\x00\x01\x00\x00\x11"), 5) == Unsuback(1, [0, 0x11])
    assert_error(frame(0xB0, b"\x00\x01\x00"), PROTOCOL, 5, "no reason codes")
    assert_error(frame(0xB0, b"\x00\x01\x00\x01"), PROTOCOL, 5, "invalid reason code")


def test_disconnect_and_auth_forms_at_v5() -> None:
    assert decode_one(b"\xe0\x00", 5) == Disconnect()
    assert decode_one(b"\xe0\x01\x04", 5) == Disconnect(4)
    assert decode_one(b"\xe0\x02\x8e\x00", 5) == Disconnect(0x8E)
    wire = frame(0xE0, b"\x00\x05\x11\x00\x00\x00\x00")
    assert decode_one(wire, 5) == Disconnect(0, {"session_expiry_interval": 0})
    assert_error(b"\xe0\x01\x01", PROTOCOL, 5, "invalid reason code")
    assert decode_one(b"\xf0\x01\x19", 5) == Auth(0x19)
    assert_error(b"\xf0\x01\x04", PROTOCOL, 5, "invalid reason code")
    assert_error(frame(0xF0, b"\x18\x02\x16\x00"), MALFORMED, 5, "truncated")


# --------------------------------------------------------------------------
# Decoder streaming behaviour

STREAM_V5: list[Packet] = [
    Connect("c", 5, properties={"user_property": [("a", "b")]}),
    Publish("a/b", b"x" * 300, 1, packet_id=1, properties={"message_expiry_interval": 9}),
    Puback(1, 0x10),
    Subscribe(2, [("a/#", SubscriptionOptions(1, True))], {"subscription_identifier": [5]}),
    Pingreq(),
    Publish("t", b"", 0),
    Disconnect(0x04, {"reason_string": "bye"}),
]
STREAM_BYTES = b"".join(encode(p, 5) for p in STREAM_V5)


def test_several_packets_in_one_feed() -> None:
    assert Decoder().feed(STREAM_BYTES) == STREAM_V5


def test_byte_by_byte_feeding() -> None:
    decoder = Decoder()
    out: list[Packet] = []
    for index in range(len(STREAM_BYTES)):
        out += decoder.feed(STREAM_BYTES[index : index + 1])
    assert out == STREAM_V5


def test_every_split_point() -> None:
    for split in range(len(STREAM_BYTES) + 1):
        decoder = Decoder()
        first = decoder.feed(STREAM_BYTES[:split])
        assert first + decoder.feed(STREAM_BYTES[split:]) == STREAM_V5


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_accepts_any_bytes_like(kind: type) -> None:
    decoder = Decoder()
    assert decoder.feed(kind(STREAM_BYTES[:50])) + decoder.feed(kind(STREAM_BYTES[50:])) == (
        STREAM_V5
    )


def test_failed_decoder_stays_failed() -> None:
    decoder = Decoder(protocol_level=4)
    with pytest.raises(MQTTProtocolError):
        decoder.feed(b"\x00\x00")
    with pytest.raises(MQTTProtocolError, match="already failed") as info:
        decoder.feed(b"\xc0\x00")
    assert info.value.reason_code == MALFORMED


def test_protocol_level_is_validated_and_settable() -> None:
    decoder = Decoder()
    decoder.protocol_level = 5
    assert decoder.feed(b"\xf0\x00") == [Auth()]
    with pytest.raises(ValueError):
        decoder.protocol_level = 6


def test_error_str_is_the_message() -> None:
    error = MQTTProtocolError(PROTOCOL, "PUBLISH: boom")
    assert str(error) == "PUBLISH: boom"
    assert error.reason_code == PROTOCOL


# --------------------------------------------------------------------------
# Encoder specifics


@pytest.mark.parametrize("level", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_encode_publish_parts_splices_a_packet_id(level: int, qos: int) -> None:
    props = {"user_property": [("k", "v")]} if level == 5 else None
    head, tail = encode_publish_parts("a/b", b"data" * 40, qos, True, qos > 0, props, level)
    packet_id = 0xBEEF
    wire = head + (packet_id.to_bytes(2, "big") if qos else b"") + tail
    expected = Publish(
        "a/b", b"data" * 40, qos, True, qos > 0, packet_id if qos else None, props or {}
    )
    assert decode_one(wire, level) == expected
    assert encode(expected, level) == wire


@pytest.mark.parametrize(
    ("packet", "level"),
    [
        (Auth(), 4),
        (Publish("t", qos=1), 4),
        (Connect("c", password=b"p"), 4),
        (Puback(1, 0, {"topic_alias": 1}), 5),
        (Puback(1, 0, {"no_such_property": 1}), 5),
        (Pingreq(), 6),
    ],
)
def test_encode_refuses_what_cannot_be_sent(packet: Packet, level: int) -> None:
    with pytest.raises(ValueError):
        encode(packet, level)


# --------------------------------------------------------------------------
# Hypothesis round trip: decode(encode(p)) == p for every packet type and level.
# Reason code sets are transcribed from the 5.0 spec tables, independently of
# the codec's own.

V5_CODES = {
    PacketType.CONNACK: [
        0x00,
        *range(0x80, 0x8B),
        0x8C,
        0x90,
        0x95,
        0x97,
        *range(0x99, 0x9E),
        0x9F,
    ],
    PacketType.PUBACK: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    PacketType.PUBREC: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    PacketType.PUBREL: [0x00, 0x92],
    PacketType.PUBCOMP: [0x00, 0x92],
    PacketType.SUBACK: [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2],
    PacketType.UNSUBACK: [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
    PacketType.DISCONNECT: [
        *(0x00, 0x04, *range(0x80, 0x84), 0x87, 0x89, 0x8B, *range(0x8D, 0x91)),
        *range(0x93, 0xA3),
    ],
    PacketType.AUTH: [0x00, 0x18, 0x19],
}

strings = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
level_names = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00+#/"), max_size=6
)
topic_names = st.lists(level_names, min_size=1, max_size=4).map("/".join).filter(bool)
binaries = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(level_names, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    text = "/".join(levels) or "#"
    if draw(st.booleans()):
        group = draw(level_names.filter(bool))
        text = f"$share/{group}/{text}"
    return text


def _property_value(spec: PropertySpec, context: str) -> st.SearchStrategy[object]:
    low = 1 if spec.nonzero else 0
    match spec.wire:
        case WireType.BYTE:
            single: st.SearchStrategy[object] = st.integers(0, 1 if spec.boolean else 0xFF)
        case WireType.TWO_BYTE_INT:
            single = st.integers(low, 0xFFFF)
        case WireType.FOUR_BYTE_INT:
            single = st.integers(low, 0xFFFF_FFFF)
        case WireType.VARINT:
            single = st.integers(1, 268_435_455)
        case WireType.UTF8:
            single = topic_names if spec.name == "response_topic" else strings
        case WireType.BINARY:
            single = binaries
        case WireType.UTF8_PAIR:
            single = st.tuples(strings, strings)
    if not spec.repeatable_in:
        return single
    return st.lists(single, min_size=1, max_size=3 if context in spec.repeatable_in else 1)


def properties(context: str, level: int) -> st.SearchStrategy[Properties]:
    if level < 5:
        return st.just({})
    optional = {spec.name: _property_value(spec, context) for spec in ALLOWED[context].values()}

    def drop_orphan_auth_data(props: Properties) -> Properties:
        if "authentication_method" not in props:
            props.pop("authentication_data", None)
        return props

    return st.fixed_dictionaries({}, optional=optional).map(drop_orphan_auth_data)


def reason_codes(kind: PacketType, level: int) -> st.SearchStrategy[int]:
    return st.sampled_from(V5_CODES[kind]) if level == 5 else st.just(0)


@st.composite
def connects(draw: st.DrawFn, level: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(topic_names),
            draw(binaries),
            draw(st.integers(0, 2)),
            draw(st.booleans()),
            draw(properties("WILL", level)),
        )
    username = draw(st.none() | strings)
    password = draw(st.none() | binaries) if username is not None or level == 5 else None
    return Connect(
        draw(strings),
        level,
        "MQIsdp" if level == 3 else "MQTT",
        draw(st.booleans()),
        draw(st.integers(0, 0xFFFF)),
        will,
        username,
        password,
        draw(properties("CONNECT", level)),
    )


@st.composite
def connacks(draw: st.DrawFn, level: int) -> Connack:
    code = draw(st.sampled_from(V5_CODES[PacketType.CONNACK]) if level == 5 else st.integers(0, 5))
    session_present = level > 3 and code == 0 and draw(st.booleans())
    return Connack(session_present, code, draw(properties("CONNACK", level)))


@st.composite
def publishes(draw: st.DrawFn, level: int) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(properties("PUBLISH", level))
    topic = draw(topic_names)
    if "topic_alias" in props and draw(st.booleans()):
        topic = ""
    return Publish(
        topic,
        draw(st.binary(max_size=300)),
        qos,
        draw(st.booleans()),
        qos > 0 and draw(st.booleans()),
        draw(packet_ids) if qos else None,
        props,
    )


def acks(kind: PacketType, cls: type[Puback], level: int) -> st.SearchStrategy[Packet]:
    return st.builds(cls, packet_ids, reason_codes(kind, level), properties(kind.name, level))


@st.composite
def subscribes(draw: st.DrawFn, level: int) -> Subscribe:
    subscriptions = []
    for topic_filter in draw(st.lists(topic_filters(), min_size=1, max_size=4)):
        qos = draw(st.integers(0, 2))
        if level == 5:
            no_local = not topic_filter.startswith("$share/") and draw(st.booleans())
            options = SubscriptionOptions(
                qos, no_local, draw(st.booleans()), draw(st.integers(0, 2))
            )
        else:
            options = SubscriptionOptions(qos)
        subscriptions.append((topic_filter, options))
    return Subscribe(draw(packet_ids), subscriptions, draw(properties("SUBSCRIBE", level)))


def subacks(level: int) -> st.SearchStrategy[Packet]:
    codes = st.sampled_from(V5_CODES[PacketType.SUBACK] if level == 5 else [0, 1, 2, 0x80])
    return st.builds(
        Suback, packet_ids, st.lists(codes, min_size=1, max_size=5), properties("SUBACK", level)
    )


def unsubacks(level: int) -> st.SearchStrategy[Packet]:
    if level < 5:
        return st.builds(Unsuback, packet_ids)
    codes = st.lists(st.sampled_from(V5_CODES[PacketType.UNSUBACK]), min_size=1, max_size=5)
    return st.builds(Unsuback, packet_ids, codes, properties("UNSUBACK", level))


def packet_strategy(kind: PacketType, level: int) -> st.SearchStrategy[Packet]:
    match kind:
        case PacketType.CONNECT:
            return connects(level)
        case PacketType.CONNACK:
            return connacks(level)
        case PacketType.PUBLISH:
            return publishes(level)
        case PacketType.PUBACK | PacketType.PUBREC | PacketType.PUBREL | PacketType.PUBCOMP:
            classes = {4: Puback, 5: Pubrec, 6: Pubrel, 7: Pubcomp}
            return acks(kind, classes[kind], level)
        case PacketType.SUBSCRIBE:
            return subscribes(level)
        case PacketType.SUBACK:
            return subacks(level)
        case PacketType.UNSUBSCRIBE:
            filters = st.lists(topic_filters(), min_size=1, max_size=4)
            return st.builds(Unsubscribe, packet_ids, filters, properties("UNSUBSCRIBE", level))
        case PacketType.UNSUBACK:
            return unsubacks(level)
        case PacketType.PINGREQ:
            return st.just(Pingreq())
        case PacketType.PINGRESP:
            return st.just(Pingresp())
        case PacketType.DISCONNECT:
            codes = reason_codes(kind, level)
            return st.builds(Disconnect, codes, properties("DISCONNECT", level))
        case PacketType.AUTH:
            codes = reason_codes(kind, level)
            return st.builds(Auth, codes, properties("AUTH", level))


ROUND_TRIP_CASES = [
    (kind, level)
    for level in (3, 4, 5)
    for kind in PacketType
    if kind != PacketType.AUTH or level == 5
]


def _case_id(value: PacketType | int) -> str:
    return value.name if isinstance(value, PacketType) else f"v{value}"


@pytest.mark.parametrize(("kind", "level"), ROUND_TRIP_CASES, ids=_case_id)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(kind: PacketType, level: int, data: st.DataObject) -> None:
    packet = data.draw(packet_strategy(kind, level))
    wire = encode(packet, level)
    split = data.draw(st.integers(0, len(wire)))
    decoder = Decoder(protocol_level=None if kind == PacketType.CONNECT else level)
    assert decoder.feed(wire[:split]) + decoder.feed(wire[split:]) == [packet]
