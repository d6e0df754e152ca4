"""Forwarding over gRPC: one stream per pair of nodes, carrying Cap'n Proto frames.

Each peer has a ``PeerChannel`` that outlives the streams it uses, and holds
the peer's ``ReliableLink`` (``link.py``: sequence numbers, acknowledgements,
resends, queue bounds). This module is the I/O around it. Of two nodes, the
one whose id sorts first dials and redials with backoff; the other accepts,
and a newer stream from the same peer replaces an older one. Both
directions of the one stream carry data frames and acknowledgements.

The stream method is served by whatever gRPC server the node runs
(``Forwarder.service``); the forwarder does not own one, so the admin service
shares the port without living in here.

Sending. ``Forwarder.send`` offers the message to each target's link and
wakes its writer. The writer runs at the next loop turn and sends what the
link makes of everything queued: one frame. Batching comes from the loop,
not from timers.

Receiving. The reader hands each new item of a frame to the node's
``PeerInbox``, in order; the link acknowledges the frame with the next frame
out. Because one peer's frames are handled strictly in order, order per
(publisher node, topic) holds. (A receiver that restarts loses its cursor
with the rest of its memory: the new process gets again what the old one
handled but had not acknowledged.) A forwarded publish is handed to
``publish_from_peer`` only: it is never forwarded again, by construction.

Backpressure. QoS 1/2 sends return an awaitable that completes when every
target acknowledged the message, which is also when its place in the link
frees up. A QoS 0 send returns None, unless a target is at its limit: then
it returns an awaitable that completes when that target has room again. The
caller (the node) stops reading from the publisher until it completes, so
the limit is exceeded by at most one message per publishing connection.

Unreachable peers. When a channel has had no stream for
``unreachable_timeout`` seconds, its link gives up: waiting QoS 1/2
publishers get ``ClusterUnavailable`` (the node answers them "server
unavailable"), and until a stream is back, QoS 0 sends to it are dropped
(counted) and QoS 1/2 sends fail at once. With ``hold_for_node_down`` (SWIM
on) only a peer never reached since start is given up on this way; one that
was reached is waited for until the cluster declares it down, and what
waited is then handed back (``declared_down``). Publishes are never
acknowledged to a publisher unless delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from raftmq.node.hooks import ClusterUnavailable, RouteKey
from raftmq.node.message import Message

from ..rpc import channel_options, unwrap, wrap
from ..tls import NodeTLS
from .frames import (
    Barrier,
    BarrierReply,
    Forwarded,
    FrameError,
    Handover,
    Item,
    Kick,
    decode_frame,
    encode_frame,
)
from .handshake import (
    METHOD,
    NODE_KEY,
    PATH,
    SERVICE,
    PeerRejected,
    check_hello,
    check_identity,
    hello_metadata,
)
from .inbox import PeerInbox
from .link import ForwardingSettings, ReliableLink, Waiter
from .peer_status import PeerStatus

log = logging.getLogger("raftmq.cluster.forwarding")

Read = Callable[[], Awaitable[Any]]
Write = Callable[[bytes], Awaitable[None]]

__all__ = ["Forwarder", "ForwardingSettings", "PeerInbox", "PeerStatus", "UnknownPeer"]


class StreamEnded(Exception):
    """This node ended a stream: a newer one from the same peer replaced it, or it is closing."""


class UnknownPeer(ValueError):
    """A send named a node this forwarder has no link to (see ``add_peer``)."""


class _Countdown:
    """Completes one send's future when every target node has acknowledged it."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None], remaining: int) -> None:
        self.future = future
        self.remaining = remaining

    def hit(self) -> None:
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class PeerChannel:
    """One peer's streams, over time: the stream served or dialled now, and its link."""

    def __init__(self, forwarder: Forwarder, node_id: str, address: str | None) -> None:
        self.forwarder = forwarder
        self.node_id = node_id
        self.address = address
        self.dials = forwarder.node_id < node_id
        self.link = ReliableLink(node_id, forwarder.incarnation, forwarder.settings, self._encode)
        self.room: asyncio.Future[None] | None = None
        """What QoS 0 senders wait on while the link is at its limit."""
        self.wake = asyncio.Event()
        self.stream_task: asyncio.Task[Any] | None = None
        """The gRPC handler serving the current inbound stream."""
        self.stream_stop: asyncio.Event | None = None
        """Set to end the current inbound stream (replaced, or the forwarder stopping)."""
        self.dialer: asyncio.Task[None] | None = None
        self.connected = False
        self.ever_connected = False
        """Whether a stream to the peer was ever up: one never reached (a refused
        certificate, a wrong address) is given up on by time even when holding."""
        self.closed = False
        self.give_up_timer: asyncio.TimerHandle | None = None
        self._arm_give_up()

    def _encode(self, seq: int, ack: int, items: Sequence[Item], ack_incarnation: int) -> bytes:
        """A frame as it goes on the stream: Cap'n Proto in the protobuf envelope."""
        inbox = self.forwarder.inbox
        applied = 0 if inbox is None else inbox.applied_count()
        return wrap(encode_frame(seq, ack, items, time.monotonic(), ack_incarnation, applied))

    def enqueue(self, item: Item, waiter: _Countdown | None) -> asyncio.Future[None] | None:
        """Queue ``item``; returns a future to wait on when the link is at its limit."""
        full = self.link.offer(item, waiter)
        self.wake.set()
        if not full:
            return None
        if self.room is None:
            self.room = asyncio.get_running_loop().create_future()
        return self.room

    def _check_room(self) -> None:
        if self.room is not None and self.link.has_room:
            self.room.set_result(None)  # after a give-up: QoS 0 publishers go on, dropped
            self.room = None

    # -- reachability -----------------------------------------------------------

    def _arm_give_up(self) -> None:
        settings = self.forwarder.settings
        if settings.hold_for_node_down and self.ever_connected:
            return  # the cluster declares the peer down instead (``declared_down``)
        if self.give_up_timer is None and not self.link.unreachable and not self.closed:
            loop = asyncio.get_running_loop()
            self.give_up_timer = loop.call_later(settings.unreachable_timeout, self._give_up)

    def _give_up(self) -> None:
        self.give_up_timer = None
        self.link.give_up()
        self._check_room()

    def declared_down(self) -> list[tuple[Item, Waiter | None]]:
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
            self.give_up_timer = None
        held = self.link.declared_down(self.connected)
        self._check_room()
        return held

    def close(self, exc: BaseException) -> None:
        self.closed = True
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
            self.give_up_timer = None
        self.link.fail_all(exc)
        self._check_room()
        if self.dialer is not None:
            self.dialer.cancel()
        if self.stream_stop is not None:
            self.stream_stop.set()

    # -- streams ------------------------------------------------------------------

    async def accept(self, read: Read, write: Write, peer_incarnation: int) -> None:
        """Serve an inbound stream; a newer stream from the peer replaces this one.

        The older one is told to end (not cancelled: a cancelled gRPC handler
        leaves its caller waiting) and this one starts once it has.
        """
        me = asyncio.current_task()
        old, old_stop = self.stream_task, self.stream_stop
        stop = asyncio.Event()
        self.stream_task, self.stream_stop = me, stop
        try:
            if old is not None and old_stop is not None and not old.done():
                old_stop.set()
                await asyncio.wait([old])
            if self.stream_task is me:  # else an even newer stream arrived meanwhile
                await self.run(read, write, peer_incarnation, stop)
        finally:
            if self.stream_task is me:
                self.stream_task = self.stream_stop = None

    async def run(
        self, read: Read, write: Write, peer_incarnation: int, stop: asyncio.Event | None = None
    ) -> None:
        """Exchange frames until the stream breaks (or ``stop`` is set); raises what ended it."""
        inbox = self.forwarder.inbox
        if inbox is None:
            raise StreamEnded(f"node {self.forwarder.node_id!r}: forwarding not started")
        self.link.stream_started(peer_incarnation)
        self.connected = self.ever_connected = True
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
            self.give_up_timer = None
        tasks = [
            asyncio.create_task(self._read_loop(read, inbox)),
            asyncio.create_task(self._write_loop(write)),
        ]
        if stop is not None:
            tasks.append(asyncio.create_task(stop.wait()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected = False
            self._arm_give_up()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
        raise StreamEnded(f"stream with node {self.node_id!r} replaced or closed here")

    async def _write_loop(self, write: Write) -> None:
        link = self.link
        for data in link.resend():
            await write(data)
            link.count_sent(resent=True)
        wake = self.wake
        while True:
            if not link.wants_to_send:
                wake.clear()
                await wake.wait()
                continue
            data = link.next_frame()
            if data is not None:
                await write(data)
                link.count_sent()

    async def _read_loop(self, read: Read, inbox: PeerInbox) -> None:
        origin = self.node_id
        link = self.link
        while True:
            raw = await read()
            if raw is aio.EOF:
                raise ConnectionError(f"node {origin!r} closed the stream")
            frame = decode_frame(unwrap(raw), time.monotonic())
            if frame.applied > inbox.applied_count():
                await inbox.catch_up(frame.applied)
            items = link.receive(frame)
            self._check_room()
            for item in items:
                try:
                    if type(item) is Forwarded:
                        inbox.publish_from_peer(origin, item.message, item.shared_groups)
                    elif type(item) is Kick:
                        inbox.kick_from_peer(origin, item.client_id, item.epoch)
                    elif type(item) is Handover:
                        inbox.handover_from_peer(origin, item)
                    elif type(item) is Barrier:
                        inbox.barrier_from_peer(origin, item.token, item.applied)
                    else:
                        inbox.barrier_reply_from_peer(origin, item.token)
                except Exception:
                    log.exception("from node %r: handling %r failed", origin, item)
            if link.ack_due:
                self.wake.set()

    def status(self) -> PeerStatus:
        link = self.link
        return PeerStatus(
            node_id=self.node_id,
            address=self.address,
            dials=self.dials,
            connected=self.connected,
            unreachable=link.unreachable,
            queued=len(link.pending),
            unacked=link.outstanding - len(link.pending),
            frames_sent=link.frames_sent,
            frames_received=link.frames_received,
            resends=link.resends,
            duplicates=link.duplicates,
            dropped=link.dropped,
            last_error=link.last_error,
        )


class Forwarder:
    """This node's end of every forwarding stream: the stream method it serves, and
    dialers for its peers."""

    def __init__(
        self,
        node_id: str,
        peers: Mapping[str, str] | None = None,
        *,
        tls: NodeTLS | None = None,
        secret: str | bytes | None = None,
        settings: ForwardingSettings | None = None,
    ) -> None:
        """``peers``: node id -> "host:port" of each peer's gRPC server, known at ``start``."""
        self.node_id = node_id
        self.inbox: PeerInbox | None = None
        """Where what peers send goes; given by ``start``, streams are refused before."""
        self._peers = dict(peers or {})
        self.tls = tls
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.settings = settings or ForwardingSettings()
        self.incarnation = int.from_bytes(os.urandom(8), "big") >> 1
        self._channels: dict[str, PeerChannel] = {}
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------

    def service(self) -> grpc.GenericRpcHandler:
        """The stream method, for the node's gRPC server to serve (``server.GrpcServer``)."""
        handler = grpc.stream_stream_rpc_method_handler(self._serve)
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})

    def start(self, inbox: PeerInbox) -> None:
        """Hand what peers send to ``inbox`` from now on; dial the peers given at first."""
        if self.inbox is not None:
            raise RuntimeError(f"node {self.node_id!r}: forwarding started twice")
        self.inbox = inbox
        for node_id, address in sorted(self._peers.items()):
            self.add_peer(node_id, address)

    async def stop(self) -> None:
        """Close every channel: waiting publishers fail, dialers and streams end.

        Stop the server that serves ``service`` first, so no stream comes in meanwhile.
        """
        self._stopping = True
        stopped = ClusterUnavailable(f"node {self.node_id!r}: forwarding stopped")
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.close(stopped)
        tasks = [task for ch in channels for task in (ch.dialer, ch.stream_task) if task]
        await asyncio.gather(*tasks, return_exceptions=True)

    def add_peer(self, node_id: str, address: str | None) -> None:
        """Know ``node_id`` (at ``address``, "host:port"); dial it if our id sorts first."""
        if self.inbox is None:
            raise RuntimeError(f"node {self.node_id!r}: add_peer before start")
        if node_id == self.node_id:
            raise ValueError(f"node {node_id!r} cannot be its own peer")
        channel = self._channels.get(node_id)
        if channel is None:
            channel = self._channels[node_id] = PeerChannel(self, node_id, address)
        elif address == channel.address:
            return
        channel.address = address
        if channel.dials:
            if address is None:
                raise ValueError(f"node {node_id!r} needs an address: {self.node_id!r} dials it")
            if channel.dialer is not None:
                channel.dialer.cancel()
            dialer = self._dial_forever(channel, address)
            channel.dialer = asyncio.get_running_loop().create_task(dialer)

    # -- sending ------------------------------------------------------------------

    def send(
        self,
        node_ids: Collection[str],
        message: Message,
        shared_groups: Mapping[str, tuple[RouteKey, ...]] | None = None,
    ) -> Awaitable[None] | None:
        """Forward ``message`` to each of ``node_ids`` (never to this node).

        QoS 1/2: returns an awaitable that completes when every target has
        handed the message to its local subscribers, or raises
        ``ClusterUnavailable``. QoS 0: returns None, or an awaitable to wait on
        before reading more from the publisher when a target is at its limit.
        ``shared_groups`` names, per target, the shared groups it serves.
        """
        if not node_ids:
            return None
        waiter = None
        if message.qos:
            waiter = _Countdown(asyncio.get_running_loop().create_future(), len(node_ids))
        plain = Forwarded(message)
        blocked: list[asyncio.Future[None]] = []
        channels = self._channels
        for node_id in node_ids:
            channel = channels.get(node_id)
            if channel is None:
                raise UnknownPeer(f"node {self.node_id!r} has no forwarding link to {node_id!r}")
            item = plain
            if shared_groups:
                groups = shared_groups.get(node_id)
                if groups:
                    item = Forwarded(message, groups)
            room = channel.enqueue(item, waiter)
            if room is not None:
                blocked.append(room)
        if waiter is not None:
            return waiter.future
        if not blocked:
            return None
        return blocked[0] if len(blocked) == 1 else asyncio.gather(*blocked)

    def kick(self, node_id: str, client_id: str, epoch: int) -> Awaitable[None]:
        """Tell ``node_id`` that ``client_id`` is now owned at ``epoch``; done when applied."""
        return self._send_control(node_id, Kick(client_id, epoch))

    def hand_over(self, node_id: str, handover: Handover) -> Awaitable[None]:
        """Move a session's messages to ``node_id``; done when it has taken them."""
        return self._send_control(node_id, handover)

    def barrier(self, node_id: str, token: int, applied: int) -> None:
        """Ask ``node_id`` for ``BarrierReply(token)`` once it has applied ``applied``
        commands; nothing comes back if it cannot (the asker's wait is bounded)."""
        self._channel(node_id).enqueue(Barrier(token, applied), None)

    def reply_barrier(self, node_id: str, token: int) -> None:
        """Answer ``node_id``'s barrier, behind everything already queued for it."""
        self._channel(node_id).enqueue(BarrierReply(token), None)

    def _send_control(self, node_id: str, item: Item) -> Awaitable[None]:
        waiter = _Countdown(asyncio.get_running_loop().create_future(), 1)
        self._channel(node_id).enqueue(item, waiter)
        return waiter.future

    def declared_down(self, node_id: str) -> list[tuple[Item, Waiter | None]]:
        """The cluster declared ``node_id`` dead: everything its link held, oldest first,
        waiters included, for the cluster to send where its sessions went
        (``replication/rehoming.py``)."""
        channel = self._channels.get(node_id)
        return [] if channel is None else channel.declared_down()

    def _channel(self, node_id: str) -> PeerChannel:
        channel = self._channels.get(node_id)
        if channel is None:
            raise UnknownPeer(f"node {self.node_id!r} has no forwarding link to {node_id!r}")
        return channel

    def status(self) -> dict[str, PeerStatus]:
        return {node_id: ch.status() for node_id, ch in sorted(self._channels.items())}

    # -- dialing ------------------------------------------------------------------

    async def _dial_forever(self, peer: PeerChannel, address: str) -> None:
        """Keep one stream to ``peer`` open; the gRPC channel lives as long as this task."""
        settings = self.settings
        backoff = (settings.reconnect_min, settings.reconnect_max)
        options = channel_options(peer.node_id, self.tls is not None, settings.keepalive, backoff)
        if self.tls is not None:
            channel = aio.secure_channel(address, self.tls.channel_credentials(), options=options)
        else:
            channel = aio.insecure_channel(address, options=options)
        delay = settings.reconnect_min
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._dial_once(peer, channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = peer.link.last_error = _describe(exc)
                    log.info("forwarding stream to node %r: %s", peer.node_id, error)
                if time.monotonic() - started > settings.reconnect_max:
                    delay = settings.reconnect_min
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, settings.reconnect_max)
        finally:
            await channel.close()

    async def _dial_once(self, peer: PeerChannel, channel: aio.Channel) -> None:
        metadata = hello_metadata(
            "dial", self.node_id, peer.node_id, [self.incarnation], self.secret
        )
        call = channel.stream_stream(PATH)(metadata=metadata)
        try:
            answer = await call.initial_metadata()
            if not any(key == NODE_KEY for key, _ in answer or ()):
                code = await call.code()
                raise PeerRejected(f"{code.name}: {await call.details()}")
            hello = check_hello(answer, "accept", self.node_id, self.secret, self.incarnation)
            if hello.node_id != peer.node_id:
                raise PeerRejected(f"{peer.address} answered as node {hello.node_id!r}")
            await peer.run(call.read, call.write, hello.incarnation)
        finally:
            call.cancel()

    # -- accepting ----------------------------------------------------------------

    async def _serve(self, request_iterator: Any, context: aio.ServicerContext) -> None:
        if self._stopping or self.inbox is None:
            state = "stopping" if self._stopping else "not started"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"node {self.node_id!r} is {state}")
        try:
            hello = check_hello(context.invocation_metadata(), "dial", self.node_id, self.secret)
            if self.tls is not None:
                check_identity(hello.node_id, context.auth_context())
            if not hello.node_id < self.node_id:
                raise PeerRejected(
                    f"node {hello.node_id!r} dialed node {self.node_id!r}: "
                    "only the node whose id sorts first dials"
                )
        except PeerRejected as exc:
            log.warning("forwarding: refused a stream from %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            return
        peer = self._channels.get(hello.node_id)
        if peer is None:
            peer = self._channels[hello.node_id] = PeerChannel(self, hello.node_id, None)
        answer = hello_metadata(
            "accept",
            self.node_id,
            hello.node_id,
            [self.incarnation, hello.incarnation],
            self.secret,
        )
        await context.send_initial_metadata(answer)
        try:
            await peer.accept(context.read, context.write, hello.incarnation)
        except FrameError as exc:
            error = peer.link.last_error = _describe(exc)
            log.warning("forwarding stream from node %r: %s", peer.node_id, error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StreamEnded as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except (ConnectionError, aio.AioRpcError) as exc:
            error = peer.link.last_error = _describe(exc)
            log.info("forwarding stream from node %r: %s", peer.node_id, error)


def _describe(exc: BaseException) -> str:
    """What broke a stream, for status() and the log."""
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, FrameError):
        return f"broken peer: {exc}"
    if isinstance(exc, (PeerRejected, ConnectionError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
