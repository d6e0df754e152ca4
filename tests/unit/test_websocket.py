"""WebSocketServerProtocol against a real websockets client over loopback sockets.

Every scenario is a fixture-free coroutine so that it runs twice: on the default asyncio
loop through pytest-asyncio, and on uvloop (what the broker runs in production), whose
transports differ in the details this adapter leans on (writelines, write_eof, abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, PayloadTooBig, ProtocolError

from raftmq.node.websocket import WebSocketServerProtocol

pytestmark = pytest.mark.timeout(10)

WAIT = 5.0
UPGRADE_HEADERS = (
    b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Echo(asyncio.Protocol):
    """Stands in for the MQTT handler: echoes every read and records what it was told."""

    def __init__(self) -> None:
        self.transport = cast(asyncio.Transport, None)
        self.received = bytearray()
        self.lost: list[Exception | None] = []
        self.gone = asyncio.Event()
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.gone.set()

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1


class Flood(Echo):
    """Writes 64 KiB messages until the TCP transport pushes back."""

    sent = 0
    buffered_at_pause = 0

    def data_received(self, data: bytes) -> None:
        chunk = bytes(65536)
        while not self.pauses and self.sent < 2000:
            self.transport.write(chunk)
            self.sent += 1

    def pause_writing(self) -> None:
        super().pause_writing()
        self.buffered_at_pause = self.transport.get_write_buffer_size()


class Server:
    """A listening WebSocketServerProtocol plus the inner protocols it created."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inners: list[Echo] = []

    def url(self, path: str = "/mqtt") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def inner(self) -> Echo:
        (inner,) = self.inners
        return inner


@contextlib.asynccontextmanager
async def serve(inner: type[Echo] = Echo, **options: Any) -> AsyncIterator[Server]:
    server = Server(0)

    def make_inner() -> Echo:
        server.inners.append(inner())
        return server.inners[-1]

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: WebSocketServerProtocol(make_inner, **options), "127.0.0.1", 0
    )
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def client(server: Server, path: str = "/mqtt", **options: Any) -> connect:
    options.setdefault("subprotocols", ["mqtt"])
    return connect(server.url(path), open_timeout=WAIT, close_timeout=WAIT, **options)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


