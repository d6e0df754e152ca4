"""A hand-written MQTT client for tests that must see or choose every byte.

It deliberately shares nothing with ``raftmq.node.codec``: if the broker and
the tests decoded packets with the same code, a codec bug would make both
sides agree on the wrong bytes and the tests would pass. It encodes only the
packets the integration tests send and parses just enough of what comes back
to assert on it; anything malformed a test needs is written out by hand in
the test itself.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# v5 property identifiers used by the tests.
PAYLOAD_FORMAT_INDICATOR = 0x01
SESSION_EXPIRY_INTERVAL = 0x11
REQUEST_PROBLEM_INFORMATION = 0x17
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

# Wire type of every v5 property: the parser must know them all to skip the
# ones a test does not look at.
_PROPERTY_TYPES: dict[int, str] = {
    0x01: "byte",
    0x02: "u32",
    0x03: "str",
    0x08: "str",
    0x09: "bin",
    0x0B: "varint",
    0x11: "u32",
    0x12: "str",
    0x13: "u16",
    0x15: "str",
    0x16: "bin",
    0x17: "byte",
    0x18: "u32",
    0x19: "byte",
    0x1A: "str",
    0x1C: "str",
    0x1F: "str",
    0x21: "u16",
    0x22: "u16",
    0x23: "u16",
    0x24: "byte",
    0x25: "byte",
    0x26: "pair",
    0x27: "u32",
    0x28: "byte",
    0x29: "byte",
    0x2A: "byte",
}

PropertyValue = int | str | bytes | tuple[str, str]
PropertyList = list[tuple[int, PropertyValue]]

DEFAULT_TIMEOUT = 5.0


class Closed(Exception):
    """The broker closed the connection (EOF or reset)."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed string; ``bytes`` go out as given so tests can send invalid UTF-8."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_properties(properties: Iterable[tuple[int, PropertyValue]] = ()) -> bytes:
    """Encode (id, value) pairs in the given order; a list so tests can repeat an id."""
    body = bytearray()
    for pid, value in properties:
        kind = _PROPERTY_TYPES[pid]
        body += varint(pid)
        if kind == "byte":
            body += struct.pack("!B", value)
        elif kind == "u16":
            body += struct.pack("!H", value)
        elif kind == "u32":
            body += struct.pack("!I", value)
        elif kind == "varint":
            assert isinstance(value, int)
            body += varint(value)
        elif kind == "str":
            assert isinstance(value, str)
            body += utf8(value)
        elif kind == "bin":
            assert isinstance(value, bytes)
            body += binary(value)
        else:
            assert isinstance(value, tuple)
            body += utf8(value[0]) + utf8(value[1])
    return varint(len(body)) + bytes(body)


def packet(first_byte: int, body: bytes) -> bytes:
    """Fixed header (type and flags in ``first_byte``) + remaining length + body."""
    return bytes([first_byte]) + varint(len(body)) + body


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: PropertyList = field(default_factory=list)


