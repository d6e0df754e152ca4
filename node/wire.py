"""MQTT's data representations (spec 1.5), topic syntax (spec 4.7) and the protocol error.

Every packet body is built from the same few fields: two-byte integers,
UTF-8 strings, binary data and variable byte integers. Their readers and
writers live here, with ``MQTTProtocolError``, which every reader raises, and
the topic name and filter checks, so that the packet decoders in ``decoders``
and the property codec in ``properties`` share one definition of each.
"""

from __future__ import annotations

from raftmq.node.reason_codes import ReasonCode

_MALFORMED = ReasonCode.MALFORMED_PACKET
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


def truncated(ctx: str, field: str) -> MQTTProtocolError:
    return MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is truncated")


def trailing(ctx: str) -> MQTTProtocolError:
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


def read_u16(mv: memoryview, off: int, end: int, ctx: str, field: str) -> int:
    if off + 2 > end:
        raise truncated(ctx, field)
    return (mv[off] << 8) | mv[off + 1]


def read_str(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[str, int]:
    stop = off + 2 + read_u16(mv, off, end, ctx, field)
    if stop > end:
        raise truncated(ctx, field)
    try:
        # Strict UTF-8 also rejects encoded surrogates [MQTT-1.5.4-1].
        text = mv[off + 2 : stop].tobytes().decode()
    except UnicodeDecodeError:
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is not valid UTF-8") from None
    if "\x00" in text:  # [MQTT-1.5.4-2]
        raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} contains U+0000")
    return text, stop


def read_bin(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[bytes, int]:
    stop = off + 2 + read_u16(mv, off, end, ctx, field)
    if stop > end:
        raise truncated(ctx, field)
    return mv[off + 2 : stop].tobytes(), stop


def read_varint(mv: memoryview, off: int, end: int, ctx: str, field: str) -> tuple[int, int]:
    value = 0
    for index in range(4):
        if off >= end:
            raise truncated(ctx, field)
        byte = mv[off]
        off += 1
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index:  # [MQTT-1.5.5-1] minimum number of bytes
                raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is not minimally encoded")
            return value, off
    raise MQTTProtocolError(_MALFORMED, f"{ctx}: {field} is longer than 4 bytes")


# --------------------------------------------------------------------------
# Primitive writers. They refuse what cannot be sent with ValueError, since
# that is a bug of the sender, not of the peer.


MAX_VARINT = 268_435_455


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes exceeds the 65535-byte MQTT limit")
    return len(raw).to_bytes(2, "big") + raw


def encode_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary field of {len(data)} bytes exceeds the 65535-byte MQTT limit")
    return len(data).to_bytes(2, "big") + data
