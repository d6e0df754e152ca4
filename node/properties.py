"""The MQTT 5 property table (spec 2.2.2.2), its decoder and its encoder.

The table is data so that the decoder and the encoder here agree on every
identifier, wire type and permitted packet without duplicating a
per-property ``if`` chain.

Contexts are packet type names (``"PUBLISH"``, ...) plus ``"WILL"`` for the
will properties inside a CONNECT payload, which have their own rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from raftmq.node.packets import PacketType, Properties
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import (
    MQTTProtocolError,
    encode_binary,
    encode_utf8,
    encode_varint,
    read_bin,
    read_str,
    read_u16,
    read_varint,
    truncated,
)


class WireType(Enum):
    BYTE = "byte"
    TWO_BYTE_INT = "two-byte integer"
    FOUR_BYTE_INT = "four-byte integer"
    VARINT = "variable byte integer"
    UTF8 = "UTF-8 string"
    BINARY = "binary data"
    UTF8_PAIR = "UTF-8 string pair"


@dataclass(frozen=True, slots=True)
class PropertySpec:
    id: int
    name: str
    wire: WireType
    contexts: frozenset[str]
    # Non-empty for list-valued properties: the contexts where they may repeat
    # (user_property everywhere, subscription_identifier only in PUBLISH).
    repeatable_in: frozenset[str] = frozenset()
    # The spec defines only 0 and 1, any other value is a Protocol Error.
    boolean: bool = False
    # The spec makes 0 a Protocol Error (e.g. Receive Maximum, Topic Alias).
    nonzero: bool = False


def _ctx(*names: str) -> frozenset[str]:
    return frozenset(names)


_MESSAGE = _ctx("PUBLISH", "WILL")
_ACKS = _ctx("PUBACK", "PUBREC", "PUBREL", "PUBCOMP")
_ALL_USER = _ctx(
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "WILL",
    *_ACKS,
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "DISCONNECT",
    "AUTH",
)

_B = WireType.BYTE
_U16 = WireType.TWO_BYTE_INT
_U32 = WireType.FOUR_BYTE_INT

PROPERTIES: tuple[PropertySpec, ...] = (
    PropertySpec(0x01, "payload_format_indicator", _B, _MESSAGE, boolean=True),
    PropertySpec(0x02, "message_expiry_interval", _U32, _MESSAGE),
    PropertySpec(0x03, "content_type", WireType.UTF8, _MESSAGE),
    PropertySpec(0x08, "response_topic", WireType.UTF8, _MESSAGE),
    PropertySpec(0x09, "correlation_data", WireType.BINARY, _MESSAGE),
    PropertySpec(
        0x0B,
        "subscription_identifier",
        WireType.VARINT,
        _ctx("PUBLISH", "SUBSCRIBE"),
        repeatable_in=_ctx("PUBLISH"),
        nonzero=True,
    ),
    PropertySpec(0x11, "session_expiry_interval", _U32, _ctx("CONNECT", "CONNACK", "DISCONNECT")),
    PropertySpec(0x12, "assigned_client_identifier", WireType.UTF8, _ctx("CONNACK")),
    PropertySpec(0x13, "server_keep_alive", _U16, _ctx("CONNACK")),
    PropertySpec(0x15, "authentication_method", WireType.UTF8, _ctx("CONNECT", "CONNACK", "AUTH")),
    PropertySpec(0x16, "authentication_data", WireType.BINARY, _ctx("CONNECT", "CONNACK", "AUTH")),
    PropertySpec(0x17, "request_problem_information", _B, _ctx("CONNECT"), boolean=True),
    PropertySpec(0x18, "will_delay_interval", _U32, _ctx("WILL")),
    PropertySpec(0x19, "request_response_information", _B, _ctx("CONNECT"), boolean=True),
    PropertySpec(0x1A, "response_information", WireType.UTF8, _ctx("CONNACK")),
    PropertySpec(0x1C, "server_reference", WireType.UTF8, _ctx("CONNACK", "DISCONNECT")),
    PropertySpec(
        0x1F,
        "reason_string",
        WireType.UTF8,
        _ctx("CONNACK", *_ACKS, "SUBACK", "UNSUBACK", "DISCONNECT", "AUTH"),
    ),
    PropertySpec(0x21, "receive_maximum", _U16, _ctx("CONNECT", "CONNACK"), nonzero=True),
    PropertySpec(0x22, "topic_alias_maximum", _U16, _ctx("CONNECT", "CONNACK")),
    PropertySpec(0x23, "topic_alias", _U16, _ctx("PUBLISH"), nonzero=True),
    PropertySpec(0x24, "maximum_qos", _B, _ctx("CONNACK"), boolean=True),
    PropertySpec(0x25, "retain_available", _B, _ctx("CONNACK"), boolean=True),
    PropertySpec(0x26, "user_property", WireType.UTF8_PAIR, _ALL_USER, repeatable_in=_ALL_USER),
    PropertySpec(0x27, "maximum_packet_size", _U32, _ctx("CONNECT", "CONNACK"), nonzero=True),
    PropertySpec(0x28, "wildcard_subscription_available", _B, _ctx("CONNACK"), boolean=True),
    PropertySpec(0x29, "subscription_identifier_available", _B, _ctx("CONNACK"), boolean=True),
    PropertySpec(0x2A, "shared_subscription_available", _B, _ctx("CONNACK"), boolean=True),
)

BY_ID: dict[int, PropertySpec] = {p.id: p for p in PROPERTIES}
BY_NAME: dict[str, PropertySpec] = {p.name: p for p in PROPERTIES}

CONTEXTS: tuple[str, ...] = (*(t.name for t in PacketType), "WILL")
ALLOWED: dict[str, dict[int, PropertySpec]] = {
    ctx: {p.id: p for p in PROPERTIES if ctx in p.contexts} for ctx in CONTEXTS
}


_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL = ReasonCode.PROTOCOL_ERROR
_R = ReasonCode


def decode_properties(mv: memoryview, off: int, end: int, ctx: str) -> tuple[Properties, int]:
    """Properties of ``ctx`` starting at the property length at ``off``."""
    where = "CONNECT will" if ctx == "WILL" else ctx
    length, off = read_varint(mv, off, end, where, "property length")
    stop = off + length
    if stop > end:
        raise truncated(where, "properties")
    allowed = ALLOWED[ctx]
    props: Properties = {}
    value: Any
    while off < stop:
        # Identifiers are variable byte integers, but all are below 0x80, so a
        # first byte with the continuation bit set is unknown either way.
        pid = mv[off]
        off += 1
        spec = allowed.get(pid)
        if spec is None:
            if pid in BY_ID:
                raise MQTTProtocolError(
                    _PROTOCOL, f"{where}: property {BY_ID[pid].name} is not allowed"
                )
            raise MQTTProtocolError(_MALFORMED, f"{where}: unknown property id 0x{pid:02X}")
        name = spec.name
        wire = spec.wire
        if wire is WireType.BYTE:
            if off >= stop:
                raise truncated(where, name)
            value = mv[off]
            off += 1
        elif wire is WireType.FOUR_BYTE_INT:
            if off + 4 > stop:
                raise truncated(where, name)
            value = int.from_bytes(mv[off : off + 4], "big")
            off += 4
        elif wire is WireType.TWO_BYTE_INT:
            value = read_u16(mv, off, stop, where, name)
            off += 2
        elif wire is WireType.UTF8:
            value, off = read_str(mv, off, stop, where, name)
        elif wire is WireType.BINARY:
            value, off = read_bin(mv, off, stop, where, name)
        elif wire is WireType.VARINT:
            value, off = read_varint(mv, off, stop, where, name)
        else:
            key, off = read_str(mv, off, stop, where, name)
            val, off = read_str(mv, off, stop, where, name)
            value = (key, val)
        if spec.boolean and value > 1:
            raise MQTTProtocolError(_PROTOCOL, f"{where}: {name} must be 0 or 1, not {value}")
        if spec.nonzero and value == 0:
            # Alias 0 gets the specific code: it is an invalid alias (3.3.2.3.4).
            reason = _R.TOPIC_ALIAS_INVALID if name == "topic_alias" else _PROTOCOL
            raise MQTTProtocolError(reason, f"{where}: {name} must not be 0")
        if name == "response_topic" and (not value or "+" in value or "#" in value):
            # [MQTT-3.3.2-14] a Response Topic is a Topic Name
            raise MQTTProtocolError(_PROTOCOL, f"{where}: response_topic is not a topic name")
        if spec.repeatable_in:
            previous = props.get(name)
            if previous is None:
                props[name] = [value]
                continue
            if ctx in spec.repeatable_in:
                previous.append(value)
                continue
        elif name not in props:
            props[name] = value
            continue
        raise MQTTProtocolError(_PROTOCOL, f"{where}: property {name} appears more than once")
    if "authentication_data" in props and "authentication_method" not in props:
        # e.g. 3.1.2.11.10: data without a method is a Protocol Error
        raise MQTTProtocolError(
            _PROTOCOL, f"{where}: authentication_data without authentication_method"
        )
    return props, stop


def _encode_value(wire: WireType, value: Any) -> bytes:
    match wire:
        case WireType.BYTE:
            return bytes((value,))
        case WireType.TWO_BYTE_INT:
            return value.to_bytes(2, "big")
        case WireType.FOUR_BYTE_INT:
            return value.to_bytes(4, "big")
        case WireType.VARINT:
            return encode_varint(value)
        case WireType.UTF8:
            return encode_utf8(value)
        case WireType.BINARY:
            return encode_binary(value)
        case WireType.UTF8_PAIR:
            key, val = value
            return encode_utf8(key) + encode_utf8(val)


def encode_properties(props: Properties, context: str) -> bytes:
    """Property length followed by the properties, in dict order.

    Refusing a property the context does not allow (``ValueError``) keeps a
    broker bug from reaching the peer as a packet it must reject.
    """
    if not props:
        return b"\x00"
    allowed = ALLOWED[context]
    out = bytearray()
    for name, value in props.items():
        spec = BY_NAME.get(name)
        if spec is None or spec.id not in allowed:
            raise ValueError(f"{context}: property {name!r} is not allowed")
        values = value if spec.repeatable_in else (value,)
        for item in values:
            out.append(spec.id)
            out += _encode_value(spec.wire, item)
    return encode_varint(len(out)) + out
