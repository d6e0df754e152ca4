"""MQTT over WebSocket (path /mqtt, subprotocol "mqtt") and its bridge to plain TCP.

Browsers reach the broker this way, so a WebSocket client and a TCP client must
share one topic space. WebSocket frames and MQTT packets are independent
framings: a packet may span frames and a frame may hold several packets, which
is checked with the ``websockets`` library because paho always sends one
packet per frame.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

import pytest
import websockets
from clients import ClientPool, unique

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0
# Over 65535 bytes a WebSocket frame needs the 64-bit length form. (Mosquitto 2.0.11
# silently drops WebSocket deliveries from about 128 kB on, so larger is not portable.)
PAYLOADS = [pytest.param(b"small", id="small"), pytest.param(bytes(100_000), id="100kB")]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("qos", [1, 2])
def test_websocket_publisher_reaches_tcp_subscriber(
    broker: RunningBroker, clients: ClientPool, qos: int, payload: bytes
) -> None:
    """A message that came in over WebSocket is routed like any other."""
    topic = unique("ws-to-tcp")
    tcp = clients.connect(broker, subscribe=topic, qos=2)
    ws = clients.connect(broker, transport="websockets")
    ws.publish(topic, payload, qos=qos)
    msg = tcp.get()
    assert (msg.topic, msg.payload, msg.qos) == (topic, payload, qos)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("qos", [1, 2])
def test_tcp_publisher_reaches_websocket_subscriber(
    broker: RunningBroker, clients: ClientPool, qos: int, payload: bytes
) -> None:
    """The broker's WebSocket writer frames outgoing packets correctly, large ones included."""
    topic = unique("tcp-to-ws")
    ws = clients.connect(broker, transport="websockets", subscribe=topic, qos=2)
    tcp = clients.connect(broker)
    tcp.publish(topic, payload, qos=qos)
    msg = ws.get()
    assert (msg.topic, msg.payload, msg.qos) == (topic, payload, qos)


def test_retained_messages_cross_transports(broker: RunningBroker, clients: ClientPool) -> None:
    """Retained state is one store, whichever listener the message came in on."""
    from_tcp, from_ws = unique("retained-tcp"), unique("retained-ws")
    clients.connect(broker).publish(from_tcp, b"set over tcp", qos=1, retain=True)
    clients.connect(broker, transport="websockets").publish(
        from_ws, b"set over ws", qos=1, retain=True
    )
    ws_msg = clients.connect(broker, transport="websockets", subscribe=from_tcp, qos=1).get()
    tcp_msg = clients.connect(broker, subscribe=from_ws, qos=1).get()
    assert (ws_msg.topic, ws_msg.payload, ws_msg.retain) == (from_tcp, b"set over tcp", True)
    assert (tcp_msg.topic, tcp_msg.payload, tcp_msg.retain) == (from_ws, b"set over ws", True)


def _connect_packet(client_id: str) -> bytes:
    encoded_id = client_id.encode()
    body = (
        b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(encoded_id)) + encoded_id
    )  # 3.1.1, clean session, keepalive 60
    return bytes([0x10, len(body)]) + body


async def _read(ws: websockets.ClientConnection, size: int) -> bytes:
    """Exactly ``size`` bytes of the MQTT stream, however the broker framed them."""
    data = b""
    while len(data) < size:
        frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(frame, bytes), f"MQTT over WebSocket must use binary frames: {frame!r}"
        data += frame
    return data


async def test_subprotocol_and_packets_split_or_coalesced_across_frames(
    broker: RunningBroker,
) -> None:
    """MQTT-6.0.0-2/-3: the stream is independent of frame boundaries; "mqtt" is negotiated."""
    url = f"ws://{broker.host}:{broker.ws_port}/mqtt"
    async with websockets.connect(url, subprotocols=["mqtt"], open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == "mqtt"
        connect = _connect_packet(unique("ws-raw"))
        await ws.send(connect[:5])
        await ws.send(connect[5:])
        assert await _read(ws, 4) == b"\x20\x02\x00\x00"
        await ws.send(b"\xc0\x00\xc0\x00")  # two PINGREQs in one frame
        assert await _read(ws, 4) == b"\xd0\x00\xd0\x00"
