"""Encoders of the fifteen MQTT packet types, one per type in ``ENCODERS``.

``codec.encode`` picks one by packet type; fan-out uses
``encode_publish_parts`` directly to encode a PUBLISH once for many
subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftmq.node import packets
from raftmq.node.packets import PacketType, Properties
from raftmq.node.properties import encode_properties
from raftmq.node.reason_codes import ReasonCode, connack_code_for
from raftmq.node.wire import encode_binary, encode_utf8, encode_varint


def _frame(b0: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes((b0, length)) + body
    return bytes((b0,)) + encode_varint(length) + body


def encode_publish_parts(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    properties: Properties | None,
    protocol_level: int,
) -> tuple[bytes, bytes]:
    """Encode a PUBLISH once for many subscribers.

    The packet is ``head + tail`` at QoS 0 and ``head + packet_id (2 bytes,
    big endian) + tail`` otherwise; ``head`` already counts those two bytes,
    so fan-out only splices a per-subscriber identifier.
    """
    raw_topic = topic.encode()
    topic_len = len(raw_topic)
    if topic_len > 0xFFFF:
        raise ValueError(f"PUBLISH: topic name of {topic_len} bytes exceeds 65535")
    if protocol_level == 5:
        tail = (encode_properties(properties, "PUBLISH") if properties else b"\x00") + payload
    else:
        tail = payload
    length = 2 + topic_len + len(tail) + (2 if qos else 0)
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if length < 0x80:
        head = bytes((b0, length, topic_len >> 8, topic_len & 0xFF)) + raw_topic
    else:
        head = b"".join(
            (bytes((b0,)), encode_varint(length), topic_len.to_bytes(2, "big"), raw_topic)
        )
    return head, tail


def _encode_publish(p: packets.Publish, level: int) -> bytes:
    head, tail = encode_publish_parts(
        p.topic, p.payload, p.qos, p.retain, p.dup, p.properties, level
    )
    if not p.qos:
        return head + tail
    if p.packet_id is None:
        raise ValueError("PUBLISH: QoS > 0 needs a packet_id")
    return b"".join((head, p.packet_id.to_bytes(2, "big"), tail))


def _encode_connect(p: packets.Connect, level: int) -> bytes:
    # The level argument, not p.protocol_level, decides the wire format.
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        if p.username is None and level < 5:
            raise ValueError("CONNECT: a password needs a username below MQTT 5")
        flags |= 0x40
    parts = [
        b"\x00\x06MQIsdp" if level == 3 else b"\x00\x04MQTT",
        bytes((level, flags)),
        p.keepalive.to_bytes(2, "big"),
    ]
    if level == 5:
        parts.append(encode_properties(p.properties, "CONNECT"))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        if level == 5:
            parts.append(encode_properties(will.properties, "WILL"))
        parts += (encode_utf8(will.topic), encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: packets.Connack, level: int) -> bytes:
    code = p.reason_code
    if level == 5:
        body = bytes((int(p.session_present), code)) + encode_properties(p.properties, "CONNACK")
        return _frame(0x20, body)
    if code > 5:
        # A v5 reason code: translate so the broker can pass either kind.
        code = connack_code_for(level, ReasonCode(code))
    return bytes((0x20, 2, int(p.session_present and level == 4), code))


def _encode_ack(
    p: packets.Puback | packets.Pubrec | packets.Pubrel | packets.Pubcomp, level: int
) -> bytes:
    b0 = (p.type << 4) | (0x02 if p.type == PacketType.PUBREL else 0)
    packet_id = p.packet_id.to_bytes(2, "big")
    if level < 5 or not (p.reason_code or p.properties):
        return bytes((b0, 2)) + packet_id
    body = packet_id + bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, p.type.name)
    return _frame(b0, body)


def _encode_subscribe(p: packets.Subscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == 5:
        parts.append(encode_properties(p.properties, "SUBSCRIBE"))
    for topic_filter, opts in p.subscriptions:
        options = opts.qos
        if level == 5:
            options |= (
                (0x04 if opts.no_local else 0)
                | (0x08 if opts.retain_as_published else 0)
                | (opts.retain_handling << 4)
            )
        parts += (encode_utf8(topic_filter), bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: packets.Suback, level: int) -> bytes:
    packet_id = p.packet_id.to_bytes(2, "big")
    if level == 5:
        body = packet_id + encode_properties(p.properties, "SUBACK") + bytes(p.reason_codes)
    else:
        # Every v5 failure code collapses to the single 3.x failure 0x80.
        body = packet_id + bytes(code if code < 0x80 else 0x80 for code in p.reason_codes)
    return _frame(0x90, body)


def _encode_unsubscribe(p: packets.Unsubscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == 5:
        parts.append(encode_properties(p.properties, "UNSUBSCRIBE"))
    parts += (encode_utf8(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: packets.Unsuback, level: int) -> bytes:
    packet_id = p.packet_id.to_bytes(2, "big")
    if level < 5:
        return b"\xb0\x02" + packet_id
    body = packet_id + encode_properties(p.properties, "UNSUBACK") + bytes(p.reason_codes)
    return _frame(0xB0, body)


def _encode_pingreq(p: packets.Pingreq, level: int) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(p: packets.Pingresp, level: int) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(p: packets.Disconnect, level: int) -> bytes:
    if level < 5 or not (p.reason_code or p.properties):
        return b"\xe0\x00"
    body = bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, "DISCONNECT")
    return _frame(0xE0, body)


def _encode_auth(p: packets.Auth, level: int) -> bytes:
    if level < 5:
        raise ValueError("AUTH exists only in MQTT 5")
    if not (p.reason_code or p.properties):
        return b"\xf0\x00"
    body = bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, "AUTH")
    return _frame(0xF0, body)


ENCODERS: dict[PacketType, Callable[[Any, int], bytes]] = {
    PacketType.CONNECT: _encode_connect,
    PacketType.CONNACK: _encode_connack,
    PacketType.PUBLISH: _encode_publish,
    PacketType.PUBACK: _encode_ack,
    PacketType.PUBREC: _encode_ack,
    PacketType.PUBREL: _encode_ack,
    PacketType.PUBCOMP: _encode_ack,
    PacketType.SUBSCRIBE: _encode_subscribe,
    PacketType.SUBACK: _encode_suback,
    PacketType.UNSUBSCRIBE: _encode_unsubscribe,
    PacketType.UNSUBACK: _encode_unsuback,
    PacketType.PINGREQ: _encode_pingreq,
    PacketType.PINGRESP: _encode_pingresp,
    PacketType.DISCONNECT: _encode_disconnect,
    PacketType.AUTH: _encode_auth,
}
