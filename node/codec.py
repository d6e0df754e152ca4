"""Sans-I/O MQTT wire codec for protocol levels 3 (MQIsdp 3.1), 4 (3.1.1) and 5 (5.0).

The decoder is strict: anything the specification calls malformed or a
protocol error raises ``MQTTProtocolError`` carrying the v5 reason code the
broker should disconnect with, and nothing else may escape ``Decoder.feed``
whatever bytes arrive. The broker, the benchmark tool and the tests all use
the same decoder, so it decodes both directions (a server receiving a
CONNACK is the broker's business, not the codec's).

The codec validates syntax only; state such as topic alias resolution,
outstanding packet identifiers or authorisation belongs to the broker.

This module is the codec's public face: ``Decoder`` does the framing (first
byte, remaining length, maximum packet size) and hands each body to its
decoder in ``decoders``; ``encode`` picks the packet's encoder in
``encoders``. The fields they share and ``MQTTProtocolError`` are in
``wire``, the properties in ``properties``.
"""

from __future__ import annotations

from contextlib import suppress

from raftmq.node.decoders import DECODERS, Handler, connect_header, decode_connect
from raftmq.node.encoders import ENCODERS
from raftmq.node.packets import Packet, PacketType
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import MAX_VARINT, MQTTProtocolError

# One type byte, four length bytes and the largest remaining length.
MAX_PACKET_SIZE = 1 + 4 + MAX_VARINT

_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL = ReasonCode.PROTOCOL_ERROR
_R = ReasonCode


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


def _build_table(level: int | None) -> list[Handler | None]:
    return [
        None if _first_byte_error(level, b0) else DECODERS[PacketType(b0 >> 4)] for b0 in range(256)
    ]


_TABLES: dict[int | None, list[Handler | None]] = {
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
                    connect = decode_connect(level, b0, mv, off, end)
                except MQTTProtocolError:
                    # A CONNECT failing after its level was accepted still sets the
                    # level, so that the broker can answer a v5 client with a v5
                    # CONNACK carrying the reason (spec 4.13.1).
                    with suppress(MQTTProtocolError):
                        self.protocol_level = connect_header(mv, off, end)[1]
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


def encode(packet: Packet, protocol_level: int) -> bytes:
    """Wire bytes of ``packet`` for a peer speaking ``protocol_level``.

    Fields the level lacks are ignored; at level 5 acknowledgements and
    DISCONNECT/AUTH use the shortest form the spec allows.
    """
    if protocol_level not in (3, 4, 5):
        raise ValueError(f"unsupported protocol level {protocol_level!r}")
    return ENCODERS[packet.type](packet, protocol_level)
