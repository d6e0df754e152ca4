"""The binary codec of SWIM messages.

Layout (big-endian): a version byte, a type byte, the type's fixed fields, its
strings, then a count byte and the piggybacked updates. Strings are UTF-8
behind a length byte; counters (seq, incarnation) are 32 bits. An update is
its state, a flags byte saying whether meta and an accuser follow, the
incarnation and the node id. Compact because a UDP datagram of 1400 bytes
should carry a dozen updates, and built with ``struct`` because every probe
encodes two or three messages.

Decoding trusts nothing: a packet from a member of another version, a
truncated datagram or random bytes raise ``BadPacket`` (``UnknownVersion`` for
another version) naming what was wrong and where, and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from functools import lru_cache

from .errors import BadPacket, UnknownVersion
from .members import MemberMeta, State, Update
from .messages import Ack, Message, Nack, Ping, PingReq, PushPull

VERSION = 1
"""The wire format's version, the first byte of every message."""

_PING, _PING_REQ, _ACK, _NACK, _PUSH_PULL = range(1, 6)
_NAMES = {_PING: "ping", _PING_REQ: "ping-req", _ACK: "ack", _NACK: "nack", _PUSH_PULL: "push-pull"}
_HAS_META, _HAS_ACCUSER = 1, 2
_WANT_REPLY = 1
_STATES = {state.value: state for state in State}
_ADDRESSES = ("swim_addr", "raft_addr", "grpc_addr", "mqtt_addr")
"""The meta fields after the node id, in wire order."""
MAX_UPDATES = 255
"""Updates one message can carry (their count is a byte)."""

