"""The client of a node's admin service, as ``raftmq cluster status`` and
``raftmq cluster node-down`` use it."""

from __future__ import annotations

import json

import grpc
from grpc import aio

from ..forwarding.frames import FrameError
from ..rpc import text_metadata, unwrap, wrap
from ..tls import NodeTLS
from .calls import LEADER_KEY, NODE_DOWN, STATUS, Report, call_metadata, path


class AdminCallFailed(Exception):
    """An admin call did not succeed; the message names the node and its address."""

    def __init__(
        self,
        node_id: str,
        address: str,
        code: grpc.StatusCode,
        details: str,
        leader: str | None = None,
    ) -> None:
        super().__init__(f"node {node_id} at {address}: {code.name}: {details}")
        self.node_id = node_id
        self.code = code
        self.leader = leader


class AdminClient:
    """Calls one node's admin service; use ``async with``."""

    def __init__(
        self,
        node_id: str,
        address: str,
        secret: bytes,
        tls: NodeTLS | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._secret = secret
        self._timeout = timeout
        if tls is None:
            self._channel = aio.insecure_channel(address)
        else:
            options = [("grpc.ssl_target_name_override", node_id)]
            credentials = tls.channel_credentials()
            self._channel = aio.secure_channel(address, credentials, options=options)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._channel.close()

    async def status(self) -> Report:
        return await self._call(STATUS, {})

    async def node_down(self, node_id: str, force: bool = False) -> Report:
        return await self._call(NODE_DOWN, {"node": node_id, "force": force})

    async def _call(self, method: str, body: Report) -> Report:
        raw = json.dumps(body).encode()
        metadata = call_metadata(self._secret, method, self.node_id, raw)
        call = self._channel.unary_unary(path(method))
        try:
            answer = await call(wrap(raw), metadata=metadata, timeout=self._timeout)
        except aio.AioRpcError as exc:
            trailing = text_metadata(exc.trailing_metadata())
            details = exc.details() or "no details"
            raise AdminCallFailed(
                self.node_id, self.address, exc.code(), details, trailing.get(LEADER_KEY) or None
            ) from None
        try:
            reply = json.loads(unwrap(answer))
            if not isinstance(reply, dict):
                raise ValueError("not a JSON object")
        except (FrameError, ValueError) as exc:
            raise AdminCallFailed(
                self.node_id, self.address, grpc.StatusCode.INTERNAL, f"bad {method} reply: {exc}"
            ) from None
        return reply
