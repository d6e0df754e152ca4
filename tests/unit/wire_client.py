"""A minimal asyncio MQTT 5 client for in-process broker tests, using the project's codec.

Unit tests that drive a ``Broker`` in their own event loop talk to it with
this; the integration tests use real client libraries and ``rawmqtt``.
"""

from __future__ import annotations

import asyncio

from raftmq.node.codec import Decoder, encode
from raftmq.node.packets import Connack, Connect, Packet


class Client:
    """A minimal MQTT client over a real socket, using the project's codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = Decoder(protocol_level=5)
        self.pending: list[Packet] = []

    @classmethod
    async def connect(cls, port: int, client_id: str, **kw: object) -> tuple[Client, Connack]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.send(Connect(client_id, protocol_level=5, **kw))  # type: ignore[arg-type]
        connack = await client.receive()
        assert isinstance(connack, Connack)
        return client, connack

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet, 5))

    async def receive(self, timeout: float = 5.0) -> Packet:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by broker")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
