"""A stand-in broker that costs next to nothing, for measuring the generator itself.

It answers CONNECT, SUBSCRIBE and PINGREQ through the project codec and
remembers which connections subscribed to which exact topic. When a
connection sends its first PUBLISH, the sink reads the topic and from then on
relays that connection's raw bytes to the subscribers of the topic, unparsed:
the publishers' QoS 0 PUBLISH packets are already what the subscribers
expect to receive. The whole message path of the generator (rendering,
writing, framing, parsing, checking) is exercised while the "broker" only
copies buffers. When a subscriber's transport is full, the publishers
feeding it stop being read, so a slow subscriber throttles its publishers
as a real broker would instead of piling data up in the sink.
"""

from __future__ import annotations

import asyncio
from typing import cast

from raftmq.cluster.tools.bench.client import read_varint
from raftmq.node.codec import Decoder, encode
from raftmq.node.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Suback,
    Subscribe,
)
from raftmq.node.wire import MQTTProtocolError

_PUBLISH = 3


class Sink:
    """The server: exact-topic routes from topic to subscribed connections."""

    def __init__(self) -> None:
        self.routes: dict[str, list[_SinkConnection]] = {}
        self.connections: set[_SinkConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free loopback port and return it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _SinkConnection(self), "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                assert connection.transport is not None
                connection.transport.abort()
            await self._server.wait_closed()


class _SinkConnection(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder()
        self.level = 4
        self.rest = b""
        # Set once relaying: where this connection's bytes go.
        self.targets: list[_SinkConnection] | None = None
        # Relaying connections writing into this one, throttled when it is full.
        self.sources: list[_SinkConnection] = []
        self.full = False
        self.blocked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.sink.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.targets is not None:
            for target in self.targets:
                assert target.transport is not None
                target.transport.write(data)
            return
        if self.rest:
            data = self.rest + data
        pos = 0
        size = len(data)
        try:
            while size - pos >= 2:
                length, off = read_varint(data, pos + 1, size)
                if off < 0 or off + length > size:
                    break
                if data[pos] >> 4 == _PUBLISH:
                    topic_end = off + 2 + ((data[off] << 8) | data[off + 1])
                    self._start_relay(str(data[off + 2 : topic_end], "utf-8"), data[pos:])
                    return
                for packet in self.decoder.feed(data[pos : off + length]):
                    self._answer(packet)
                pos = off + length
        except MQTTProtocolError:
            assert self.transport is not None
            self.transport.close()
            return
        self.rest = data[pos:]

    def _start_relay(self, topic: str, data: bytes) -> None:
        """Send this connection's bytes, from its first PUBLISH on, to the topic's subscribers."""
        # The route's own list: a subscriber that goes away leaves it, and the relay with it.
        self.targets = self.sink.routes.get(topic, [])
        for target in self.targets:
            target.sources.append(self)
            if target.full:
                self.block()
        self.data_received(data)

    def _answer(self, packet: object) -> None:
        assert self.transport is not None
        if isinstance(packet, Connect):
            self.level = packet.protocol_level
            self.transport.write(encode(Connack(), self.level))
        elif isinstance(packet, Subscribe):
            for topic_filter, _ in packet.subscriptions:
                self.sink.routes.setdefault(topic_filter, []).append(self)
            granted = [0] * len(packet.subscriptions)
            self.transport.write(encode(Suback(packet.packet_id, granted), self.level))
        elif isinstance(packet, Pingreq):
            self.transport.write(encode(Pingresp(), self.level))
        elif isinstance(packet, Disconnect):
            self.transport.close()

    def block(self) -> None:
        self.blocked += 1
        if self.blocked == 1 and self.transport is not None:
            self.transport.pause_reading()

    def unblock(self) -> None:
        self.blocked -= 1
        if self.blocked == 0 and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.full = True
        for source in self.sources:
            source.block()

    def resume_writing(self) -> None:
        self.full = False
        for source in self.sources:
            source.unblock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.connections.discard(self)
        if self.full:
            self.resume_writing()
        for targets in self.sink.routes.values():
            if self in targets:
                targets.remove(self)
        for target in self.targets or ():
            target.sources.remove(self)
