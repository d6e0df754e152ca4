"""Body decoders of the fifteen MQTT packet types, one per type in ``DECODERS``.

Each gets the protocol level, the first header byte and the bounds of the
packet's variable header and payload; the framing around them (first-byte
checks, remaining length, maximum packet size) is ``codec.Decoder``'s.
"""

from __future__ import annotations

from collections.abc import Callable

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
from raftmq.node.properties import decode_properties
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import (
    MQTTProtocolError,
    read_bin,
    read_str,
    read_u16,
    trailing,
    truncated,
    validate_topic_filter,
    validate_topic_name,
)

_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL = ReasonCode.PROTOCOL_ERROR
_R = ReasonCode

Handler = Callable[[int, int, memoryview, int, int], Packet]


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
    packet_id = read_u16(mv, off, end, ctx, "packet identifier")
    if not packet_id:  # [MQTT-2.3.1-1]
        raise MQTTProtocolError(_PROTOCOL, f"{ctx}: packet identifier is 0")
    return packet_id


def connect_header(mv: memoryview, off: int, end: int) -> tuple[str, int, int]:
    """Protocol name and level of a supported CONNECT, and the offset after them."""
    ctx = "CONNECT"
    name, off = read_str(mv, off, end, ctx, "protocol name")
    if off >= end:
        raise truncated(ctx, "protocol level")
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


def decode_connect(level: int, b0: int, mv: memoryview, off: int, end: int) -> Connect:
    ctx = "CONNECT"
    name, version, off = connect_header(mv, off, end)
    if off + 3 > end:
        raise truncated(ctx, "variable header")
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
    client_id, off = read_str(mv, off, end, ctx, "client identifier")
    will = None
    if will_flag:
        will_props: Properties = {}
        if version == 5:
            will_props, off = decode_properties(mv, off, end, "WILL")
        will_topic, off = read_str(mv, off, end, ctx, "will topic")
        validate_topic_name(will_topic, "CONNECT will")
        will_payload, off = read_bin(mv, off, end, ctx, "will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if has_username:
        username, off = read_str(mv, off, end, ctx, "user name")
    if has_password:
        password, off = read_bin(mv, off, end, ctx, "password")
    if off != end:
        raise trailing(ctx)
    return Connect(
        client_id, version, name, bool(flags & 0x02), keepalive, will, username, password, props
    )


def _decode_connack(level: int, b0: int, mv: memoryview, off: int, end: int) -> Connack:
    ctx = "CONNACK"
    if off + 2 > end:
        raise truncated(ctx, "variable header")
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
        raise trailing(ctx)
    return Connack(session_present, code, props)


def _decode_publish(level: int, b0: int, mv: memoryview, off: int, end: int) -> Publish:
    # The dispatch table already refused QoS 3 and DUP on QoS 0. This is the
    # hot path, so the string and packet id reads are inlined.
    if off + 2 > end:
        raise truncated("PUBLISH", "topic name")
    stop = off + 2 + ((mv[off] << 8) | mv[off + 1])
    if stop > end:
        raise truncated("PUBLISH", "topic name")
    try:
        topic = mv[off + 2 : stop].tobytes().decode()
    except UnicodeDecodeError:
        raise MQTTProtocolError(_MALFORMED, "PUBLISH: topic name is not valid UTF-8") from None
    off = stop
    qos = (b0 >> 1) & 0x03
    packet_id = None
    if qos:
        if off + 2 > end:
            raise truncated("PUBLISH", "packet identifier")
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


def _ack_decoder(cls: type[Puback | Pubrec | Pubrel | Pubcomp], codes: frozenset[int]) -> Handler:
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        packet_id = _read_packet_id(mv, off, end, ctx)
        off += 2
        if off == end:
            return cls(packet_id)
        if level < 5:
            raise trailing(ctx)
        # Spec 3.4.2.1: reason code and properties are optional in v5.
        code = mv[off]
        _check_code(code, codes, ctx)
        props: Properties = {}
        if off + 1 < end:
            props, off = decode_properties(mv, off + 1, end, ctx)
            if off != end:
                raise trailing(ctx)
        return cls(packet_id, code, props)

    return decode


def _id_and_properties(
    level: int, mv: memoryview, off: int, end: int, ctx: str
) -> tuple[int, Properties, int]:
    """Packet identifier and (in v5) properties, the head of SUBSCRIBE and UNSUBSCRIBE."""
    packet_id = _read_packet_id(mv, off, end, ctx)
    props: Properties = {}
    off += 2
    if level == 5:
        props, off = decode_properties(mv, off, end, ctx)
    return packet_id, props, off


def _decode_subscribe(level: int, b0: int, mv: memoryview, off: int, end: int) -> Subscribe:
    ctx = "SUBSCRIBE"
    packet_id, props, off = _id_and_properties(level, mv, off, end, ctx)
    subscriptions: list[tuple[str, SubscriptionOptions]] = []
    while off < end:
        topic_filter, off = read_str(mv, off, end, ctx, "topic filter")
        if off >= end:
            raise truncated(ctx, "subscription options")
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
    packet_id, props, off = _id_and_properties(level, mv, off, end, ctx)
    topic_filters: list[str] = []
    while off < end:
        topic_filter, off = read_str(mv, off, end, ctx, "topic filter")
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
            raise trailing(ctx)
        return Unsuback(packet_id)
    props, off = decode_properties(mv, off, end, ctx)
    return Unsuback(packet_id, _read_codes(mv, off, end, _UNSUBACK_CODES, ctx), props)


def _empty_decoder(cls: type[Pingreq | Pingresp]) -> Handler:
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        if off != end:
            raise trailing(ctx)
        return cls()

    return decode


def _reason_decoder(cls: type[Disconnect | Auth], codes: frozenset[int]) -> Handler:
    """DISCONNECT and AUTH: empty below v5; in v5 code and properties are optional."""
    ctx = cls.type.name

    def decode(level: int, b0: int, mv: memoryview, off: int, end: int) -> Packet:
        if off == end:
            return cls()
        if level < 5:
            raise trailing(ctx)
        code = mv[off]
        _check_code(code, codes, ctx)
        props: Properties = {}
        if off + 1 < end:  # spec 3.14.2.2.1 and 3.15.2.2.1
            props, off = decode_properties(mv, off + 1, end, ctx)
            if off != end:
                raise trailing(ctx)
        return cls(code, props)

    return decode


DECODERS: dict[PacketType, Handler] = {
    PacketType.CONNECT: decode_connect,
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
