"""Opening the sockets a node listens on, one function per transport kind."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .config import ListenAddress
from .connection import MQTTConnection
from .websocket import WebSocketServerProtocol

if TYPE_CHECKING:
    from .broker import Broker


async def open_listener(broker: Broker, address: ListenAddress) -> tuple[asyncio.Server, str]:
    """Bind ``address`` and return the server with the URL it really got (port 0 resolved)."""
    loop = asyncio.get_running_loop()
    if address.scheme == "tcp":
        server = await loop.create_server(
            lambda: MQTTConnection(broker, address.scheme),
            address.host,
            address.port,
            reuse_address=True,
            backlog=4096,
        )
    elif address.scheme == "ws":
        # A WebSocket message may carry several MQTT packets, so the message limit
        # is generous; the MQTT decoder enforces max_packet_size per packet.
        max_size = 4 * broker.config.max_packet_size
        server = await loop.create_server(
            lambda: WebSocketServerProtocol(
                lambda: MQTTConnection(broker, address.scheme),
                path=address.path,
                max_message_size=max_size,
            ),
            address.host,
            address.port,
            reuse_address=True,
            backlog=4096,
        )
    else:
        raise ValueError(f"listener {address.url()}: unsupported scheme {address.scheme!r}")
    port = server.sockets[0].getsockname()[1]
    bound = ListenAddress(address.scheme, address.host, port, address.path)
    return server, bound.url()
