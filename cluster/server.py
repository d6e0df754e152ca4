"""The node's gRPC port: one server for every service the node offers its peers and
its operators (the forwarding stream, the admin service).

The assembly owns it (``assemble.py``): each service is registered on it
before it starts, and neither service owns the port the other is served on.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc import aio

from .rpc import common_options
from .tls import NodeTLS


class GrpcServer:
    """Serves ``services`` on ``listen`` ("host:port"), with node TLS when given."""

    def __init__(
        self,
        listen: str,
        services: Sequence[grpc.GenericRpcHandler],
        *,
        tls: NodeTLS | None = None,
        keepalive: float = 10.0,
    ) -> None:
        self.listen = listen
        self.port: int | None = None
        """The bound port once started (useful with port 0)."""
        self._services = tuple(services)
        self._tls = tls
        self._keepalive = keepalive
        self._server: aio.Server | None = None

    async def start(self) -> None:
        server = aio.server(options=common_options(self._keepalive))
        server.add_generic_rpc_handlers(self._services)
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
