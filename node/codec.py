"""Sans-I/O MQTT wire codec for protocol levels 3 (MQIsdp 3.1), 4 (3.1.1) and 5 (5.0).

The decoder is strict: anything the specification calls malformed or a
protocol error raises ``MQTTProtocolError`` carrying the v5 reason code the
broker should disconnect with, and nothing else may escape ``Decoder.feed``
whatever bytes arrive. The broker, the benchmark tool and the tests all use
the same decoder, so it decodes both directions (a server receiving a
CONNACK is the broker's business, not the codec's).

The codec validates syntax only; state such as topic alias resolution,
outstanding packet identifiers or authorisation belongs to the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

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
from raftmq.node.properties import (
    ALLOWED,
    BY_ID,
    MAX_VARINT,
    WireType,
    encode_binary,
    encode_properties,
    encode_utf8,
    encode_varint,
)
from raftmq.node.reason_codes import ReasonCode, connack_code_for

__all__ = [
    "MAX_PACKET_SIZE",
    "Decoder",
    "MQTTProtocolError",
    "encode",
    "encode_publish_parts",
    "validate_topic_filter",
    "validate_topic_name",
]

# One type byte, four length bytes and the largest remaining length.
MAX_PACKET_SIZE = 1 + 4 + MAX_VARINT

_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL = ReasonCode.PROTOCOL_ERROR
_R = ReasonCode


class MQTTProtocolError(Exception):
    """A packet the peer must be disconnected for.

    ``reason_code`` is what a v5 DISCONNECT or CONNACK should carry; for
    levels 3 and 4 the broker just closes the connection (or maps the code
    with ``reason_codes.connack_code_for`` while answering a CONNECT).
    """

    def __init__(self, reason_code: ReasonCode, message: str) -> None:
        # Both go to Exception so that the error pickles and copies intact.
        super().__init__(reason_code, message)
        self.reason_code = reason_code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _truncated(ctx: str, field: str) -> MQTTProtocolError:
    return MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is truncated")


def _trailing(ctx: str) -> MQTTProtocolError:
    return MQTTProtocolError(_MALFORMED, f"{ctx}: unexpected bytes after the packet content")


# --------------------------------------------------------------------------
# Topic names and filters


def validate_topic_name(topic: str, packet_name: str = "PUBLISH") -> None:
    """Raise ``TOPIC_NAME_INVALID`` unless ``topic`` may be published to.

    An empty name is refused here; a v5 PUBLISH may carry one alongside a
    topic alias, which the decoder allows before calling this.
    """
    if not topic:
        raise MQTTProtocolError(_R.TOPIC_NAME_INVALID, f"{packet_name}: topic name is empty")
    for wildcard in "+#":
        if wildcard in topic:  # [MQTT-3.3.2-2]
            raise MQTTProtocolError(
                _R.TOPIC_NAME_INVALID,
                f"{packet_name}: topic name contains wildcard {wildcard!r}",
            )
    if "\x00" in topic:
        raise MQTTProtocolError(_R.TOPIC_NAME_INVALID, f"{packet_name}: topic name contains U+0000")


def validate_topic_filter(topic_filter: str, packet_name: str = "SUBSCRIBE") -> None:
    """Raise ``TOPIC_FILTER_INVALID`` unless ``topic_filter`` is well formed (spec 4.7, 4.8.2).

    ``$share/{group}/{filter}`` is checked as a shared subscription at every
    level, as Mosquitto does, so a 3.1.1 client cannot create a filter that
    a 5.0 client could not also address.
    """

    def invalid(why: str) -> MQTTProtocolError:
        return MQTTProtocolError(
            _R.TOPIC_FILTER_INVALID, f"{packet_name}: topic filter {topic_filter!r} {why}"
        )

    if not topic_filter:
        raise invalid("is empty")
    if "\x00" in topic_filter:
        raise invalid("contains U+0000")
    rest = topic_filter
    if rest.startswith("$share/"):
        group, slash, rest = rest[7:].partition("/")
        if not group or "+" in group or "#" in group:
            raise invalid("has an invalid share name")
        if not slash or not rest:
            raise invalid("has no filter after the share name")
    if "+" not in rest and "#" not in rest:
        return
    levels = rest.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            raise invalid("uses '#' other than as the whole last level")
        if "+" in level and level != "+":
            raise invalid("uses '+' other than as a whole level")


# --------------------------------------------------------------------------
# Primitive readers. Each takes the packet end as its bound so that a length
# field can never read into the next packet.


def _read_u16(mv: memoryview, off: int, end: int, ctx: str, field: str) -> int:
    if off + 2 > end:
        raise _truncated(ctx, field)
    return (mv[off] << 8) | mv[off + 1]


def _read_str(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[str, int]:
    stop = off + 2 + _read_u16(mv, off, end, ctx, field)
    if stop > end:
        raise _truncated(ctx, field)
    try:
        # Strict UTF-8 also rejects encoded surrogates [MQTT-1.5.4-1].
        text = mv[off + 2 : stop].tobytes().decode()
    except UnicodeDecodeError:
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is not valid UTF-8") from None
    if "\x00" in text:  # [MQTT-1.5.4-2]
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} contains U+0000")
    return text, stop


def _read_bin(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[bytes, int]:
    stop = off + 2 + _read_u16(mv, off, end, ctx, field)
    if stop > end:
        raise _truncated(ctx, field)
    return mv[off + 2 : stop].tobytes(), stop


def _read_varint(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[int, int]:
    value = 0
    for index in range(4):
        if off >= end:
            raise _truncated(ctx, field)
        byte = mv[off]
        off += 1
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index:  # [MQTT-1.5.5-1] minimum number of bytes
                raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is not minimally encoded")
            return value, off
    raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is longer than 4 bytes")


# --------------------------------------------------------------------------
# Properties


def decode_properties(mv: memoryview, off: int, end: int, ctx: str) -> tuple[Properties, int]:
    """Properties of ``ctx`` starting at the property length at ``off``."""
    where = "CONNECT will" if ctx == "WILL" else ctx
    length, off = _read_varint(mv, off, end, where, "property length")
    stop = off + length
    if stop > end:
        raise _truncated(where, "properties")
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
                raise _truncated(where, name)
            value = mv[off]
            off += 1
        elif wire is WireType.FOUR_BYTE_INT:
            if off + 4 > stop:
                raise _truncated(where, name)
            value = int.from_bytes(mv[off : off + 4], "big")
            off += 4
        elif wire is WireType.TWO_BYTE_INT:
            value = _read_u16(mv, off, stop, where, name)
            off += 2
        elif wire is WireType.UTF8:
            value, off = _read_str(mv, off, stop, where, name)
        elif wire is WireType.BINARY:
            value, off = _read_bin(mv, off, stop, where, name)
        elif wire is WireType.VARINT:
            value, off = _read_varint(mv, off, stop, where, name)
        else:
            key, off = _read_str(mv, off, stop, where, name)
            val, off = _read_str(mv, off, stop, where, name)
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


# --------------------------------------------------------------------------
# Packet decoders. Each gets the protocol level, the first header byte and
# the bounds of the packet's variable header and payload.

_Handler = Callable[[int, int, memoryview, int, int], Packet]


def _codes(*codes: ReasonCode) -> frozenset[int]:
    return frozenset(int(c) for c in codes)


_PUBACK_CODES = _codes(
    _R.SUCCESS,
    _R.NO_MATCHING_SUBSCRIBERS,
    _R.UNSPECIFIED_ERROR,
    _R.IMPLEMENTATION_SPECIFIC_ERROR,
    _R.NOT_AUTHORIZED,
    _R.TOPIC_NAME_INVALID,
    _R.PACKET_IDENTIFIER_IN_USE,
    _R.QUOTA_EXCEEDED,
    _R.PAYLOAD_FORMAT_INVALID,
)
_PUBREL_CODES = _codes(_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND)
_SUBACK_CODES = _codes(
    _R.SUCCESS,
    _R.GRANTED_QOS_1,
    _R.GRANTED_QOS_2,
    _R.UNSPECIFIED_ERROR,
    _R.IMPLEMENTATION_SPECIFIC_ERROR,
    _R.NOT_AUTHORIZED,
    _R.TOPIC_FILTER_INVALID,
    _R.PACKET_IDENTIFIER_IN_USE,
    _R.QUOTA_EXCEEDED,
    _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
)
_SUBACK_CODES_V3 = frozenset({0x00, 0x01, 0x02, 0x80})
_UNSUBACK_CODES = _codes(
    _R.SUCCESS,
    _R.NO_SUBSCRIPTION_EXISTED,
    _R.UNSPECIFIED_ERROR,
    _R.IMPLEMENTATION_SPECIFIC_ERROR,
    _R.NOT_AUTHORIZED,
    _R.TOPIC_FILTER_INVALID,
    _R.PACKET_IDENTIFIER_IN_USE,
)
_CONNACK_CODES = _codes(
    _R.SUCCESS,
    _R.UNSPECIFIED_ERROR,
    _R.MALFORMED_PACKET,
    _R.PROTOCOL_ERROR,
    _R.IMPLEMENTATION_SPECIFIC_ERROR,
    _R.UNSUPPORTED_PROTOCOL_VERSION,
    _R.CLIENT_IDENTIFIER_NOT_VALID,
    _R.BAD_USER_NAME_OR_PASSWORD,
    _R.NOT_AUTHORIZED,
    _R.SERVER_UNAVAILABLE,
    _R.SERVER_BUSY,
    _R.BANNED,
    _R.BAD_AUTHENTICATION_METHOD,
    _R.TOPIC_NAME_INVALID,
    _R.PACKET_TOO_LARGE,
    _R.QUOTA_EXCEEDED,
    _R.PAYLOAD_FORMAT_INVALID,
    _R.RETAIN_NOT_SUPPORTED,
    _R.QOS_NOT_SUPPORTED,
    _R.USE_ANOTHER_SERVER,
    _R.SERVER_MOVED,
    _R.CONNECTION_RATE_EXCEEDED,
)
_DISCONNECT_CODES = _codes(
    _R.SUCCESS,
    _R.DISCONNECT_WITH_WILL,
    _R.UNSPECIFIED_ERROR,
    _R.MALFORMED_PACKET,
    _R.PROTOCOL_ERROR,
    _R.IMPLEMENTATION_SPECIFIC_ERROR,
    _R.NOT_AUTHORIZED,
    _R.SERVER_BUSY,
    _R.SERVER_SHUTTING_DOWN,
    _R.KEEP_ALIVE_TIMEOUT,
    _R.SESSION_TAKEN_OVER,
    _R.TOPIC_FILTER_INVALID,
    _R.TOPIC_NAME_INVALID,
    _R.RECEIVE_MAXIMUM_EXCEEDED,
    _R.TOPIC_ALIAS_INVALID,
    _R.PACKET_TOO_LARGE,
    _R.MESSAGE_RATE_TOO_HIGH,
    _R.QUOTA_EXCEEDED,
    _R.ADMINISTRATIVE_ACTION,
    _R.PAYLOAD_FORMAT_INVALID,
    _R.RETAIN_NOT_SUPPORTED,
    _R.QOS_NOT_SUPPORTED,
    _R.USE_ANOTHER_SERVER,
    _R.SERVER_MOVED,
    _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    _R.CONNECTION_RATE_EXCEEDED,
    _R.MAXIMUM_CONNECT_TIME,
    _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
)
_AUTH_CODES = _codes(_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.RE_AUTHENTICATE)


def _check_code(code: int, valid: frozenset[int], ctx: str) -> None:
    if code not in valid:
        # Parseable but not allowed by the protocol: a Protocol Error (spec 1.2).
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: invalid reason code 0x{code:02X}")


def _read_packet_id(mv: memoryview, off: int, end: int, ctx: str) -> int:
    packet_id = _read_u16(mv, off, end, ctx, "packet identifier")
    if not packet_id:  # [MQTT-2.3.1-1]
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: packet identifier is 0")
    return packet_id


def _connect_header(mv: memoryview, off: int, end: int) -> tuple[str, int, int]:
    """Protocol name and level of a supported CONNECT, and the offset after them."""
    ctx = "CONNECT"
    name, off = _read_str(mv, off, end, ctx, "protocol name")
    if off >= end:
        raise _truncated(ctx, "protocol level")
    version = mv[off]
    if name not in ("MQTT", "MQIsdp"):
        # [MQTT-3.1.2-1]: with an unknown name the server may only disconnect;
        # there is no CONNACK to send, so this is not a version problem.
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: unknown protocol name {name!r}")
    if (name == "MQTT" and version not in (4, 5)) or (name == "MQIsdp" and version != 3):
        raise MQTTProtocolError(
            _R.UNSUPPORTED_PROTOCOL_VERSION,
            f"{ctx}: unsupported protocol level {version} for {name!r}",
        )
    return name, version, off + 1


def _decode_connect(level: int, b0: int, mv: memoryview, off: int, end: int) -> Connect:
    ctx = "CONNECT"
    name, version, off = _connect_header(mv, off, end)
    if off + 3 > end:
        raise _truncated(ctx, "variable header")
    flags = mv[off]
    keepalive = (mv[off + 1] << 8) | mv[off + 2]
    off += 3
    if flags & 0x01:  # [MQTT-3.1.2-3]
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: reserved connect flag is set")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if not will_flag and (will_qos or will_retain):  # [MQTT-3.1.2-11], [MQTT-3.1.2-13] (5.0)
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: will QoS or retain set without will flag")
    if will_qos == 3:  # [MQTT-3.1.2-12] (5.0)
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: will QoS is 3")
    has_username = flags & 0x80
    has_password = flags & 0x40
    if has_password and not has_username and version < 5:  # [MQTT-3.1.2-22] (3.1.1)
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: password flag set without username flag")
    props: Properties = {}
    if version == 5:
        props, off = decode_properties(mv, off, end, ctx)
    client_id, off = _read_str(mv, off, end, ctx, "client identifier")
    will = None
    if will_flag:
        will_props: Properties = {}
        if version == 5:
            will_props, off = decode_properties(mv, off, end, "WILL")
        will_topic, off = _read_str(mv, off, end, ctx, "will topic")
        validate_topic_name(will_topic, "CONNECT will")
        will_payload, off = _read_bin(mv, off, end, ctx, "will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if has_username:
        username, off = _read_str(mv, off, end, ctx, "user name")
    if has_password:
        password, off = _read_bin(mv, off, end, ctx, "password")
    if off != end:
        raise _trailing(ctx)
    return Connect(
        client_id, version, name, bool(flags & 0x02), keepalive, will, username, password, props
    )


def _decode_connack(level: int, b0: int, mv: memoryview, off: int, end: int) -> Connack:
    ctx = "CONNACK"
    if off + 2 > end:
        raise _truncated(ctx, "variable header")
    ack_flags = mv[off]
    code = mv[off + 1]
    off += 2
    # 3.1 calls the first byte "reserved, not used"; 3.1.1 added Session Present.
    session_present = False
    if level > 3:
        if ack_flags & 0xFE:  # [MQTT-3.2.2-1]
            raise MQTTProtocolError(_MALFORMED, f"{ctx}: reserved acknowledge flags are set")
        session_present = bool(ack_flags)
    props: Properties = {}
    if level == 5:
        _check_code(code, _CONNACK_CODES, ctx)
        props, off = decode_properties(mv, off, end, ctx)
    elif code > 5:
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: invalid return code {code}")
    if session_present and code:  # [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0)
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: session present with a refusal")
    if off != end:
        raise _trailing(ctx)
    return Connack(session_present, code, props)


def _decode_publish(level: int, b0: int, mv: memoryview, off: int, end: int) -> Publish:
    # The dispatch table already refused QoS 3 and DUP on QoS 0. This is the
    # hot path, so the string and packet id reads are inlined.
    if off + 2 > end:
        raise _truncated("PUBLISH", "topic name")
    stop = off + 2 + ((mv[off] << 8) | mv[off + 1])
    if stop > end:
        raise _truncated("PUBLISH", "topic name")
    try:
        topic = mv[off + 2 : stop].tobytes().decode()
    except UnicodeDecodeError:
        raise MQTTProtocolError(_MALFORMED, "PUBLISH: topic name is not valid UTF-8") from None
    off = stop
    qos = (b0 >> 1) & 0x03
    packet_id = None
    if qos:
        if off + 2 > end:
            raise _truncated("PUBLISH", "packet identifier")
        packet_id = (mv[off] << 8) | mv[off + 1]
        if not packet_id:
            raise MQTTProtocolError(_PROTOCOL, "PUBLISH: packet identifier is 0")
        off += 2
    props: Properties
    if level != 5:
        props = {}
    elif off < end and not mv[off]:
        props = {}
        off += 1
    else:
        props, off = decode_properties(mv, off, end, "PUBLISH")
    if topic:
        if "\x00" in topic:  # [MQTT-1.5.4-2], a string rule: malformed, not a topic error
            raise MQTTProtocolError(_MALFORMED, "PUBLISH: topic name contains U+0000")
        if "+" in topic or "#" in topic:
            validate_topic_name(topic)
    elif level != 5:
        raise MQTTProtocolError(_R.TOPIC_NAME_INVALID, "PUBLISH: topic name is empty")
    elif "topic_alias" not in props:
        raise MQTTProtocolError(_PROTOCOL, "PUBLISH: empty topic name without a topic alias")
    return Publish(
        topic,
        mv[off:end].tobytes(),
        qos,
        (b0 & 0x01) == 0x01,
        (b0 & 0x08) == 0x08,
        packet_id,
        props,
    )


def _ack_decoder(cls: type[Puback | Pubrec | Pubrel | Pubcomp], codes: frozenset[int]) -> _Handler:
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        packet_id = _read_packet_id(mv, off, end, ctx)
        off += 2
        if off == end:
            return cls(packet_id)
        if level < 5:
            raise _trailing(ctx)
        # Spec 3.4.2.1: reason code and properties are optional in v5.
        code = mv[off]
        _check_code(code, codes, ctx)
        props: Properties = {}
        if off + 1 < end:
            props, off = decode_properties(mv, off + 1, end, ctx)
            if off != end:
                raise _trailing(ctx)
        return cls(packet_id, code, props)

    return decode


def _decode_subscribe(level: int, b0: int, mv: memoryview, off: int, end: int) -> Subscribe:
    ctx = "SUBSCRIBE"
    packet_id = _read_packet_id(mv, off, end, ctx)
    off += 2
    props: Properties = {}
    if level == 5:
        props, off = decode_properties(mv, off, end, ctx)
    subscriptions: list[tuple[str, SubscriptionOptions]] = []
    while off < end:
        topic_filter, off = _read_str(mv, off, end, ctx, "topic filter")
        if off >= end:
            raise _truncated(ctx, "subscription options")
        options = mv[off]
        off += 1
        if level < 5:
            if options > 2:  # [MQTT-3.8.3-4] (3.1.1): reserved bits and QoS 3
                raise MQTTProtocolError(_MALFORMED, f"{ctx}: invalid requested QoS byte {options}")
            opts = SubscriptionOptions(options)
        else:
            if options & 0xC0:  # [MQTT-3.8.3-5]
                raise MQTTProtocolError(_MALFORMED, f"{ctx}: reserved option bits are set")
            qos = options & 0x03
            retain_handling = (options >> 4) & 0x03
            if qos == 3:
                raise MQTTProtocolError(_PROTOCOL, f"{ctx}: maximum QoS is 3")
            if retain_handling == 3:
                raise MQTTProtocolError(_PROTOCOL, f"{ctx}: retain handling is 3")
            no_local = bool(options & 0x04)
            if no_local and topic_filter.startswith("$share/"):  # [MQTT-3.8.3-4] (5.0)
                raise MQTTProtocolError(_PROTOCOL, f"{ctx}: no local on a shared subscription")
            opts = SubscriptionOptions(qos, no_local, bool(options & 0x08), retain_handling)
        validate_topic_filter(topic_filter, ctx)
        subscriptions.append((topic_filter, opts))
    if not subscriptions:  # [MQTT-3.8.3-3]
        raise MQTTProtocolError(_PROTOCOL if level == 5 else _MALFORMED, f"{ctx}: no topic filters")
    return Subscribe(packet_id, subscriptions, props)


def _decode_unsubscribe(level: int, b0: int, mv: memoryview, off: int, end: int) -> Unsubscribe:
    ctx = "UNSUBSCRIBE"
    packet_id = _read_packet_id(mv, off, end, ctx)
    off += 2
    props: Properties = {}
    if level == 5:
        props, off = decode_properties(mv, off, end, ctx)
    topic_filters: list[str] = []
    while off < end:
        topic_filter, off = _read_str(mv, off, end, ctx, "topic filter")
        validate_topic_filter(topic_filter, ctx)
        topic_filters.append(topic_filter)
    if not topic_filters:  # [MQTT-3.10.3-2]
        raise MQTTProtocolError(_PROTOCOL if level == 5 else _MALFORMED, f"{ctx}: no topic filters")
    return Unsubscribe(packet_id, topic_filters, props)


def _read_codes(mv: memoryview, off: int, end: int, valid: frozenset[int], ctx: str) -> list[int]:
    codes = list(mv[off:end])
    if not codes:
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: no reason codes")
    if not valid.issuperset(codes):
        bad = next(code for code in codes if code not in valid)
        _check_code(bad, valid, ctx)
    return codes


def _decode_suback(level: int, b0: int, mv: memoryview, off: int, end: int) -> Suback:
    ctx = "SUBACK"
    packet_id = _read_packet_id(mv, off, end, ctx)
    off += 2
    if level < 5:
        return Suback(packet_id, _read_codes(mv, off, end, _SUBACK_CODES_V3, ctx))
    props, off = decode_properties(mv, off, end, ctx)
    return Suback(packet_id, _read_codes(mv, off, end, _SUBACK_CODES, ctx), props)


def _decode_unsuback(level: int, b0: int, mv: memoryview, off: int, end: int) -> Unsuback:
    ctx = "UNSUBACK"
    packet_id = _read_packet_id(mv, off, end, ctx)
    off += 2
    if level < 5:
        if off != end:
            raise _trailing(ctx)
        return Unsuback(packet_id)
    props, off = decode_properties(mv, off, end, ctx)
    return Unsuback(packet_id, _read_codes(mv, off, end, _UNSUBACK_CODES, ctx), props)


def _empty_decoder(cls: type[Pingreq | Pingresp]) -> _Handler:
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        if off != end:
            raise _trailing(ctx)
        return cls()

    return decode


def _reason_decoder(cls: type[Disconnect | Auth], codes: frozenset[int]) -> _Handler:
    """DISCONNECT and AUTH: empty below v5; in v5 code and properties are optional."""
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        if off == end:
            return cls()
        if level < 5:
            raise _trailing(ctx)
        code = mv[off]
        _check_code(code, codes, ctx)
        props: Properties = {}
        if off + 1 < end:  # spec 3.14.2.2.1 and 3.15.2.2.1
            props, off = decode_properties(mv, off + 1, end, ctx)
            if off != end:
                raise _trailing(ctx)
        return cls(code, props)

    return decode


_DECODERS: dict[PacketType, _Handler] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBLISH: _decode_publish,
    PacketType.PUBACK: _ack_decoder(Puback, _PUBACK_CODES),
    PacketType.PUBREC: _ack_decoder(Pubrec, _PUBACK_CODES),
    PacketType.PUBREL: _ack_decoder(Pubrel, _PUBREL_CODES),
    PacketType.PUBCOMP: _ack_decoder(Pubcomp, _PUBREL_CODES),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _empty_decoder(Pingreq),
    PacketType.PINGRESP: _empty_decoder(Pingresp),
    PacketType.DISCONNECT: _reason_decoder(Disconnect, _DISCONNECT_CODES),
    PacketType.AUTH: _reason_decoder(Auth, _AUTH_CODES),
}


# --------------------------------------------------------------------------
# First-byte dispatch. Type and reserved flags are judged from the first byte
# alone, so one table per protocol level turns that judgement into a single
# list index and lets garbage be refused before its length is even read.


def _first_byte_error(level: int | None, b0: int) -> tuple[ReasonCode, str] | None:
    kind = b0 >> 4
    flags = b0 & 0x0F
    if kind == 0:
        return _MALFORMED, "reserved packet type 0"
    ctx = PacketType(kind).name
    if level is None:
        if kind != PacketType.CONNECT:
            return _PROTOCOL, f"{ctx}: received before CONNECT"
    elif kind == PacketType.CONNECT:
        return _PROTOCOL, "CONNECT: protocol level already established (second CONNECT)"
    if kind == PacketType.AUTH and level != 5:
        return _MALFORMED, "AUTH: packet type 15 is reserved before MQTT 5"
    if kind == PacketType.PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:  # [MQTT-3.3.1-4]
            return _MALFORMED, "PUBLISH: QoS 3"
        if not qos and flags & 0x08:  # [MQTT-3.3.1-2]
            return _MALFORMED, "PUBLISH: DUP set on a QoS 0 message"
        return None
    if kind in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE):
        # 3.1 sent these at QoS 1 and set DUP on retries.
        if flags == 0x02 or (level == 3 and flags == 0x0A):
            return None
    elif not flags:
        return None
    return _MALFORMED, f"{ctx}: reserved header flags 0x{flags:X}"


def _build_table(level: int | None) -> list[_Handler | None]:
    return [
        None if _first_byte_error(level, b0) else _DECODERS[PacketType(b0 >> 4)]
        for b0 in range(256)
    ]


_TABLES: dict[int | None, list[_Handler | None]] = {
    level: _build_table(level) for level in (None, 3, 4, 5)
}


class Decoder:
    """Incremental decoder for one connection's inbound byte stream.

    Partial packets are kept between ``feed`` calls. ``max_packet_size`` is
    enforced from the fixed header alone, so a peer announcing a huge packet
    is refused before its body is buffered.
    """

    __slots__ = ("_buf", "_failure", "_handlers", "_level", "max_packet_size")

    def __init__(
        self, *, max_packet_size: int = MAX_PACKET_SIZE, protocol_level: int | None = None
    ) -> None:
        self.max_packet_size = max_packet_size
        self.protocol_level = protocol_level
        self._buf = bytearray()
        # Reason and message only: keeping the exception would keep its frames.
        self._failure: tuple[ReasonCode, str] | None = None

    @property
    def protocol_level(self) -> int | None:
        """None until a CONNECT is decoded; a client sets it after sending its own.

        Also set by a CONNECT that fails after its protocol name and level were
        accepted, so the broker knows whether to answer with a v5 CONNACK.
        """
        return self._level

    @protocol_level.setter
    def protocol_level(self, level: int | None) -> None:
        if level not in _TABLES:
            raise ValueError(f"unsupported protocol level {level!r}")
        self._level = level
        self._handlers = _TABLES[level]

    def feed(self, data: bytes) -> list[Packet]:
        """Every packet completed by ``data``, in order.

        The first invalid packet raises, discarding packets decoded earlier in
        the same call: the connection is going down and MQTT gives no ordering
        promise across a protocol violation. The decoder then stays failed.
        """
        if self._failure is not None:
            reason, message = self._failure
            raise MQTTProtocolError(reason, f"decoder already failed: {message}")
        buf = self._buf
        packets: list[Packet] = []
        try:
            if buf:
                buf += data
                with memoryview(buf) as mv:
                    pos = self._parse(mv, packets)
                # The view is released, so the buffer may shrink again.
                del buf[:pos]
            else:
                # Common case: parse the caller's bytes in place, keep only a tail.
                # No explicit release: nothing resizes ``data`` while we hold it.
                mv = memoryview(data)
                pos = self._parse(mv, packets)
                if pos < len(mv):
                    buf += mv[pos:]
        except MQTTProtocolError as exc:
            self._failure = (exc.reason_code, exc.message)
            raise
        return packets

    def _parse(self, mv: memoryview, packets: list[Packet]) -> int:
        """Decode whole packets from ``mv`` into ``packets``; return the bytes consumed."""
        size = len(mv)
        pos = 0
        # Only the CONNECT decoder runs before the level is known, and it ignores it.
        level = self._level or 0
        handlers = self._handlers
        while pos < size:
            b0 = mv[pos]
            handler = handlers[b0]
            if handler is None:
                error = _first_byte_error(self._level, b0)
                assert error is not None
                raise MQTTProtocolError(*error)
            if pos + 1 >= size:
                break
            length = mv[pos + 1]
            off = pos + 2
            if length >= 0x80:
                length, off = _remaining_length(mv, pos + 1, size, b0)
                if off < 0:
                    break
            end = off + length
            if end - pos > self.max_packet_size:
                raise MQTTProtocolError(
                    _R.PACKET_TOO_LARGE,
                    f"{PacketType(b0 >> 4).name}: packet of {end - pos} bytes exceeds the "
                    f"maximum packet size {self.max_packet_size}",
                )
            if end > size:
                break
            if b0 == 0x10:
                try:
                    connect = _decode_connect(level, b0, mv, off, end)
                except MQTTProtocolError:
                    # A CONNECT failing after its level was accepted still sets the
                    # level, so that the broker can answer a v5 client with a v5
                    # CONNACK carrying the reason (spec 4.13.1).
                    with suppress(MQTTProtocolError):
                        self.protocol_level = _connect_header(mv, off, end)[1]
                    raise
                packets.append(connect)
                self.protocol_level = level = connect.protocol_level
                handlers = self._handlers
            else:
                packets.append(handler(level, b0, mv, off, end))
            pos = end
        return pos


def _remaining_length(mv: memoryview, off: int, size: int, b0: int) -> tuple[int, int]:
    """(value, offset after it) of a multi-byte remaining length, or (0, -1) if incomplete."""
    value = 0
    for index in range(4):
        if off + index >= size:
            return 0, -1
        byte = mv[off + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if not byte:  # [MQTT-1.5.5-1]; only called when the first byte continues
                raise MQTTProtocolError(
                    _MALFORMED,
                    f"{PacketType(b0 >> 4).name}: remaining length is not minimally encoded",
                )
            return value, off + index + 1
    raise MQTTProtocolError(
        _MALFORMED, f"{PacketType(b0 >> 4).name}: remaining length is longer than 4 bytes"
    )


# --------------------------------------------------------------------------
# Encoding


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


def _encode_publish(p: Publish, level: int) -> bytes:
    head, tail = encode_publish_parts(
        p.topic, p.payload, p.qos, p.retain, p.dup, p.properties, level
    )
    if not p.qos:
        return head + tail
    if p.packet_id is None:
        raise ValueError("PUBLISH: QoS > 0 needs a packet_id")
    return b"".join((head, p.packet_id.to_bytes(2, "big"), tail))


def _encode_connect(p: Connect, level: int) -> bytes:
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


def _encode_connack(p: Connack, level: int) -> bytes:
    code = p.reason_code
    if level == 5:
        body = bytes((int(p.session_present), code)) + encode_properties(p.properties, "CONNACK")
        return _frame(0x20, body)
    if code > 5:
        # A v5 reason code: translate so the broker can pass either kind.
        code = connack_code_for(level, ReasonCode(code))
    return bytes((0x20, 2, int(p.session_present and level == 4), code))


def _encode_ack(p: Puback | Pubrec | Pubrel | Pubcomp, level: int) -> bytes:
    b0 = (p.type << 4) | (0x02 if p.type == PacketType.PUBREL else 0)
    packet_id = p.packet_id.to_bytes(2, "big")
    if level < 5 or not (p.reason_code or p.properties):
        return bytes((b0, 2)) + packet_id
    body = packet_id + bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, p.type.name)
    return _frame(b0, body)


def _encode_subscribe(p: Subscribe, level: int) -> bytes:
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


def _encode_suback(p: Suback, level: int) -> bytes:
    packet_id = p.packet_id.to_bytes(2, "big")
    if level == 5:
        body = packet_id + encode_properties(p.properties, "SUBACK") + bytes(p.reason_codes)
    else:
        # Every v5 failure code collapses to the single 3.x failure 0x80.
        body = packet_id + bytes(code if code < 0x80 else 0x80 for code in p.reason_codes)
    return _frame(0x90, body)


def _encode_unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [p.packet_id.to_bytes(2, "big")]
    if level == 5:
        parts.append(encode_properties(p.properties, "UNSUBSCRIBE"))
    parts += (encode_utf8(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: Unsuback, level: int) -> bytes:
    packet_id = p.packet_id.to_bytes(2, "big")
    if level < 5:
        return b"\xb0\x02" + packet_id
    body = packet_id + encode_properties(p.properties, "UNSUBACK") + bytes(p.reason_codes)
    return _frame(0xB0, body)


def _encode_pingreq(p: Pingreq, level: int) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(p: Pingresp, level: int) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(p: Disconnect, level: int) -> bytes:
    if level < 5 or not (p.reason_code or p.properties):
        return b"\xe0\x00"
    body = bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, "DISCONNECT")
    return _frame(0xE0, body)


def _encode_auth(p: Auth, level: int) -> bytes:
    if level < 5:
        raise ValueError("AUTH exists only in MQTT 5")
    if not (p.reason_code or p.properties):
        return b"\xf0\x00"
    body = bytes((p.reason_code,))
    if p.properties:
        body += encode_properties(p.properties, "AUTH")
    return _frame(0xF0, body)


_ENCODERS: dict[PacketType, Callable[[Any, int], bytes]] = {
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


def encode(packet: Packet, protocol_level: int) -> bytes:
    """Wire bytes of ``packet`` for a peer speaking ``protocol_level``.

    Fields the level lacks are ignored; at level 5 acknowledgements and
    DISCONNECT/AUTH use the shortest form the spec allows.
    """
    if protocol_level not in (3, 4, 5):
        raise ValueError(f"unsupported protocol level {protocol_level!r}")
    return _ENCODERS[packet.type](packet, protocol_level)
