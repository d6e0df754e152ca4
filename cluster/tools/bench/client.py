"""Raw MQTT clients for the load generator, as asyncio Protocols.

Handshakes (CONNECT/CONNACK, SUBSCRIBE/SUBACK) go through the project codec,
but the message path does not: measured on the reference machine,
``Decoder.feed`` turns about 340 k PUBLISH/s into ``Publish`` objects on one
core (topic decoding, a payload copy and an object per packet), while
``Subscriber`` below frames, parses and checks off the same bytes at about
700 k/s. A subscriber in the generator only needs a few integers out of a
PUBLISH (QoS, packet id, publisher index, sequence, send time), so it reads
them in place with ``unpack_from``; the codec would have halved the
generator's ceiling. Control packets found by the framer are still handed
to the codec, one packet at a time.

Publishers render each PUBLISH with a single ``struct`` call: the head from
``encode_publish_parts`` (fixed header and topic, computed once per topic),
the packet id, the v5 property length, the payload header and its zero
padding. Writes are batched, and the event loop runs between batches so that
the other clients of the process keep being served.
"""

from __future__ import annotations

import asyncio
import struct
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat
from time import monotonic_ns
from typing import cast

from raftmq.node.codec import Decoder, encode
from raftmq.node.encoders import encode_publish_parts
from raftmq.node.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Suback,
    Subscribe,
    SubscriptionOptions,
)
from raftmq.node.reason_codes import ReasonCode
from raftmq.node.wire import MQTTProtocolError

KEEPALIVE = 600
DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
# Messages per write when publishing as fast as possible: big enough to make
# the per-write cost vanish, small enough to keep every client of the process
# served between two batches.
BATCH = 64

_PAYLOAD = struct.Struct(">IIQ")
# The publisher index of route probes: no publisher of a run has it, so a
# subscriber tells a probe apart where it already handles unknown publishers,
# off the path of the counted messages.
PROBE_PUBLISHER = 0xFFFFFFFF
_PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 3, 4, 5, 6, 7
_REPLY_TO = {1: b"\x40\x02", 2: b"\x50\x02"}  # PUBACK / PUBREC by the QoS received


class HandshakeError(Exception):
    """The broker refused or broke off a CONNECT or SUBSCRIBE."""


def read_varint(data: bytes, off: int, end: int) -> tuple[int, int]:
    """(value, offset after it) of the variable byte integer at ``off``, or (0, -1) if cut."""
    value = 0
    for shift in (0, 7, 14, 21):
        if off >= end:
            return 0, -1
        byte = data[off]
        off += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, off
    raise MQTTProtocolError(ReasonCode.MALFORMED_PACKET, "variable byte integer over 4 bytes")


def probe_packet(topic: str, level: int) -> bytes:
    """A QoS 0 PUBLISH that subscribers note as a probe and leave out of every count."""
    payload = _PAYLOAD.pack(PROBE_PUBLISHER, 0, monotonic_ns())
    head, tail = encode_publish_parts(topic, payload, 0, False, False, None, level)
    return head + tail


