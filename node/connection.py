"""One client's network connection: the asyncio driver around ``ClientProtocol``.

The driver does socket I/O and nothing of MQTT's rules: bytes go into the
protocol (``protocol.py``), packets come out and are handed, in order, to the
protocol itself or to the node (``ClientHandler``). Most packets (PUBLISH
without retain, acks, pings) are handled synchronously inside
``data_received``, so the hot path creates no task. A packet that needs the
cluster (CONNECT, SUBSCRIBE, a retained PUBLISH, a publish whose QoS ack must
wait for other nodes) runs as one task, and reading pauses until it is done,
so packets keep their order.

The driver also owns what only a socket has: writing everything queued in a
loop turn at once, the connect and keep-alive timers, the publish rate limit,
backpressure between a slow subscriber and the publishers that feed it, and
the lingering close after the node's last word (``MQTTConnection._linger``).
Each connection's end is logged once, in ``_closed`` (``client_log.py``), and
only the ``log_client`` connection carries a per-packet trace
(``packet_trace.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast

from . import client_log
from .limits import TokenBucket
from .packet_trace import PacketTrace, start_trace
from .packets import Connect, Packet, Publish, Subscribe, Unsubscribe
from .protocol import (
    ANSWERS,
    CLOSED,
    CONNECTED,
    CONNECTING,
    ClientProtocol,
    Disconnected,
    ProtocolViolation,
    Work,
)
from .reason_codes import ReasonCode
from .stats import Stats

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("raftmq.connection")

NOBODY: frozenset[MQTTConnection] = frozenset()
MAX_PACKETS_PER_TURN = 256
"""Packets one connection handles per loop turn before it lets the others run.

uvloop hands over up to 256 KiB per read; a hundred busy publishers would
otherwise make one loop turn last seconds, starving writes and timers.
"""


class ClientHandler(Protocol):
    """What a connection asks of the node it serves (the broker implements it)."""

    stats: Stats

    def client_opened(self, client: ClientProtocol) -> bool:
        """Admit a new connection; False closes it at once."""

    def client_closed(self, client: ClientProtocol, was_connected: bool) -> None:
        """The client is gone for MQTT: its session is handled now, even if the socket lingers."""

    def socket_closed(self, client: ClientProtocol) -> None:
        """The socket is closed too: it no longer counts against max_connections."""

    def handle_connect(self, client: ClientProtocol, packet: Connect) -> Work: ...

    def handle_publish(self, client: ClientProtocol, packet: Publish) -> Work | None: ...

    def handle_subscribe(self, client: ClientProtocol, packet: Subscribe) -> Work: ...

    def handle_unsubscribe(self, client: ClientProtocol, packet: Unsubscribe) -> Work: ...

    def commit_now(self) -> None:
        """Commit the store's pending changes at once (a held connection is closing)."""


