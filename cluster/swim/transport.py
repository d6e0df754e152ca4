"""The SWIM core over one asyncio UDP socket.

``SwimTransport`` owns the socket: what arrives is opened (``seal``), decoded
(``wire``) and handed to ``Swim.receive``; what the core returns is encoded,
sealed and sent; ``Swim.tick`` runs when ``Swim.next_deadline`` says, on the
event loop's clock. A datagram that cannot be opened or decoded is dropped
and counted in ``dropped`` by reason, and never reaches the core. Everything
protocol-related lives in the core, so this stays small enough to trust
without a simulated network.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from typing import cast

from . import wire
from .core import Swim
from .errors import DROP_REASONS, BadPacket
from .messages import Outgoing
from .seal import Sealer

log = logging.getLogger("raftmq.cluster.swim")


def split_address(addr: str) -> tuple[str, int]:
    """("host", port) of "host:port" (or "[v6 host]:port")."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class SwimTransport(asyncio.DatagramProtocol):
    """Runs ``swim`` on a UDP socket, through ``sealer``."""

    def __init__(self, swim: Swim, sealer: Sealer, loop: asyncio.AbstractEventLoop) -> None:
        self.swim = swim
        self.sealer = sealer
        self._loop = loop
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        """Datagrams dropped, by reason (``errors.DROP_REASONS``)."""
        self.send_errors = 0

    @classmethod
    async def serve(
        cls, swim: Swim, sealer: Sealer, *, sock: socket.socket | None = None
    ) -> SwimTransport:
        """Run ``swim`` on ``sock``, or on a socket bound to its SWIM address."""
        loop = asyncio.get_running_loop()
        where = {"sock": sock} if sock else {"local_addr": split_address(swim.meta.swim_addr)}
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(swim, sealer, loop), **where)
        return protocol

    def now(self) -> float:
        """The clock the core runs on."""
        return self._loop.time()

    def send(self, out: list[Outgoing]) -> None:
        """Send what the core returned (by ``join`` or ``leave`` too)."""
        udp = self._udp
        if udp is None or udp.is_closing():
            return
        for outgoing in out:
            datagram = self.sealer.seal(wire.encode(outgoing.message))
            try:
                udp.sendto(datagram, split_address(outgoing.addr))
            except (OSError, ValueError) as exc:
                self.send_errors += 1
                log.debug(
                    "node %s: SWIM send to %s failed: %s", self.swim.node_id, outgoing.addr, exc
                )
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._udp is not None:
            self._udp.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram transport, though asyncio's own does not derive from DatagramTransport.
        self._udp = cast(asyncio.DatagramTransport, transport)
        self._schedule()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = addr[0], addr[1]
        sender = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        try:
            message = wire.decode(self.sealer.open(data))
        except BadPacket as exc:
            self.dropped[exc.reason] += 1
            log.debug(
                "node %s: dropped a SWIM datagram from %s: %s", self.swim.node_id, sender, exc
            )
            return
        self.send(self.swim.receive(self.now(), sender, message))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram (a member gone): its probe will time out.
        self.send_errors += 1

    def _schedule(self) -> None:
        deadline = self.swim.next_deadline()
        if deadline >= self._timer_at or math.isinf(deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.send(self.swim.tick(self.now()))