async def raw_http(server: Server, request: bytes) -> bytes:
    """Send bytes on a bare socket and return everything until the server's EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def recv_bytes(ws: ClientConnection) -> bytes:
    async with asyncio.timeout(WAIT):
        message = await ws.recv()
    assert isinstance(message, bytes)
    return message


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["mqtt"], "mqtt"), (["mqttv3.1"], "mqttv3.1"), (["mqttv3.1", "mqtt"], "mqtt"), (None, None)],
)
async def test_negotiates_mqtt_subprotocol_or_none(
    offered: list[str] | None, chosen: str | None
) -> None:
    async with serve() as server, client(server, subprotocols=offered) as ws:
        assert ws.subprotocol == chosen
        await ws.send(b"\xc0\x00")
        assert await recv_bytes(ws) == b"\xc0\x00"


async def test_binary_round_trip_and_tcp_extra_info() -> None:
    async with serve() as server, client(server) as ws:
        await ws.send(b"\x10\x0cpayload here")
        assert await recv_bytes(ws) == b"\x10\x0cpayload here"
        transport = server.inner.transport
        assert transport.get_extra_info("peername") == ws.local_address
        assert transport.get_extra_info("sockname") == ws.remote_address
        assert transport.get_extra_info("no such thing", "dflt") == "dflt"
        assert transport.get_write_buffer_size() == 0
        assert not transport.is_closing()


async def test_writelines_sends_one_message() -> None:
    async with serve() as server, client(server) as ws:
        server.inner.transport.writelines([b"\x30", b"\x03", b"\x00\x01t"])
        server.inner.transport.writelines(iter([memoryview(b"x" * 200), bytearray(70000)]))
        assert await recv_bytes(ws) == b"\x30\x03\x00\x01t"
        assert await recv_bytes(ws) == b"x" * 200 + bytes(70000)


async def test_message_at_the_size_limit_round_trips() -> None:
    payload = bytes(range(256)) * 4096
    assert len(payload) == 1_048_576
    async with serve() as server, client(server, max_size=None) as ws:
        await ws.send(payload)
        assert await recv_bytes(ws) == payload


async def test_message_over_the_limit_closes_with_1009() -> None:
    async with serve(max_message_size=4096) as server, client(server) as ws:
        await ws.send(bytes(4096))
        assert await recv_bytes(ws) == bytes(4096)
        # Fragmented, so the limit must hold for the message rather than each frame.
        await ws.send([bytes(4000), bytes(97)])
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_bytes(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        await asyncio.wait_for(server.inner.gone.wait(), WAIT)
        assert len(server.inner.lost) == 1
        assert isinstance(server.inner.lost[0], PayloadTooBig)
        # MQTT over WebSocket is a byte stream: fragments are passed on as they arrive.
        assert server.inner.received == bytes(4096 + 4000)


async def test_text_frame_closes_with_1003() -> None:
    async with serve() as server, client(server) as ws:
        await ws.send("\x10\x00")
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_bytes(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1003
        await asyncio.wait_for(server.inner.gone.wait(), WAIT)
        assert len(server.inner.lost) == 1
        assert isinstance(server.inner.lost[0], ProtocolError)
        assert server.inner.received == b""


async def test_wrong_path_gets_404_and_no_inner_protocol() -> None:
    async with serve() as server:
        response = await raw_http(server, b"GET /other HTTP/1.1\r\n" + UPGRADE_HEADERS)
        assert response.startswith(b"HTTP/1.1 404 ")
        assert server.inners == []


async def test_path_ignores_query_and_empty_path_accepts_any() -> None:
    async with serve() as server, client(server, "/mqtt?client=1") as ws:
        assert ws.subprotocol == "mqtt"
    async with serve(path="") as server, client(server, "/anything/at/all") as ws:
        await ws.send(b"\xc0\x00")
        assert await recv_bytes(ws) == b"\xc0\x00"


async def test_request_without_upgrade_is_rejected() -> None:
    async with serve() as server:
        response = await raw_http(server, b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert response.startswith((b"HTTP/1.1 426 ", b"HTTP/1.1 400 "))
        assert server.inners == []


async def test_silent_socket_is_closed_after_handshake_timeout() -> None:
    async with serve(handshake_timeout=0.2) as server:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(WAIT):
                assert await reader.read() == b""
        assert 0.15 < time.monotonic() - started < 2.0
        writer.close()
        assert server.inners == []


async def test_client_close_reports_connection_lost_once() -> None:
    async with serve() as server:
        async with client(server) as ws:
            await ws.send(b"\xe0\x00")
            assert await recv_bytes(ws) == b"\xe0\x00"
        assert ws.close_code == 1000
        await asyncio.wait_for(server.inner.gone.wait(), WAIT)
        await asyncio.sleep(0.05)
        assert server.inner.lost == [None]


async def test_server_close_sends_1000_and_reports_connection_lost_once() -> None:
    async with serve() as server, client(server) as ws:
        transport = server.inner.transport
        transport.write(b"\x20\x02\x00\x00")
        transport.close()
        assert transport.is_closing()
        transport.write(b"dropped")
        transport.close()
        # Data written before close() still arrives, ahead of the close frame.
        assert await recv_bytes(ws) == b"\x20\x02\x00\x00"
        await asyncio.wait_for(ws.wait_closed(), WAIT)
        assert ws.close_code == 1000
        await asyncio.wait_for(server.inner.gone.wait(), WAIT)
        await asyncio.sleep(0.05)
        assert server.inner.lost == [None]


async def test_abort_drops_tcp_and_reports_connection_lost_once() -> None:
    async with serve() as server, client(server) as ws:
        server.inner.transport.abort()
        server.inner.transport.write(b"dropped")
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_bytes(ws)
        assert closed.value.rcvd is None
        await asyncio.wait_for(server.inner.gone.wait(), WAIT)
        await asyncio.sleep(0.05)
        assert server.inner.lost == [None]


async def test_bytes_split_across_frames_and_messages_arrive_in_order() -> None:
    # One PUBLISH cut across a fragmented message, then a message holding two packets.
    publish = b"\x30\x0b\x00\x05topicpayl"
    assert len(publish) == 13
    async with serve() as server, client(server) as ws:
        await ws.send([publish[:1], publish[1:2], publish[2:9], publish[9:]])
        await ws.send(b"\xc0\x00\xc0\x00")
        for size in (1, 3, 5, 7):
            await ws.send(bytes([size]) * size)
        expected = publish + b"\xc0\x00\xc0\x00" + b"\x01\x03\x03\x03" + b"\x05" * 5 + b"\x07" * 7
        await until(lambda: len(server.inner.received) >= len(expected))
        assert server.inner.received == expected
        echoed = b""
        while len(echoed) < len(expected):
            echoed += await recv_bytes(ws)
        assert echoed == expected


async def test_pings_are_answered() -> None:
    async with serve() as server, client(server) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, WAIT)
        await ws.send(b"\xc0\x00")
        assert await recv_bytes(ws) == b"\xc0\x00"
        assert server.inner.received == b"\xc0\x00"


async def test_pause_and_resume_reading_reach_tcp() -> None:
    async with serve() as server, client(server) as ws:
        server.inner.transport.pause_reading()
        await ws.send(b"\xc0\x00")
        await asyncio.sleep(0.1)
        assert server.inner.received == b""
        server.inner.transport.resume_reading()
        assert await recv_bytes(ws) == b"\xc0\x00"


async def test_tcp_flow_control_reaches_the_inner_protocol() -> None:
    async with serve(Flood) as server, client(server) as ws:
        # The client stops reading once its queue is full, so TCP buffers fill up.
        await ws.send(b"go")
        await until(lambda: server.inner.pauses == 1)
        flood = cast(Flood, server.inner)
        assert 0 < flood.sent < 2000
        assert flood.buffered_at_pause > 65536
        for _ in range(flood.sent):
            assert len(await recv_bytes(ws)) == 65536
        assert (flood.pauses, flood.resumes) == (1, 1)


SCENARIOS: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_binary_round_trip_and_tcp_extra_info,
    test_writelines_sends_one_message,
    test_message_at_the_size_limit_round_trips,
    test_message_over_the_limit_closes_with_1009,
    test_text_frame_closes_with_1003,
    test_wrong_path_gets_404_and_no_inner_protocol,
    test_path_ignores_query_and_empty_path_accepts_any,
    test_request_without_upgrade_is_rejected,
    test_silent_socket_is_closed_after_handshake_timeout,
    test_client_close_reports_connection_lost_once,
    test_server_close_sends_1000_and_reports_connection_lost_once,
    test_abort_drops_tcp_and_reports_connection_lost_once,
    test_bytes_split_across_frames_and_messages_arrive_in_order,
    test_pings_are_answered,
    test_pause_and_resume_reading_reach_tcp,
    test_tcp_flow_control_reaches_the_inner_protocol,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__[5:])
def test_under_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