class MQTTConnection(asyncio.Protocol):
    # Slots: a node holds tens of thousands of these, and a per-instance dict
    # would be the largest part of each.
    __slots__ = (
        "_backlog",
        "_busy",
        "_stall_mark",
        "_stall_timer",
        "config",
        "held_by",
        "holding",
        "last_activity",
        "loop",
        "mqtt",
        "node",
        "publish_bucket",
        "timer",
        "trace",
        "transport",
    )

    def __init__(self, node: ClientHandler, config: Config, listener: str) -> None:
        self.node = node
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.mqtt = ClientProtocol(config, node.stats, self, listener)
        self.transport: asyncio.Transport | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._backlog: deque[Packet] = deque()
        """Packets read but not yet handled: while a task runs, or past this turn's share."""
        self._busy = False
        self.held_by: set[MQTTConnection] | frozenset[MQTTConnection] = NOBODY
        """Slow readers this publisher waits for (a set only once there is one)."""
        self.holding: set[MQTTConnection] | frozenset[MQTTConnection] = NOBODY
        """Publishers waiting for this connection to drain."""
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_mark = 0
        rate = config.max_publish_rate
        self.publish_bucket = (
            TokenBucket(rate, max(rate, 1.0), self.loop.time()) if rate > 0 else None
        )
        """max_publish_rate, fed with the time each read arrived; None when unlimited."""
        self.trace: PacketTrace | None = None
        """Per-packet debug lines, for the ``log_client`` client only (``packet_trace.py``)."""

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.mqtt.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.node.client_opened(self.mqtt):
            # Far over max_connections: a reset frees the socket at once.
            self.mqtt.state = CLOSED
            self.transport.abort()
            return
        self.last_activity = self.loop.time()
        # Cancelled only once CONNECT succeeded (connected()): bytes that
        # trickle in, or half a CONNECT, do not extend it.
        self.timer = self.loop.call_later(self.config.connect_timeout, self._connect_timed_out)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.node.stats.bytes_received += len(data)
        try:
            packets = self.mqtt.receive_data(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if self.trace is not None:
            self.trace.incoming(packets)
        if self._busy:
            self._backlog.extend(packets)
        else:
            self._handle(packets)

    def _handle(self, packets: list[Packet]) -> None:
        """Handle packets in order, synchronously while they allow it.

        At the first packet that must wait for the cluster, or once this turn's
        share is used, the rest goes to the backlog and one task carries on.
        """
        mqtt = self.mqtt
        for index, packet in enumerate(packets):
            if mqtt.state == CLOSED:
                return
            if index == MAX_PACKETS_PER_TURN:
                self._backlog.extend(packets[index:])
                self._run_async(None)
                return
            try:
                pending = self._dispatch(packet)
            except ProtocolViolation as exc:
                self._violation(exc)
                return
            if pending is not None:
                self._backlog.extend(packets[index + 1 :])
                self._run_async(pending)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(exc)
        self.node.socket_closed(self.mqtt)

    def pause_writing(self) -> None:
        self.mqtt.write_paused = True
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        assert self.transport is not None
        self._stall_mark = self.transport.get_write_buffer_size()
        self._stall_timer = self.loop.call_later(
            self.config.write_stall_timeout, self._stall_expired
        )

    def resume_writing(self) -> None:
        mqtt = self.mqtt
        mqtt.write_paused = False
        mqtt.stalled = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        session = mqtt.session
        if session is not None and session.connection is mqtt:
            session.drain()
        if not mqtt.write_paused:
            self._release_held()

    # -- backpressure -------------------------------------------------------
    #
    # A subscriber that reads slower than its publishers write would make the
    # broker either drop or buffer without bound. Instead, while its socket
    # buffer is full, each publisher feeding it stops being read, so TCP
    # pushes back on the publisher. A subscriber that stops reading entirely
    # may hold publishers back for write_stall_timeout only; after that it is
    # marked stalled and its messages queue and overflow like an offline one.

    def hold(self, publisher: MQTTConnection) -> None:
        """Stop reading ``publisher`` until this (slow) connection drains."""
        if self.mqtt.stalled or publisher in self.holding:
            return
        if not self.holding:
            self.holding = set()
        self.holding.add(publisher)  # type: ignore[union-attr]
        if not publisher.held_by:
            publisher.held_by = set()
        publisher.held_by.add(self)  # type: ignore[union-attr]
        publisher.update_reading()

    def _release_held(self) -> None:
        holding, self.holding = self.holding, NOBODY
        for publisher in holding:
            publisher.held_by.discard(self)  # type: ignore[union-attr]
            publisher.update_reading()

    def _stall_expired(self) -> None:
        """Stalled means no progress at all: a reader that drains slowly still holds publishers."""
        self._stall_timer = None
        mqtt = self.mqtt
        if mqtt.write_paused and mqtt.state != CLOSED and self.transport is not None:
            if self.transport.get_write_buffer_size() < self._stall_mark:
                self._arm_stall_timer()
                return
            log.warning(
                "client %r stopped reading; no longer holding publishers back", mqtt.client_id
            )
            mqtt.stalled = True
            self._release_held()

    def update_reading(self) -> None:
        """Read from the socket unless a packet is being handled or a slow reader holds us."""
        if self.mqtt.state == CLOSED or self.transport is None:
            return
        if self._busy or self.held_by:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- packet dispatch ----------------------------------------------------

    def _dispatch(self, packet: Packet) -> Work | None:
        """Hand ``packet`` to the protocol or the node; raises ProtocolViolation."""
        mqtt = self.mqtt
        cls = type(packet)
        if mqtt.state != CONNECTED or cls is Connect:
            mqtt.check_order(packet)
        if cls is Publish:
            bucket = self.publish_bucket
            if bucket is not None and not bucket.take(self.last_activity):
                self.node.stats.limits.publish_rate += 1
                rate = self.config.max_publish_rate
                mqtt.disconnect(ReasonCode.MESSAGE_RATE_TOO_HIGH, f"more than {rate} PUBLISH/s")
                return None
            return self.node.handle_publish(mqtt, packet)  # type: ignore[arg-type]
        answer = ANSWERS.get(cls)  # acks and pings: one lookup, straight to the protocol
        if answer is not None:
            answer(mqtt, packet)
            return None
        if cls is Subscribe:
            return self.node.handle_subscribe(mqtt, packet)  # type: ignore[arg-type]
        if cls is Unsubscribe:
            return self.node.handle_unsubscribe(mqtt, packet)  # type: ignore[arg-type]
        return self.node.handle_connect(mqtt, packet)  # type: ignore[arg-type]

    def _run_async(self, work: Work | None) -> None:
        self._busy = True
        self.update_reading()
        self.loop.create_task(self._finish_async(work))

    async def _finish_async(self, work: Work | None) -> None:
        """Await ``work``, then handle the backlog a turn's share at a time, then read again."""
        backlog = self._backlog
        mqtt = self.mqtt
        while mqtt.state != CLOSED:
            try:
                if work is None:
                    await asyncio.sleep(0)  # let other connections, and this turn's writes, go
                else:
                    await work
                    work = None
                handled = 0
                while backlog and work is None and handled < MAX_PACKETS_PER_TURN:
                    if mqtt.state == CLOSED:
                        return
                    work = self._dispatch(backlog.popleft())
                    handled += 1
            except Disconnected:
                return
            except ProtocolViolation as exc:
                self._violation(exc)
                return
            except Exception:
                log.exception("client %r: internal error", mqtt.client_id)
                mqtt.disconnect(ReasonCode.UNSPECIFIED_ERROR, "internal error")
                return
            if work is None and not backlog:
                break
        self._busy = False
        self.update_reading()

    # -- ClientLink: what the protocol asks of its connection ----------------

    def output_ready(self) -> None:
        """Output is queued: write it at the end of this loop turn.

        A fan-out appends one PUBLISH per subscriber per turn; writing once per
        turn turns thousands of send() calls into one writev per connection.
        """
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        out = self.mqtt.take_output()
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.writelines(out)
            if self.trace is not None:
                self.trace.outgoing(out)

    def connected(self) -> None:
        """CONNECT accepted: the connect timer gives way to keep-alive supervision."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        mqtt = self.mqtt
        if mqtt.keepalive:
            self.timer = self.loop.call_later(mqtt.keepalive * 1.5, self._keepalive_check)
        if self.config.log_client and self.config.log_client == mqtt.client_id:
            self.trace = start_trace(mqtt.client_id, mqtt.protocol_level)

    def close(self, linger: bool = False) -> None:
        """Close now; what is already written still goes out before the socket closes.

        With ``linger`` (the protocol's last word is in its output) the socket
        lingers where the transport can half-close (``_linger``). TLS cannot:
        the ssl transports have no write_eof, so a TLS client still sending may
        get a reset, as before. A WebSocket's close (``websocket.py``) runs the
        WebSocket closing handshake, which half-closes and reads on by itself.
        """
        if self.mqtt.awaiting_commit:
            self.node.commit_now()
        self.flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            seconds = self.config.close_linger
            if linger and seconds > 0 and transport.can_write_eof():
                self._linger(transport, seconds)
            else:
                transport.close()
        self._closed()

    def _linger(self, transport: asyncio.Transport, seconds: float) -> None:
        """Half-close, then read and discard until the client's EOF or ``seconds`` pass.

        Closing a socket with unread input makes the kernel send a reset, and a
        client that is still sending then gets ECONNRESET/EPIPE instead of the
        DISCONNECT or CONNACK it was just sent. Shutting down only our side
        sends FIN after what was written; the client reads the reason code and
        EOF. The transport moves to a ``_Lingering`` protocol, so that this
        connection's hot path carries no check for it, and ``self.transport``
        is dropped so that nothing more is written.
        """
        self.transport = None
        transport.write_eof()
        transport.set_protocol(_Lingering(self, transport, seconds))
        transport.resume_reading()  # reading may be paused (a task, a slow subscriber)

    # -- ending the connection ----------------------------------------------

    def _violation(self, exc: ProtocolViolation) -> None:
        """A malformed or forbidden packet: tell the client why (v5), then close."""
        self.mqtt.violated(exc.reason, exc.detail)  # and closes, through close()

    def _closed(self, error: Exception | None = None) -> None:
        """Forget this connection, once, whether the client or the server closed it.

        ``error``: why the socket broke, when it broke before anyone closed it.
        """
        mqtt = self.mqtt
        if mqtt.state == CLOSED:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        was_connected = mqtt.state == CONNECTED
        mqtt.state = CLOSED
        self._backlog.clear()
        self._release_held()
        held_by, self.held_by = self.held_by, NOBODY
        for slow in held_by:
            slow.holding.discard(self)  # type: ignore[union-attr]
        client_log.closed(mqtt, was_connected, error)
        self.node.client_closed(mqtt, was_connected)

    def _connect_timed_out(self) -> None:
        self.timer = None
        mqtt = self.mqtt
        if mqtt.state == CONNECTING and self._busy:
            # The CONNECT came and is being handled (a claim waiting for the cluster,
            # a takeover waiting out a lease): its own bounds end it, not this timer.
            self.timer = self.loop.call_later(self.config.connect_timeout, self._connect_timed_out)
        elif mqtt.state == CONNECTING:
            seconds = self.config.connect_timeout
            mqtt.end("server", None, f"no CONNECT within connect_timeout ({seconds}s)")
            self.node.stats.limits.connect_timeout += 1
            self.close()

    def _keepalive_check(self) -> None:
        self.timer = None
        mqtt = self.mqtt
        if mqtt.state != CONNECTED:
            return
        limit = mqtt.keepalive * 1.5
        idle = self.loop.time() - self.last_activity
        if idle >= limit:
            detail = f"nothing received for {idle:.1f}s, keepalive {mqtt.keepalive}s"
            mqtt.end("server", ReasonCode.KEEP_ALIVE_TIMEOUT, detail)
            mqtt.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
        else:
            self.timer = self.loop.call_later(limit - idle, self._keepalive_check)

    def peer_certificate(self) -> Any:
        """The client's TLS certificate as the ssl module gives it, or None."""
        return self.transport.get_extra_info("peercert") if self.transport else None


class _Lingering(asyncio.Protocol):
    """A socket after the node's last word: input is discarded undecoded, for a bounded time.

    The timer is armed once and never moved, so a client that keeps sending
    cannot hold the socket open past ``seconds``; it is then aborted. Until the
    socket is really closed it stays in the node's count of sockets
    (``ClientHandler.socket_closed`` comes from ``connection_lost``).
    """

    __slots__ = ("_connection", "_timer")

    def __init__(
        self, connection: MQTTConnection, transport: asyncio.Transport, seconds: float
    ) -> None:
        self._connection = connection
        self._timer = connection.loop.call_later(seconds, transport.abort)

    def data_received(self, data: bytes) -> None:
        """The client is gone for MQTT: what it still sends is dropped."""

    def eof_received(self) -> None:
        """The client closed its side too: returning None lets the transport close."""

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._connection.connection_lost(exc)
