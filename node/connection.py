"""One client's network connection: the asyncio driver around the codec.

Bytes go into the sans-I/O ``Decoder``; packets come out and are handled in
order. Most packets (PUBLISH without retain, acks, pings) are handled
synchronously inside ``data_received`` so the hot path creates no task. A
packet that needs the cluster (CONNECT, SUBSCRIBE, a retained PUBLISH, a
publish whose QoS ack must wait for other nodes) runs as one task, and reading
pauses until it is done so packets keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from .codec import Decoder, MQTTProtocolError, encode, encode_publish_parts
from .limits import TokenBucket
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)
from .reason_codes import ReasonCode, connack_code_for
from .session import Delivery, Session

if TYPE_CHECKING:
    from .acks import OrderedAcks
    from .broker import Broker

log = logging.getLogger("raftmq.connection")

CONNECTING, CONNECTED, CLOSED = 0, 1, 2
PACKET_ID_BYTES = [i.to_bytes(2, "big") for i in range(0x10000)]
PINGRESP_BYTES = b"\xd0\x00"
NOBODY: frozenset[MQTTConnection] = frozenset()
MAX_PACKETS_PER_TURN = 256
"""Packets one connection handles per loop turn before it lets the others run.

uvloop hands over up to 256 KiB per read; a hundred busy publishers would
otherwise make one loop turn last seconds, starving writes and timers.
"""


class Disconnected(Exception):
    """Handling a packet ended the connection; stop processing what follows."""


class MQTTConnection(asyncio.Protocol):
    # Slots: a node holds tens of thousands of these, and a per-instance dict
    # would be the largest part of each.
    __slots__ = (
        "_backlog",
        "_busy",
        "_out",
        "_stall_mark",
        "_stall_timer",
        "alias_out_max",
        "aliases_in",
        "aliases_out",
        "awaiting_commit",
        "broker",
        "clean_disconnect",
        "client_id",
        "config",
        "decoder",
        "epoch",
        "held_by",
        "holding",
        "incoming_pending",
        "keepalive",
        "last_activity",
        "listener",
        "loop",
        "max_outgoing_size",
        "ordered_acks",
        "peer",
        "problem_info",
        "protocol_level",
        "publish_bucket",
        "send_window",
        "session",
        "stalled",
        "state",
        "timer",
        "transport",
        "username",
        "write_paused",
    )

    def __init__(self, broker: Broker, listener: str) -> None:
        self.broker = broker
        self.config = broker.config
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = Decoder(max_packet_size=broker.config.max_packet_size)
        self.state = CONNECTING
        self.protocol_level = 4
        self.client_id = ""
        self.username: str | None = None
        """Who authenticated (password or TLS certificate); None for anonymous clients."""
        self.session: Session | None = None
        self.epoch = 0
        self.keepalive = 0
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.send_window = broker.config.max_inflight
        self.max_outgoing_size = 0
        self.problem_info = True
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}
        self.alias_out_max = 0
        self.incoming_pending = 0
        self.ordered_acks: OrderedAcks | None = None
        """QoS 1 acknowledgements waiting for other nodes (made at the first such PUBLISH)."""
        self.clean_disconnect = False
        self.peer = "?"
        self._backlog: deque[Packet] = deque()
        """Packets read but not yet handled: while a task runs, or past this turn's share."""
        self._out: list[bytes] = []
        self.awaiting_commit = False
        """Output reports state the store has not committed yet; it releases it after."""
        self._busy = False
        self.held_by: set[MQTTConnection] | frozenset[MQTTConnection] = NOBODY
        """Slow readers this publisher waits for (a set only once there is one)."""
        self.holding: set[MQTTConnection] | frozenset[MQTTConnection] = NOBODY
        """Publishers waiting for this connection to drain."""
        self.stalled = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_mark = 0
        rate = broker.config.max_publish_rate
        self.publish_bucket = (
            TokenBucket(rate, max(rate, 1.0), self.loop.time()) if rate > 0 else None
        )
        """max_publish_rate, fed with the time each read arrived; None when unlimited."""

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.broker.connection_opened(self):
            # Far over max_connections: a reset frees the socket at once.
            self.state = CLOSED
            self.transport.abort()
            return
        self.last_activity = self.loop.time()
        # Cancelled only once CONNECT succeeded (start_keepalive): bytes that
        # trickle in, or half a CONNECT, do not extend it.
        self.timer = self.loop.call_later(self.config.connect_timeout, self._connect_timed_out)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.broker.stats.bytes_received += len(data)
        try:
            packets = self.decoder.feed(data)
        except MQTTProtocolError as exc:
            if exc.reason_code == ReasonCode.PACKET_TOO_LARGE:
                self.broker.stats.limits.packet_size += 1
            self.protocol_error(exc.reason_code, str(exc))
            return
        if self._busy:
            self._backlog.extend(packets)
        else:
            self._handle(packets)

    def _handle(self, packets: list[Packet]) -> None:
        """Handle packets in order, synchronously while they allow it.

        At the first packet that must wait for the cluster, or once this turn's
        share is used, the rest goes to the backlog and one task carries on.
        """
        for index, packet in enumerate(packets):
            if self.state == CLOSED:
                return
            if index == MAX_PACKETS_PER_TURN:
                self._backlog.extend(packets[index:])
                self._run_async(None)
                return
            pending = self._dispatch(packet)
            if pending is not None:
                self._backlog.extend(packets[index + 1 :])
                self._run_async(pending)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        assert self.transport is not None
        self._stall_mark = self.transport.get_write_buffer_size()
        self._stall_timer = self.loop.call_later(
            self.config.write_stall_timeout, self._stall_expired
        )

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stalled = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.session is not None and self.session.connection is self:
            self.session.drain()
        if not self.write_paused:
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
        if self.stalled or publisher in self.holding:
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
        if self.write_paused and self.state != CLOSED and self.transport is not None:
            if self.transport.get_write_buffer_size() < self._stall_mark:
                self._arm_stall_timer()
                return
            log.warning(
                "client %r stopped reading; no longer holding publishers back", self.client_id
            )
            self.stalled = True
            self._release_held()

    def update_reading(self) -> None:
        """Read from the socket unless a packet is being handled or a slow reader holds us."""
        if self.state == CLOSED or self.transport is None:
            return
        if self._busy or self.held_by:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- packet dispatch ----------------------------------------------------

    def _dispatch(self, packet: Packet) -> Coroutine[Any, Any, None] | None:
        if self.state == CONNECTING and not isinstance(packet, Connect):
            self.protocol_error(ReasonCode.PROTOCOL_ERROR, f"{packet.type.name} before CONNECT")
            return None
        return HANDLERS[type(packet)](self, packet)

    def _run_async(self, work: Coroutine[Any, Any, None] | None) -> None:
        self._busy = True
        self.update_reading()
        self.loop.create_task(self._finish_async(work))

    async def _finish_async(self, work: Coroutine[Any, Any, None] | None) -> None:
        """Await ``work``, then handle the backlog a turn's share at a time, then read again."""
        backlog = self._backlog
        while self.state != CLOSED:
            if work is None:
                await asyncio.sleep(0)  # let other connections, and this turn's writes, go first
            else:
                try:
                    await work
                except Disconnected:
                    return
                except Exception:
                    log.exception("client %r: internal error", self.client_id)
                    self.disconnect(ReasonCode.UNSPECIFIED_ERROR, "internal error")
                    return
                work = None
            handled = 0
            while backlog and work is None and handled < MAX_PACKETS_PER_TURN:
                if self.state == CLOSED:
                    return
                work = self._dispatch(backlog.popleft())
                handled += 1
            if work is None and not backlog:
                break
        self._busy = False
        self.update_reading()

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket; everything queued in one loop turn goes in one write.

        A fan-out appends one PUBLISH per subscriber per turn; flushing once per
        turn turns thousands of send() calls into one writev per connection.
        """
        out = self._out
        if not out:
            self.loop.call_soon(self._flush)
        out.append(data)

    def _flush(self) -> None:
        out = self._out
        if not out or self.awaiting_commit:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(out)

    def release_output(self) -> None:
        """The store committed what this connection's output acknowledges: send it."""
        self.awaiting_commit = False
        self._flush()

    def send(self, packet: Packet) -> None:
        if self.transport is None or self.state == CLOSED:
            return
        data = encode(packet, self.protocol_level)
        self.broker.stats.bytes_sent += len(data)
        self.write(data)

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None:
        if self.transport is None or self.state == CLOSED:
            return
        message = delivery.message
        qos = delivery.qos
        if self.protocol_level == 5 and (
            delivery.subscription_ids or self.alias_out_max or message.expires_at is not None
        ):
            head, tail = self._encode_v5_publish(delivery)
        else:
            head, tail = message.encoded(self.protocol_level, qos, delivery.retain)
        size = len(head) + len(tail) + (2 if qos else 0)
        if self.max_outgoing_size and size > self.max_outgoing_size:
            # MQTT 5 §3.1.2.11.4: too large for this client, so it is discarded
            # as if it had been delivered.
            if packet_id is not None and self.session is not None:
                self.session.acknowledge(packet_id, qos)
            return
        if dup:
            head = bytes((head[0] | 0x08,)) + head[1:]
        stats = self.broker.stats
        stats.messages_sent += 1
        stats.bytes_sent += size
        out = self._out
        if not out:
            self.loop.call_soon(self._flush)
        if packet_id is None:
            out += (head, tail)
        else:
            out += (head, PACKET_ID_BYTES[packet_id], tail)

    def _encode_v5_publish(self, delivery: Delivery) -> tuple[bytes, bytes]:
        message = delivery.message
        props: Properties = message.remaining_properties(time.monotonic())
        topic = message.topic
        extra: Properties = {}
        if delivery.subscription_ids:
            extra["subscription_identifier"] = list(delivery.subscription_ids)
        if self.alias_out_max:
            alias = self.aliases_out.get(topic)
            if alias is not None:
                extra["topic_alias"] = alias
                topic = ""
            elif len(self.aliases_out) < self.alias_out_max:
                alias = len(self.aliases_out) + 1
                self.aliases_out[topic] = alias
                extra["topic_alias"] = alias
        if extra:
            props = {**props, **extra}
        return encode_publish_parts(
            topic, message.payload, delivery.qos, delivery.retain, False, props, 5
        )

    def send_pubrel(self, packet_id: int) -> None:
        self.send(Pubrel(packet_id))

    def problem(self, reason: str) -> Properties:
        """A reason string, when the client asked for problem information."""
        return {"reason_string": reason} if self.problem_info and self.protocol_level == 5 else {}

    # -- ending the connection ----------------------------------------------

    def protocol_error(self, reason: int, detail: str) -> None:
        """A malformed or forbidden packet: tell a v5 client why, then close."""
        log.info("client %r (%s): %s", self.client_id, self.peer, detail)
        self.broker.stats.protocol_errors += 1
        if self.state == CONNECTING:
            if reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
                level = self.decoder.protocol_level or 4
                self.protocol_level = level if level in (3, 4, 5) else 4
                code = connack_code_for(
                    self.protocol_level, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
                )
                self.send(Connack(False, code))
            elif self.decoder.protocol_level == 5:
                self.protocol_level = 5
                self.send(Connack(False, reason))
            self.close()
            return
        self.disconnect(reason, detail)

    def disconnect(self, reason: int, detail: str = "") -> None:
        """Server-initiated close: v5 clients get a DISCONNECT with ``reason`` first."""
        if self.state == CLOSED:
            return
        if self.protocol_level == 5 and self.state == CONNECTED:
            props = self.problem(detail) if detail else {}
            self.send(Disconnect(reason, props))
        self.close()

    def close(self) -> None:
        """Close now; what is already written still goes out before the socket closes."""
        if self.awaiting_commit:
            self.broker.store.commit()
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        """Forget this connection, once, whether the client or the server closed it."""
        if self.state == CLOSED:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        was_connected = self.state == CONNECTED
        self.state = CLOSED
        self._backlog.clear()
        self._release_held()
        held_by, self.held_by = self.held_by, NOBODY
        for slow in held_by:
            slow.holding.discard(self)  # type: ignore[union-attr]
        self.broker.connection_closed(self, was_connected)

    def _connect_timed_out(self) -> None:
        self.timer = None
        if self.state == CONNECTING:
            log.info(
                "client at %s sent no CONNECT within %ss", self.peer, self.config.connect_timeout
            )
            self.broker.stats.limits.connect_timeout += 1
            self.close()

    def _keepalive_check(self) -> None:
        self.timer = None
        if self.state != CONNECTED:
            return
        limit = self.keepalive * 1.5
        idle = self.loop.time() - self.last_activity
        if idle >= limit:
            log.info("client %r: keepalive expired after %.1fs", self.client_id, idle)
            self.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
        else:
            self.timer = self.loop.call_later(limit - idle, self._keepalive_check)

    def start_keepalive(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keepalive:
            self.timer = self.loop.call_later(self.keepalive * 1.5, self._keepalive_check)

    # -- handlers -----------------------------------------------------------

    def on_connect(self, packet: Connect) -> Coroutine[Any, Any, None] | None:
        if self.state != CONNECTING:
            self.protocol_error(ReasonCode.PROTOCOL_ERROR, "second CONNECT")
            return None
        self.protocol_level = packet.protocol_level
        return self.broker.handle_connect(self, packet)

    def on_auth(self, packet: Auth) -> None:
        # We never start enhanced authentication, so an AUTH is always out of turn.
        self.protocol_error(ReasonCode.PROTOCOL_ERROR, "AUTH without an authentication method")

    def on_pingreq(self, packet: Pingreq) -> None:
        if self.transport is not None:
            self.write(PINGRESP_BYTES)

    def on_publish(self, packet: Publish) -> Coroutine[Any, Any, None] | None:
        bucket = self.publish_bucket
        if bucket is not None and not bucket.take(self.last_activity):
            self.broker.stats.limits.publish_rate += 1
            rate = self.config.max_publish_rate
            self.disconnect(ReasonCode.MESSAGE_RATE_TOO_HIGH, f"more than {rate} PUBLISH/s")
            return None
        return self.broker.handle_publish(self, packet)

    def on_puback(self, packet: Puback) -> None:
        if self.session is not None:
            self.session.acknowledge(packet.packet_id, 1)

    def on_pubrec(self, packet: Pubrec) -> None:
        session = self.session
        if session is None:
            return
        if packet.reason_code >= 0x80:
            # The client refused the message: the exchange ends here (MQTT 5 §4.3.3).
            session.acknowledge(packet.packet_id, 2)
        elif session.received(packet.packet_id):
            self.send_pubrel(packet.packet_id)
        else:
            self.send(Pubrel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))

    def on_pubrel(self, packet: Pubrel) -> None:
        session = self.session
        if session is None:
            return
        if session.release_incoming(packet.packet_id):
            self.send(Pubcomp(packet.packet_id))
        else:
            self.send(Pubcomp(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))

    def on_pubcomp(self, packet: Pubcomp) -> None:
        if self.session is not None:
            self.session.acknowledge(packet.packet_id, 2)

    def on_subscribe(self, packet: Subscribe) -> Coroutine[Any, Any, None]:
        return self.broker.handle_subscribe(self, packet)

    def on_unsubscribe(self, packet: Unsubscribe) -> Coroutine[Any, Any, None]:
        return self.broker.handle_unsubscribe(self, packet)

    def on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        if session is not None and self.protocol_level == 5:
            expiry = packet.properties.get("session_expiry_interval")
            if expiry is not None:
                if session.expiry_interval == 0 and expiry != 0:
                    # MQTT 5 §3.14.2.2.2: a session that was to end cannot be revived here.
                    self.protocol_error(
                        ReasonCode.PROTOCOL_ERROR, "session expiry set at DISCONNECT after 0"
                    )
                    return
                session.expiry_interval = expiry
        self.clean_disconnect = packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL
        self.close()

    # -- used by the broker -------------------------------------------------

    def connack(self, reason: ReasonCode, properties: Properties | None = None) -> None:
        """Refuse the CONNECT with ``reason`` and close."""
        code = connack_code_for(self.protocol_level, reason)
        props = properties if properties is not None else self.problem(reason.name.lower())
        self.send(Connack(False, code, props if self.protocol_level == 5 else {}))
        self.close()
        raise Disconnected


HANDLERS: dict[type, Callable[[MQTTConnection, Any], Coroutine[Any, Any, None] | None]] = {
    Publish: MQTTConnection.on_publish,
    Puback: MQTTConnection.on_puback,
    Pubrec: MQTTConnection.on_pubrec,
    Pubrel: MQTTConnection.on_pubrel,
    Pubcomp: MQTTConnection.on_pubcomp,
    Subscribe: MQTTConnection.on_subscribe,
    Unsubscribe: MQTTConnection.on_unsubscribe,
    Pingreq: MQTTConnection.on_pingreq,
    Disconnect: MQTTConnection.on_disconnect,
    Connect: MQTTConnection.on_connect,
    Auth: MQTTConnection.on_auth,
}
"""Packet class to handler; one table for all connections."""
