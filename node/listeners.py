"""Opening the sockets a node listens on, one function per transport kind."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from .config import Config, ListenAddress
from .connection import ClientHandler, MQTTConnection
from .websocket import WebSocketServerProtocol


async def open_listener(
    node: ClientHandler, config: Config, tls_context: ssl.SSLContext | None, address: ListenAddress
) -> tuple[asyncio.Server, str]:
    """Bind ``address`` and return the server with the URL it really got (port 0 resolved).

    mqtts:// and wss:// are tcp:// and ws:// with the node's TLS context; the
    handshake must finish within connect_timeout, like CONNECT itself.
    """
    loop = asyncio.get_running_loop()
    tls: dict[str, Any] = {}
    if address.is_tls:
        if tls_context is None:
            raise ValueError(f"listener {address.url()}: no TLS context (tls_cert and tls_key)")
        tls = {"ssl": tls_context, "ssl_handshake_timeout": config.connect_timeout}
    if address.scheme in ("tcp", "mqtts"):
        server = await loop.create_server(
            lambda: MQTTConnection(node, config, address.scheme),
            address.host,
            address.port,
            reuse_address=True,
            backlog=4096,
            **tls,
        )
    elif address.scheme in ("ws", "wss"):
        # The WebSocket layer buffers a whole frame before the MQTT decoder sees
        # it, so its limit is what bounds a WebSocket client's read buffer: the
        # same max_packet_size as on TCP. A client may still split or batch
        # packets across messages; only one message above the limit is refused.
        # The opening handshake gets connect_timeout, like CONNECT after it.
        server = await loop.create_server(
            lambda: WebSocketServerProtocol(
                lambda: MQTTConnection(node, config, address.scheme),
                path=address.path,
                max_message_size=config.max_packet_size,
                handshake_timeout=config.connect_timeout,
            ),
            address.host,
            address.port,
            reuse_address=True,
            backlog=4096,
            **tls,
        )
    else:
        raise ValueError(f"listener {address.url()}: unsupported scheme {address.scheme!r}")
    port = server.sockets[0].getsockname()[1]
    bound = ListenAddress(address.scheme, address.host, port, address.path)
    return server, bound.url()