def connect(
    client_id: str,
    *,
    level: int = 5,
    clean: bool = True,
    keepalive: int = 60,
    properties: PropertyList | None = None,
    will: Will | None = None,
) -> bytes:
    """CONNECT for protocol level 3 (MQIsdp), 4 (3.1.1) or 5, or any other level byte."""
    name = "MQIsdp" if level == 3 else "MQTT"
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    body = utf8(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += encode_properties(properties or [])
    body += utf8(client_id)
    if will is not None:
        if level == 5:
            body += encode_properties(will.properties)
        body += utf8(will.topic) + binary(will.payload)
    return packet(CONNECT << 4, body)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
    properties: PropertyList | None = None,
    level: int = 5,
) -> bytes:
    first = PUBLISH << 4 | (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        assert packet_id is not None, "QoS 1/2 PUBLISH needs a packet id"
        body += struct.pack("!H", packet_id)
    if level == 5:
        body += encode_properties(properties or [])
    return packet(first, body + payload)


def ack(kind: int, packet_id: int, reason: int = 0) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP in the short form every protocol level accepts."""
    body = struct.pack("!H", packet_id) + (bytes([reason]) if reason else b"")
    return packet(kind << 4 | (0x02 if kind == PUBREL else 0), body)


def subscribe(
    packet_id: int,
    filters: list[tuple[str, int]],
    *,
    properties: PropertyList | None = None,
    level: int = 5,
) -> bytes:
    """SUBSCRIBE; each filter's int is the whole options byte (just the QoS before v5)."""
    body = struct.pack("!H", packet_id)
    if level == 5:
        body += encode_properties(properties or [])
    for topic_filter, options in filters:
        body += utf8(topic_filter) + bytes([options])
    return packet(SUBSCRIBE << 4 | 0x02, body)


def disconnect(reason: int = 0, *, level: int = 5) -> bytes:
    body = bytes([reason]) if level == 5 and reason else b""
    return packet(DISCONNECT << 4, body)


PINGREQ_BYTES = bytes([PINGREQ << 4, 0])


@dataclass
class Packet:
    """One received packet: its raw parts plus the fields the tests assert on."""

    type: int
    flags: int
    body: bytes
    packet_id: int | None = None
    reason_code: int | None = None
    session_present: bool = False
    topic: str | None = None
    payload: bytes = b""
    reason_codes: list[int] = field(default_factory=list)
    properties: PropertyList = field(default_factory=list)

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def prop(self, pid: int) -> PropertyValue | None:
        """The value of a property that may occur once, or None if absent."""
        values = self.props(pid)
        assert len(values) <= 1, f"property {pid:#x} repeated: {values}"
        return values[0] if values else None

    def props(self, pid: int) -> list[PropertyValue]:
        return [value for p, value in self.properties if p == pid]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"packet body too short: {self.data!r}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("variable byte integer longer than 4 bytes")

    def text(self) -> str:
        return self.take(self.u16()).decode()

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def properties(self) -> PropertyList:
        end = self.varint() + self.pos
        props: PropertyList = []
        while self.pos < end:
            pid = self.varint()
            kind = _PROPERTY_TYPES.get(pid)
            value: PropertyValue
            if kind == "byte":
                value = self.u8()
            elif kind == "u16":
                value = self.u16()
            elif kind == "u32":
                value = self.u32()
            elif kind == "varint":
                value = self.varint()
            elif kind == "str":
                value = self.text()
            elif kind == "bin":
                value = self.take(self.u16())
            elif kind == "pair":
                value = (self.text(), self.text())
            else:
                raise ValueError(f"unknown property id {pid:#x} from the broker")
            props.append((pid, value))
        if self.pos != end:
            raise ValueError("property length does not match its properties")
        return props


def parse(first_byte: int, body: bytes, level: int) -> Packet:
    """Decode what the tests need of a packet sent by the broker at ``level``."""
    kind, flags = first_byte >> 4, first_byte & 0x0F
    pkt = Packet(kind, flags, body)
    r = _Reader(body)
    if kind == CONNACK:
        pkt.session_present = bool(r.u8() & 0x01)
        pkt.reason_code = r.u8()
        if level == 5 and not r.at_end():
            pkt.properties = r.properties()
    elif kind == PUBLISH:
        pkt.topic = r.text()
        if pkt.qos:
            pkt.packet_id = r.u16()
        if level == 5:
            pkt.properties = r.properties()
        pkt.payload = r.rest()
    elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        pkt.packet_id = r.u16()
        if level == 5 and kind == UNSUBACK:
            pkt.properties = r.properties()
            pkt.reason_codes = list(r.rest())
        elif level == 5 and not r.at_end():
            pkt.reason_code = r.u8()
            if not r.at_end():
                pkt.properties = r.properties()
        else:
            pkt.reason_code = 0
    elif kind == SUBACK:
        pkt.packet_id = r.u16()
        if level == 5:
            pkt.properties = r.properties()
        pkt.reason_codes = list(r.rest())
    elif kind == DISCONNECT:
        pkt.reason_code = r.u8() if not r.at_end() else 0
        if not r.at_end():
            pkt.properties = r.properties()
    return pkt


class RawClient:
    """A blocking socket speaking MQTT at one protocol level; every read is bounded."""

    def __init__(self, host: str, port: int, level: int = 5) -> None:
        self.level = level
        self.sock = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT)
        self.buffer = bytearray()
        self.closed_by_peer = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def connect(self, client_id: str, **kwargs: Any) -> Packet:
        """Send CONNECT (arguments as for ``connect``) at this client's level; the CONNACK."""
        self.send(connect(client_id, level=self.level, **kwargs))
        return self.expect(CONNACK)

    def _split(self) -> tuple[int, int] | None:
        """(header length, remaining length) of the buffered packet, if it is all here."""
        length, shift = 0, 0
        for i in range(1, min(len(self.buffer), 5)):
            byte = self.buffer[i]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                header = i + 1
                return (header, length) if len(self.buffer) >= header + length else None
            shift += 7
        return None

    def _fill(self, deadline: float) -> None:
        if self.closed_by_peer:
            raise Closed("connection already closed by the broker")
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            raise TimeoutError("no complete packet from the broker in time")
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError as exc:
            self.closed_by_peer = True
            raise Closed(str(exc)) from None
        if not chunk:
            self.closed_by_peer = True
            raise Closed("EOF")
        self.buffer += chunk

    def read(self, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """The next packet; TimeoutError if none arrives in time, Closed on EOF."""
        deadline = time.monotonic() + timeout
        while (split := self._split()) is None:
            self._fill(deadline)
        header, length = split
        first, body = self.buffer[0], bytes(self.buffer[header : header + length])
        del self.buffer[: header + length]
        return parse(first, body, self.level)

    def expect(self, kind: int, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """The next packet, which must be of type ``kind``."""
        pkt = self.read(timeout)
        assert pkt.type == kind, f"expected packet type {kind}, got {pkt}"
        return pkt

    def read_until_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Packet]:
        """Everything the broker sends before it closes; fails if it stays open."""
        deadline = time.monotonic() + timeout
        packets: list[Packet] = []
        while True:
            try:
                packets.append(self.read(max(deadline - time.monotonic(), 0.001)))
            except Closed:
                assert not self.buffer, f"broker closed mid-packet: {bytes(self.buffer)!r}"
                return packets
            except TimeoutError:
                raise AssertionError(
                    f"broker kept the connection open for {timeout} s; it sent {packets}"
                ) from None

    def assert_silent(self, seconds: float) -> None:
        """Nothing arrives for ``seconds`` (and the connection stays open)."""
        try:
            pkt = self.read(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing from the broker, got {pkt}")


class RawClients:
    """Opens raw clients and closes every one of them, however the test ends."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.opened: list[RawClient] = []

    def open(self, level: int = 5) -> RawClient:
        client = RawClient(self.host, self.port, level)
        self.opened.append(client)
        return client

    def connected(self, client_id: str, level: int = 5, **kwargs: Any) -> RawClient:
        """A client whose CONNECT was accepted."""
        client = self.open(level)
        connack = client.connect(client_id, **kwargs)
        assert connack.reason_code == 0, f"CONNECT of {client_id!r} refused: {connack}"
        return client

    def close_all(self) -> None:
        for client in self.opened:
            client.close()


@contextmanager
def raw_clients(host: str, port: int) -> Iterator[RawClients]:
    clients = RawClients(host, port)
    try:
        yield clients
    finally:
        clients.close_all()