class MQTTClient(asyncio.Protocol):
    """A connection that frames what the broker sends and answers from the callback.

    Replies produced while reading one chunk are joined into one write.
    ``dropped`` tells a connection the broker closed from one the
    benchmark closed itself.
    """

    def __init__(self, client_id: str, level: int) -> None:
        self.client_id = client_id
        self.level = level
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.dropped = False
        self.error: str | None = None
        self.receive_maximum = 65535
        self._rest = b""
        self._out: list[bytes] = []
        self._decoder = Decoder(protocol_level=level)
        self._replies: list[Packet] = []
        self._waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- handshake -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        connect = Connect(self.client_id, protocol_level=self.level, keepalive=KEEPALIVE)
        self.transport.write(encode(connect, self.level))

    async def handshake(self) -> None:
        """Wait for the CONNACK; raise HandshakeError unless it accepts."""
        connack = await self._await_reply()
        if not isinstance(connack, Connack) or connack.reason_code:
            raise HandshakeError(f"{self.client_id}: CONNACK refused: {connack}")
        self.receive_maximum = connack.properties.get("receive_maximum", 65535)

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        assert self.transport is not None
        packet = Subscribe(1, [(topic_filter, SubscriptionOptions(qos=qos))])
        self.transport.write(encode(packet, self.level))
        suback = await self._await_reply()
        if not isinstance(suback, Suback) or suback.reason_codes[0] >= 0x80:
            raise HandshakeError(f"{self.client_id}: SUBSCRIBE {topic_filter!r} refused: {suback}")

    async def _await_reply(self) -> Packet:
        """The next CONNACK or SUBACK, which may have arrived before anyone asked."""
        while not self._replies:
            if self.lost.done():
                raise HandshakeError(self.error or f"{self.client_id}: connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.pop(0)

    def close(self) -> None:
        """DISCONNECT politely; the transport flushes it before closing."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.dropped = True
            if self.error is None:
                self.error = f"{self.client_id}: broker closed the connection ({exc or 'EOF'})"
        if not self.lost.done():
            self.lost.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        size = len(data)
        pos = 0
        try:
            while size - pos >= 2:
                b0 = data[pos]
                length = data[pos + 1]
                off = pos + 2
                if length >= 0x80:
                    length, off = read_varint(data, pos + 1, size)
                    if off < 0:
                        break
                end = off + length
                if end > size:
                    break
                kind = b0 >> 4
                if kind == _PUBLISH:
                    self._publish(b0, data, off, end)
                elif _PUBACK <= kind <= _PUBCOMP and length >= 2:
                    # v5 adds an optional reason code after the packet id.
                    self._ack(kind, data[off : off + 2], data[off + 2] if length > 2 else 0)
                else:
                    for packet in self._decoder.feed(data[pos:end]):
                        self._control(packet)
                pos = end
        except MQTTProtocolError as exc:
            self._fail(f"{self.client_id}: malformed packet from the broker: {exc}")
            return
        self._rest = data[pos:] if pos < size else b""
        if self._out:
            assert self.transport is not None
            self.transport.write(b"".join(self._out))
            self._out.clear()
        self._after_read()

    def _publish(self, b0: int, data: bytes, off: int, end: int) -> None:
        self._fail(f"{self.client_id}: unexpected PUBLISH")

    def _ack(self, kind: int, packet_id: bytes, code: int) -> None:
        self._fail(f"{self.client_id}: unexpected acknowledgement (type {kind})")

    def _after_read(self) -> None:
        """Hook run after each chunk, once the replies are written."""

    def _control(self, packet: Packet) -> None:
        if isinstance(packet, Connack | Suback):
            self._replies.append(packet)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
        elif isinstance(packet, Disconnect) and packet.reason_code >= 0x80:
            self.error = f"{self.client_id}: broker sent DISCONNECT 0x{packet.reason_code:02X}"
        # PINGRESP and a v5 DISCONNECT without error need nothing.

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        if self.transport is not None:
            self.transport.close()


class Publisher(MQTTClient):
    """Publishes ``count`` messages to one topic, within ``allowed`` and the QoS window.

    ``allowed`` is everything at once for a throughput run; a pacer raises
    it step by step for a fixed rate. ``on_done`` fires once every message
    is written (QoS 0) or acknowledged (QoS 1 and 2).

    A ``paced`` publisher stamps each message with the time the pacer
    released it, not the time it left: when a broker falls behind and the
    QoS window holds messages back, the wait counts as latency instead of
    silently lowering the rate (coordinated omission). Unpaced, and for a
    message written as soon as it is released, the stamp is the time of the
    write.
    """

    def __init__(
        self,
        client_id: str,
        level: int,
        index: int,
        topic: str,
        count: int,
        qos: int,
        payload: int,
        inflight: int,
        on_done: Callable[[], None],
    ) -> None:
        super().__init__(client_id, level)
        self.index = index
        self.count = count
        self.qos = qos
        self.sent = 0
        self.allowed = 0
        self.acked = 0
        self.rejected = 0
        self.inflight = 0
        self.window = inflight
        self.first_ns = 0
        self.done_ns = 0
        self._on_done = on_done
        self._next_id = 1
        self._paused = False
        self._scheduled = False
        self.paced = False
        # (sequence number not yet released, release time) per pacer step
        self._releases: deque[tuple[int, int]] = deque()
        head, tail = encode_publish_parts(topic, bytes(payload), qos, False, False, None, level)
        # The payload is the end of the tail; v5 puts the property length before it.
        props = tail[: len(tail) - payload]
        pad = payload - _PAYLOAD.size
        if qos:
            self._head = head
            self._props = props
            self._pack = struct.Struct(f">{len(head)}sH{len(props)}sIIQ{pad}x").pack
        else:
            self._head = head + props
            self._pack = struct.Struct(f">{len(head) + len(props)}sIIQ{pad}x").pack

    @property
    def finished(self) -> bool:
        return self.done_ns != 0

    def start(self, allowed: int) -> None:
        """Let the publisher send up to ``allowed`` messages in total, starting now."""
        self.window = min(self.window, self.receive_maximum)
        allowed = min(allowed, self.count)
        if self.paced and allowed > self.allowed:
            self._releases.append((allowed, monotonic_ns()))
        self.allowed = allowed
        self._pump()

    def _stamps(self, seq: int, n: int, now: int) -> Iterable[int]:
        """Send times to write into messages ``seq`` to ``seq + n - 1``."""
        if not self.paced:
            return repeat(now, n)
        releases = self._releases
        stamps = []
        for s in range(seq, seq + n):
            while releases[0][0] <= s:
                releases.popleft()
            stamps.append(releases[0][1])
        return stamps

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        if self._paused or self.closing or self.transport is None:
            return
        n = min(BATCH, self.allowed - self.sent)
        if self.qos:
            n = min(n, self.window - self.inflight)
        if n <= 0:
            return
        seq = self.sent
        index = self.index
        pack = self._pack
        head = self._head
        now = monotonic_ns()
        if self.qos:
            props = self._props
            packet_id = self._next_id
            parts = []
            for s, stamp in zip(range(seq, seq + n), self._stamps(seq, n, now), strict=True):
                parts.append(pack(head, packet_id, props, index, s, stamp))
                packet_id = packet_id + 1 if packet_id < 65535 else 1
            self._next_id = packet_id
            self.inflight += n
        elif self.paced:
            parts = [
                pack(head, index, s, stamp)
                for s, stamp in zip(range(seq, seq + n), self._stamps(seq, n, now), strict=True)
            ]
        else:
            # The throughput path, one struct call per message: it sets the ceiling.
            parts = [pack(head, index, s, now) for s in range(seq, seq + n)]
        self.transport.write(b"".join(parts))
        if not self.first_ns:
            self.first_ns = now
        self.sent += n
        if not self.qos and self.sent == self.count:
            self._finish()
        elif self.sent < self.allowed:
            self._schedule()

    def _ack(self, kind: int, packet_id: bytes, code: int) -> None:
        if kind == _PUBREC and self.qos == 2:
            if code >= 0x80:
                self._settle(rejected=True)
            else:
                self._out.append(b"\x62\x02" + packet_id)
        elif (kind == _PUBACK and self.qos == 1) or (kind == _PUBCOMP and self.qos == 2):
            self._settle(rejected=code >= 0x80)
        else:
            super()._ack(kind, packet_id, code)

    def _settle(self, rejected: bool) -> None:
        self.inflight -= 1
        if rejected:
            self.rejected += 1
        else:
            self.acked += 1
        if self.acked + self.rejected == self.count:
            self._finish()

    def _after_read(self) -> None:
        if self.sent < self.allowed:
            self._schedule()

    def _finish(self) -> None:
        self.done_ns = monotonic_ns()
        self._on_done()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule()


class Subscriber(MQTTClient):
    """Receives from known publishers and checks every message off.

    For each publisher it expects ``count`` sequence numbers: a bytearray of
    marks finds duplicates, the highest sequence seen so far finds messages
    that arrive after a later one (out of order). What never arrives is
    lost. ``last_ns`` is when the chunk holding the newest new message
    arrived; latencies use that same arrival time. ``probed_ns`` is when
    the first route probe arrived; probes are counted nowhere else.
    """

    def __init__(
        self,
        client_id: str,
        level: int,
        index: int,
        sources: dict[int, int],
        latencies: array[int] | None,
        on_done: Callable[[], None],
    ) -> None:
        super().__init__(client_id, level)
        self.index = index
        self.sources = sources
        self.marks = {pub: bytearray(count) for pub, count in sources.items()}
        self.highest = dict.fromkeys(sources, -1)
        self.duplicates = dict.fromkeys(sources, 0)
        self.out_of_order = dict.fromkeys(sources, 0)
        self.expected = sum(sources.values())
        self.unique = 0
        self.unexpected = 0
        self.last_ns = 0
        self.probed_ns = 0
        self._now = 0
        self._latencies = latencies
        self._on_done = on_done

    @property
    def finished(self) -> bool:
        return self.unique == self.expected

    def received(self, pub: int) -> int:
        """Distinct messages from publisher ``pub``: counted from the marks, not per message."""
        return self.marks[pub].count(1)

    def data_received(self, data: bytes) -> None:
        self._now = monotonic_ns()
        super().data_received(data)

    def _publish(self, b0: int, data: bytes, off: int, end: int) -> None:
        pos = off + 2 + ((data[off] << 8) | data[off + 1])
        qos = (b0 >> 1) & 0x03
        if qos:
            self._out.append(_REPLY_TO[qos] + data[pos : pos + 2])
            pos += 2
        if self.level == 5:
            length = data[pos]
            if length < 0x80:
                pos += 1 + length
            else:
                length, pos = read_varint(data, pos, end)
                pos = pos + length if pos >= 0 else end
        if end - pos < _PAYLOAD.size:
            self.unexpected += 1
            return
        pub, seq, sent = _PAYLOAD.unpack_from(data, pos)
        marks = self.marks.get(pub)
        if marks is None or seq >= len(marks):
            if pub == PROBE_PUBLISHER:
                self.probed_ns = self.probed_ns or self._now
            else:
                self.unexpected += 1
            return
        if marks[seq]:
            self.duplicates[pub] += 1
            return
        marks[seq] = 1
        if seq < self.highest[pub]:
            self.out_of_order[pub] += 1
        else:
            self.highest[pub] = seq
        self.last_ns = now = self._now
        if self._latencies is not None:
            self._latencies.append(now - sent)
        self.unique += 1
        if self.unique == self.expected:
            self._on_done()

    def _ack(self, kind: int, packet_id: bytes, code: int) -> None:
        if kind == _PUBREL:
            self._out.append(b"\x70\x02" + packet_id)
        else:
            super()._ack(kind, packet_id, code)