_HEAD = struct.Struct("!BB")
_SEQ = struct.Struct("!BBI")
_PUSH = struct.Struct("!BBB")
_UPDATE = struct.Struct("!BBI")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _text(value: str, field: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(
            f"{field} {value[:40]!r}... is {len(raw)} bytes in UTF-8; SWIM messages hold "
            "at most 255"
        )
    return bytes((len(raw),)) + raw


@lru_cache(maxsize=4096)
def encode_update(update: Update) -> bytes:
    """One update's bytes; cached, as an update goes out several times while it spreads."""
    meta, accuser = update.meta, update.accuser
    flags = (_HAS_META if meta else 0) | (_HAS_ACCUSER if accuser else 0)
    parts = [
        _UPDATE.pack(update.state, flags, update.incarnation),
        _text(update.node_id, "node id"),
    ]
    if meta:
        if meta.node_id != update.node_id:
            raise ValueError(f"update of {update.node_id!r} with the meta of {meta.node_id!r}")
        parts += (_text(getattr(meta, name), name) for name in _ADDRESSES)
    if accuser:
        parts.append(_text(accuser, "accuser"))
    return b"".join(parts)


def update_size(update: Update) -> int:
    """Bytes ``update`` takes in a message."""
    return len(encode_update(update))


def _head(message: Message) -> bytes:
    match message:
        case Ping(seq, target, sender):
            return (
                _SEQ.pack(VERSION, _PING, seq) + _text(target, "target") + _text(sender, "sender")
            )
        case PingReq(seq, target, target_addr, sender):
            return b"".join(
                (
                    _SEQ.pack(VERSION, _PING_REQ, seq),
                    _text(target, "target"),
                    _text(target_addr, "target address"),
                    _text(sender, "sender"),
                )
            )
        case Ack(seq, sender):
            return _SEQ.pack(VERSION, _ACK, seq) + _text(sender, "sender")
        case Nack(seq, sender):
            return _SEQ.pack(VERSION, _NACK, seq) + _text(sender, "sender")
        case PushPull(sender, want_reply, records):
            flags = _WANT_REPLY if want_reply else 0
            return b"".join(
                (
                    _PUSH.pack(VERSION, _PUSH_PULL, flags),
                    _text(sender, "sender"),
                    _U16.pack(len(records)),
                    *map(encode_update, records),
                )
            )
    raise TypeError(f"not a SWIM message: {message!r}")


def base_size(message: Message) -> int:
    """Bytes ``message`` takes without its updates (what is left is for piggybacking)."""
    return len(_head(message)) + 1


def encode(message: Message) -> bytes:
    """The bytes of ``message``; the caller keeps it within its packet size."""
    updates = message.updates
    if len(updates) > MAX_UPDATES:
        raise ValueError(f"{len(updates)} updates in one message; at most {MAX_UPDATES} fit")
    return b"".join((_head(message), bytes((len(updates),)), *map(encode_update, updates)))


class _Reader:
    """Reads fields off a packet, raising ``BadPacket`` naming the field that is missing
    or wrong, the message type and the offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.what = "message"

    def fail(self, problem: str) -> BadPacket:
        return BadPacket(f"bad SWIM {self.what} ({len(self.data)} bytes): {problem}")

    def take(self, size: int, field: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise self.fail(f"truncated at byte {self.pos}, reading {field}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, layout: struct.Struct, field: str) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size, field))

    def text(self, field: str) -> str:
        (size,) = self.unpack(_U8, field)
        raw = self.take(size, field)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not UTF-8") from None
        if not value:
            raise self.fail(f"{field} is empty")
        return value

    def address(self, field: str, lowest_port: int = 1) -> str:
        value = self.text(field)
        host, colon, port = value.rpartition(":")
        if not (colon and host and port.isdigit() and lowest_port <= int(port) < 65536):
            raise self.fail(f"{field} {value!r} is not host:port")
        return value

    def update(self) -> Update:
        state_code, flags, incarnation = self.unpack(_UPDATE, "an update")
        if state_code not in _STATES or flags & ~(_HAS_META | _HAS_ACCUSER):
            raise self.fail(f"update with unknown state {state_code} or flags {flags:#x}")
        state = _STATES[state_code]
        node_id = self.text("an update's node id")
        meta = None
        if flags & _HAS_META:
            # Port 0 in mqtt_addr: a node whose MQTT port is picked at bind time, after
            # it joined, announces none.
            addresses = (self.address(name, int(name != "mqtt_addr")) for name in _ADDRESSES)
            meta = MemberMeta(node_id, *addresses)
        elif state is State.ALIVE:
            raise self.fail(f"alive update of {node_id!r} without its meta")
        accuser = self.text("an update's accuser") if flags & _HAS_ACCUSER else None
        return Update(node_id, state, incarnation, meta, accuser)

    def updates(self, count: int) -> tuple[Update, ...]:
        return tuple(self.update() for _ in range(count))


def decode(data: bytes) -> Message:
    """The message in ``data``; ``BadPacket`` if it is not exactly one message."""
    reader = _Reader(bytes(data))
    version, kind = reader.unpack(_HEAD, "the header")
    if version != VERSION:
        raise UnknownVersion(
            f"SWIM wire format version {version} ({len(data)} bytes); this member speaks "
            f"version {VERSION}"
        )
    if kind not in _NAMES:
        raise reader.fail(f"unknown message type {kind}")
    reader.what = _NAMES[kind]
    message = _body(reader, kind)
    (count,) = reader.unpack(_U8, "the update count")
    updates = reader.updates(count)
    if reader.pos != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.pos} bytes after the last update")
    return replace(message, updates=updates)


def _body(reader: _Reader, kind: int) -> Message:
    if kind == _PUSH_PULL:
        (flags,) = reader.unpack(_U8, "flags")
        if flags & ~_WANT_REPLY:
            raise reader.fail(f"unknown flags {flags:#x}")
        sender = reader.text("sender")
        (count,) = reader.unpack(_U16, "the record count")
        return PushPull(sender, bool(flags & _WANT_REPLY), _records(reader, count))
    (seq,) = reader.unpack(_U32, "seq")
    if kind == _PING:
        return Ping(seq, reader.text("target"), reader.text("sender"))
    if kind == _PING_REQ:
        target = reader.text("target")
        return PingReq(seq, target, reader.address("target address"), reader.text("sender"))
    return (Ack if kind == _ACK else Nack)(seq, reader.text("sender"))


def _records(reader: _Reader, count: int) -> tuple[Update, ...]:
    records = reader.updates(count)
    for record in records:
        if record.meta is None:
            raise reader.fail(f"record of {record.node_id!r} without its meta")
    return records
