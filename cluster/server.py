"""The node's gRPC port: one server for every service the node offers its peers and
its operators (the forwarding stream, the admin service).

The assembly owns it (``assemble.py``) and registers each service on it
before it starts, so neither service owns the port the other is served on.
"""

from __future__ import annotations

import grpc
from grpc import aio

from .rpc import common_options
from .tls import NodeTLS


class GrpcServer:
    """Serves what is registered with ``serve`` on ``listen`` ("host:port"), with node
    TLS when given."""

    def __init__(self, listen: str, *, tls: NodeTLS | None = None, keepalive: float = 10.0) -> None:
        self.listen = listen
        self.port: int | None = None
        """The bound port once started (useful with port 0)."""
        self._services: list[grpc.GenericRpcHandler] = []
        self._tls = tls
        self._keepalive = keepalive
        self._server: aio.Server | None = None

    def serve(self, service: grpc.GenericRpcHandler) -> None:
        """Serve ``service`` too; before ``start``."""
        if self._server is not None:
            raise RuntimeError(f"{self.listen}: a service registered after the server started")
        self._services.append(service)

    async def start(self) -> None:
        server = aio.server(options=common_options(self._keepalive))
        server.add_generic_rpc_handlers(tuple(self._services))
        if self._tls is not None:
            port = server.add_secure_port(self.listen, self._tls.server_credentials())
        else:
            port = server.add_insecure_port(self.listen)
        if not port:
            raise OSError(f"forwarding: cannot listen on {self.listen!r}")
        self.port = port
        self._server = server
        await server.start()

    async def stop(self) -> None:
        """Stop at once: calls in progress are cancelled."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
