"""MQTT over WebSocket as an asyncio.Protocol adapter around the plain MQTT protocol.

The broker's connection handler is written against a byte-stream transport. Rather than
teach it about WebSocket, this module sits between the TCP transport and that handler:
the handshake, frame parsing and control frames are left to the sans-I/O layer of the
``websockets`` library, and the handler gets a transport whose bytes happen to travel in
binary WebSocket messages. Keeping everything as Protocols (no streams, no tasks) keeps
the per-message cost close to plain TCP and lets the broker treat every listener alike.
"""

from __future__ import annotations

import asyncio
import http
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from websockets.exceptions import ProtocolError
from websockets.frames import OP_BINARY, OP_CONT, OP_TEXT, CloseCode, Frame
from websockets.http11 import Request
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

__all__ = ["WebSocketServerProtocol"]

_Buffer = bytes | bytearray | memoryview

# In server preference order: "mqtt" is MQTT 3.1.1 and 5.0, "mqttv3.1" what 3.1 clients send.
_SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))

# FIN + binary opcode. Outgoing frames are built here instead of with send_binary(): a
# server never masks and no extension is ever negotiated (none is offered to the library),
# so the header is all there is to it, and skipping Frame/BytesIO saves two copies of the
# payload and about 2 us per message, which matters when one PUBLISH fans out to thousands.
_FIN_BINARY = 0x82
_SHORT_HEADERS = tuple(bytes((_FIN_BINARY, n)) for n in range(126))
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")


def _frame_header(length: int) -> bytes:
    """Header of an unmasked, unfragmented binary frame carrying ``length`` bytes."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return _MEDIUM_HEADER.pack(_FIN_BINARY, 126, length)
    return _LONG_HEADER.pack(_FIN_BINARY, 127, length)


def _select_subprotocol(ws: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Prefer an MQTT subprotocol but, like Mosquitto, accept clients that offer none.

    The library's default would answer 400 to a client offering no subprotocol we list.
    """
    for name in _SUBPROTOCOLS:
        if name in offered:
            return name
    return None


class _WebSocketTransport(asyncio.Transport):
    """The transport the inner protocol sees: one ``write`` is one binary message.

    Sending one message per call keeps MQTT packets whole on the wire when the inner
    protocol writes a packet at a time, which is friendlier to browser clients that
    (incorrectly) assume one packet per message.
    """

    __slots__ = ("_closing", "_owner", "_tcp", "_ws")

    def __init__(
        self, owner: WebSocketServerProtocol, tcp: asyncio.Transport, ws: ServerProtocol
    ) -> None:
        super().__init__()
        self._owner = owner
        self._tcp = tcp
        self._ws = ws
        # Set by close()/abort() and when the TCP connection is gone: from then on writes
        # are dropped, as the RFC forbids data frames after a close frame and the TCP
        # transport would log a warning for every write after abort().
        self._closing = False

    def write(self, data: _Buffer) -> None:
        length = len(data)
        if length and not self._closing and self._ws.state is OPEN:
            self._tcp.writelines((_frame_header(length), data))

    def writelines(self, list_of_data: Iterable[_Buffer]) -> None:
        """Frame all chunks as one message without joining them (uvloop uses writev)."""
        chunks = list(list_of_data)
        length = sum(map(len, chunks))
        if length and not self._closing and self._ws.state is OPEN:
            chunks.insert(0, _frame_header(length))
            self._tcp.writelines(chunks)

    def close(self) -> None:
        """Start the WebSocket closing handshake; the TCP close follows the peer's reply."""
        if not self._closing:
            self._closing = True
            self._owner._start_closing()

    def abort(self) -> None:
        self._closing = True
        self._tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._ws.state is not OPEN

    def can_write_eof(self) -> bool:
        """No: close() already half-closes, through the WebSocket closing handshake.

        After our close frame the connection reads on (and drops the peer's
        data) until the peer's close frame or EOF, bounded by handshake_timeout
        (``_flush``), so the MQTT driver's own lingering has no part here.
        """
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tcp.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._tcp.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size()


class WebSocketServerProtocol(asyncio.Protocol):
    """Wraps an inner MQTT protocol: does the HTTP upgrade, then unwraps binary frames into
    inner.data_received and wraps inner writes into binary frames.

    ``handshake_timeout`` bounds both the opening handshake (silent or slow clients would
    otherwise hold a socket forever) and the closing one (a peer that never answers our
    close frame, or never closes TCP after we half-closed, is aborted).
    """

    def __init__(
        self,
        inner_factory: Callable[[], asyncio.Protocol],
        *,
        path: str = "/mqtt",
        max_message_size: int = 1_048_576,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._inner_factory = inner_factory
        self._path = path
        self._handshake_timeout = handshake_timeout
        self._ws = ServerProtocol(select_subprotocol=_select_subprotocol, max_size=max_message_size)
        self._tcp: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._adapter: _WebSocketTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Set when we fail the WebSocket ourselves; the library's own failures are in
        # parser_exc. Either is reported to inner.connection_lost if TCP closed cleanly.
        self._error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = tcp = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, tcp.abort)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        # Coalesce the payloads of one TCP read into one inner.data_received call, so the
        # inner protocol sees the same call pattern (and pause_reading granularity) as on
        # plain TCP, and pays one Python call per read rather than per frame.
        chunks: list[_Buffer] = []
        for event in ws.events_received():
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is OP_BINARY or opcode is OP_CONT:
                    chunks.append(event.data)
                elif opcode is OP_TEXT and ws.state is OPEN:
                    self._error = ProtocolError("MQTT over WebSocket requires binary frames")
                    ws.fail(CloseCode.UNSUPPORTED_DATA, "binary frames only")
                    break
            elif isinstance(event, Request):
                self._handshake(event)
        # Before delivery, so pongs and close replies are not delayed by the inner protocol
        # and always precede anything it writes in response.
        self._flush()
        adapter = self._adapter
        # Data that arrived ahead of a close frame is still delivered: it is typically the
        # client's DISCONNECT, and dropping it would wrongly publish the client's will.
        if chunks and adapter is not None and not adapter._closing:
            assert self._inner is not None
            self._inner.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def eof_received(self) -> None:
        """Let the TCP transport close: WebSocket has no use for a half-open connection."""
        self._ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        inner, self._inner = self._inner, None
        if inner is not None:
            assert self._adapter is not None
            self._adapter._closing = True
            if exc is None:
                # EOFError only means TCP closed without a close frame: for MQTT that is
                # an ordinary disconnect, reported as None like a plain TCP FIN.
                error = self._error or self._ws.parser_exc
                exc = None if isinstance(error, EOFError) else error
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _start_closing(self) -> None:
        """Send close 1000 on the inner protocol's behalf (see _WebSocketTransport.close)."""
        if self._ws.state is OPEN:
            self._ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        if self._path and request.path.partition("?")[0] != self._path:
            response = ws.reject(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        else:
            # 426 for requests that are not an upgrade, 400 for malformed upgrades.
            response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            # The handshake timer stays armed: it reaps clients that ignore our EOF.
            return
        assert self._tcp is not None and self._timer is not None
        self._timer.cancel()
        self._timer = None
        self._flush()
        self._adapter = _WebSocketTransport(self, self._tcp, ws)
        self._inner = self._inner_factory()
        self._inner.connection_made(self._adapter)

    def _flush(self) -> None:
        """Write what the library queued; it must run after every call into the library."""
        tcp = self._tcp
        assert tcp is not None
        ws = self._ws
        writes = ws.data_to_send()
        if tcp.is_closing():
            return
        for data in writes:
            if data:
                tcp.write(data)
            elif tcp.can_write_eof():
                # Half-close and keep reading (the library discards) until the peer
                # closes: closing outright with unread input would send RST and could
                # destroy the close frame we just wrote.
                tcp.write_eof()
            else:
                tcp.close()
        if self._timer is None and ws.close_expected():
            self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, tcp.abort)
