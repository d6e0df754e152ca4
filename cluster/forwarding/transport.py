"""Forwarding between nodes: one gRPC stream per pair of nodes, carrying Cap'n Proto frames.

Each peer has a ``PeerLink`` that outlives the streams it uses. Of two nodes,
the one whose id sorts first dials and redials with backoff; the other
accepts, and a newer stream from the same peer replaces an older one. Both
directions of the one stream carry data frames and acknowledgements.

Sending. ``Forwarder.send`` appends to each target link's queue and wakes its
writer. The writer runs at the next loop turn and puts everything queued into
one frame (up to ``max_frame_items``/``max_frame_bytes``): batching comes from
the loop, not from timers. Each frame that carries items gets the next
sequence number of this process and stays in the link's ``unacked`` list
until the peer acknowledges it, cumulatively, by sequence number.

Receiving. The reader hands each item of a frame to the node's handlers, in
order, then advances the receive cursor of that peer to the frame's sequence
number and acknowledges it (piggybacked on the next outgoing frame). The
cursor lives as long as this process and is tied to the sender's
incarnation (a random number per process, exchanged in the handshake).

After a reconnect, the sender first resends every unacknowledged frame, in
order, then continues; the receiver drops frames at or below its cursor. So a
broken stream loses nothing and duplicates nothing, and because one peer's
frames are handled strictly in order, order per (publisher node, topic) holds.
(A receiver that restarts loses its cursor with the rest of its memory: the
new process gets again what the old one handled but had not acknowledged.)
Acknowledgements name the incarnation they count frames of, so an ack in a
frame resent to a restarted node is not mistaken for one of its new frames.
A forwarded publish is handed to ``on_publish`` only: it is never forwarded
again, by construction.

Backpressure. A link counts the items it holds (queued + unacknowledged)
against ``queue_limit``. QoS 1/2 sends return an awaitable that completes when
every target acknowledged the message, which is also when its place frees up.
A QoS 0 send returns None, unless a target is at its limit: then it returns
an awaitable that completes when that target has room again. The caller
(the node) stops reading from the publisher until it completes, so the limit
is exceeded by at most one message per publishing connection.

Unreachable peers. When a link has had no stream for ``unreachable_timeout``
seconds, it gives up: what it held is discarded, waiting QoS 1/2 publishers
get ``ClusterUnavailable`` (the node answers them "server unavailable"), and
until a stream is back, QoS 0 sends to it are dropped (counted) and QoS 1/2
sends fail at once. The receiver tolerates the resulting gap in sequence
numbers. Publishes are never acknowledged to a publisher unless delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc import aio

from raftmq.node.hooks import ClusterUnavailable
from raftmq.node.message import Message

from ..rpc import channel_options, common_options, unwrap, wrap
from ..tls import NodeTLS
from .frames import (
    MAX_FRAME_BYTES,
    Forwarded,
    FrameError,
    Handover,
    Item,
    Kick,
    SharedGroup,
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

log = logging.getLogger("raftmq.cluster.forwarding")

Read = Callable[[], Awaitable[Any]]
Write = Callable[[bytes], Awaitable[None]]


class StreamEnded(Exception):
    """This node ended a stream: a newer one from the same peer replaced it, or it is closing."""


class UnknownPeer(ValueError):
    """A send named a node this forwarder has no link to (see ``add_peer``)."""


class ForwardingHandlers(Protocol):
    """What a node does with what its peers send. Called on the event loop.

    Handlers are synchronous on purpose: a frame is acknowledged once they
    have returned for each of its items, and a stream can break only between
    frames, never half way through one. An exception is logged and the item
    counted as handled, so one bad item cannot wedge the stream.
    """

    def on_publish(
        self, origin: str, message: Message, shared_groups: tuple[SharedGroup, ...]
    ) -> None:
        """Deliver to local subscribers only (and to ``shared_groups`` here)."""

    def on_kick(self, origin: str, client_id: str, epoch: int) -> None: ...

    def on_handover(self, origin: str, handover: Handover) -> None: ...


@dataclass(slots=True, frozen=True)
class ForwardingSettings:
    queue_limit: int = 10_000
    """Items held per peer (queued + unacknowledged) before publishers are made to wait."""
    max_frame_items: int = 1_000
    max_frame_bytes: int = 1 << 20
    """Soft cap on the payload bytes of one frame (one larger item still goes alone)."""
    reconnect_min: float = 0.05
    reconnect_max: float = 2.0
    unreachable_timeout: float = 10.0
    keepalive: float = 10.0


@dataclass(slots=True, frozen=True)
class PeerStatus:
    node_id: str
    address: str | None
    dials: bool
    """True when this node opens the stream (its id sorts first)."""
    connected: bool
    unreachable: bool
    queued: int
    """Items waiting for the next frame."""
    unacked: int
    """Items sent (or to resend) and not yet acknowledged."""
    frames_sent: int
    frames_received: int
    resends: int
    """Frames sent again after a reconnect."""
    duplicates: int
    """Frames received again and dropped."""
    dropped: int
    """Items discarded because the peer was unreachable."""
    last_error: str | None
    """What broke the latest stream that broke (kept after a reconnect)."""


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


class _SentFrame:
    __slots__ = ("count", "data", "seq", "waiters")

    def __init__(self, seq: int, data: bytes, count: int, waiters: list[_Countdown]) -> None:
        self.seq = seq
        self.data = data
        self.count = count
        self.waiters = waiters


def _item_size(item: Item) -> int:
    """Rough encoded size, to keep frames near ``max_frame_bytes``."""
    if type(item) is Forwarded:
        return len(item.message.payload) + len(item.message.topic) + 32
    if type(item) is Handover:
        deliveries = [*item.queued, *(o.delivery for o in item.outgoing.values())]
        return sum(len(d.message.payload) + len(d.message.topic) + 48 for d in deliveries) + 64
    return 64


class PeerLink:
    """Everything this node keeps about one peer, across the streams to it."""

    def __init__(self, forwarder: Forwarder, node_id: str, address: str | None) -> None:
        self.forwarder = forwarder
        self.node_id = node_id
        self.address = address
        self.dials = forwarder.node_id < node_id
        self.limit = forwarder.settings.queue_limit
        # sending side
        self.pending: deque[tuple[Item, _Countdown | None]] = deque()
        self.unacked: deque[_SentFrame] = deque()
        self.next_seq = 1
        self.outstanding = 0
        self.room: asyncio.Future[None] | None = None
        self.wake = asyncio.Event()
        # receiving side
        self.peer_incarnation: int | None = None
        self.cursor = 0
        self.ack_due = False
        # streams
        self.stream_task: asyncio.Task[Any] | None = None
        """The gRPC handler serving the current inbound stream."""
        self.stream_stop: asyncio.Event | None = None
        """Set to end the current inbound stream (replaced, or the peer removed)."""
        self.dialer: asyncio.Task[None] | None = None
        self.connected = False
        self.unreachable = False
        self.closed = False
        self.give_up_timer: asyncio.TimerHandle | None = None
        # counters
        self.frames_sent = 0
        self.frames_received = 0
        self.resends = 0
        self.duplicates = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._arm_give_up()

    # -- queueing (called by Forwarder) ------------------------------------------

    def enqueue(self, item: Item, waiter: _Countdown | None) -> asyncio.Future[None] | None:
        """Queue ``item``; returns a future to wait on when this link is at its limit."""
        if self.unreachable:
            self.dropped += 1
            if waiter is not None:
                waiter.fail(self._unavailable())
            return None
        self.pending.append((item, waiter))
        self.outstanding += 1
        self.wake.set()
        if self.outstanding < self.limit:
            return None
        if self.room is None:
            self.room = asyncio.get_running_loop().create_future()
        return self.room

    def _unavailable(self) -> ClusterUnavailable:
        return ClusterUnavailable(
            f"forwarding to node {self.node_id!r}: no stream for "
            f"{self.forwarder.settings.unreachable_timeout:g} s "
            f"({self.last_error or 'never connected'})"
        )

    def _on_ack(self, ack: int) -> None:
        unacked = self.unacked
        while unacked and unacked[0].seq <= ack:
            sent = unacked.popleft()
            self.outstanding -= sent.count
            for waiter in sent.waiters:
                waiter.hit()
        if self.room is not None and self.outstanding < self.limit:
            self.room.set_result(None)
            self.room = None

    # -- reachability -----------------------------------------------------------

    def _arm_give_up(self) -> None:
        if self.give_up_timer is None and not self.unreachable and not self.closed:
            loop = asyncio.get_running_loop()
            timeout = self.forwarder.settings.unreachable_timeout
            self.give_up_timer = loop.call_later(timeout, self._give_up)

    def _give_up(self) -> None:
        self.give_up_timer = None
        self.unreachable = True
        log.warning(
            "forwarding to node %r: unreachable (%s); discarding %d items",
            self.node_id,
            self.last_error or "never connected",
            self.outstanding,
        )
        self.fail_all(self._unavailable())

    def fail_all(self, exc: BaseException) -> None:
        """Discard everything held for the peer; waiting publishers get ``exc``."""
        for _, waiter in self.pending:
            if waiter is not None:
                waiter.fail(exc)
        for sent in self.unacked:
            for waiter in sent.waiters:
                waiter.fail(exc)
        self.dropped += self.outstanding
        self.pending.clear()
        self.unacked.clear()
        self.outstanding = 0
        if self.room is not None:
            self.room.set_result(None)  # QoS 0 publishers go on; their messages are dropped
            self.room = None

    def close(self, exc: BaseException) -> None:
        self.closed = True
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
            self.give_up_timer = None
        self.fail_all(exc)
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
        if peer_incarnation != self.peer_incarnation:
            if self.peer_incarnation is not None:
                log.info("node %r restarted: new receive cursor", self.node_id)
            self.peer_incarnation = peer_incarnation
            self.cursor = 0
        self.connected = True
        self.unreachable = False
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
            self.give_up_timer = None
        tasks = [
            asyncio.create_task(self._read_loop(read)),
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
        for sent in list(self.unacked):
            await write(sent.data)
            self.resends += 1
            self.frames_sent += 1
        wake = self.wake
        while True:
            if not self.pending and not self.ack_due:
                wake.clear()
                await wake.wait()
                continue
            data = self._next_frame()
            if data is not None:
                await write(data)
                self.frames_sent += 1

    def _next_frame(self) -> bytes | None:
        """Everything queued (within the frame caps) as one frame, plus our acknowledgement."""
        ack = self.cursor
        self.ack_due = False
        pending = self.pending
        if not pending:
            return wrap(encode_frame(0, ack, (), time.monotonic(), self.peer_incarnation or 0))
        settings = self.forwarder.settings
        batch: list[tuple[Item, _Countdown | None]] = []
        budget = settings.max_frame_bytes
        while pending and len(batch) < settings.max_frame_items:
            size = _item_size(pending[0][0])
            if batch and size > budget:
                break
            batch.append(pending.popleft())
            budget -= size
        data = self._encode(batch, ack)
        if data is None:
            self.ack_due = True  # still owed to the peer
            return None
        seq = self.next_seq
        self.next_seq += 1
        waiters = [waiter for _, waiter in batch if waiter is not None]
        self.unacked.append(_SentFrame(seq, data, len(batch), waiters))
        return data

    def _encode(self, batch: list[tuple[Item, _Countdown | None]], ack: int) -> bytes | None:
        """Encode; an item that cannot be encoded fails its sender instead of the stream."""
        now = time.monotonic()
        seq = self.next_seq
        try:
            items = [item for item, _ in batch]
            data = wrap(encode_frame(seq, ack, items, now, self.peer_incarnation or 0))
            if len(data) <= MAX_FRAME_BYTES:
                return data
            if len(batch) > 1:
                raise ValueError("frame over the size limit")
            raise ValueError(
                f"item of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit"
            )
        except Exception as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                # Put the second half back and try the first half alone.
                self.pending.extendleft(reversed(batch[half:]))
                del batch[half:]
                return self._encode(batch, ack)
            item, waiter = batch[0]
            log.error("forwarding to node %r: cannot send %.300r: %s", self.node_id, item, exc)
            self.outstanding -= 1
            if waiter is not None:
                waiter.fail(exc)
            return None

    async def _read_loop(self, read: Read) -> None:
        origin = self.node_id
        handlers = self.forwarder.handlers
        incarnation = self.forwarder.incarnation
        while True:
            raw = await read()
            if raw is aio.EOF:
                raise ConnectionError(f"node {origin!r} closed the stream")
            frame = decode_frame(unwrap(raw), time.monotonic())
            self.frames_received += 1
            if frame.ack and frame.ack_incarnation == incarnation:
                self._on_ack(frame.ack)
            seq = frame.seq
            if not seq:
                continue
            if seq > self.cursor:
                for item in frame.items:
                    try:
                        if type(item) is Forwarded:
                            handlers.on_publish(origin, item.message, item.shared_groups)
                        elif type(item) is Kick:
                            handlers.on_kick(origin, item.client_id, item.epoch)
                        else:
                            handlers.on_handover(origin, item)
                    except Exception:
                        log.exception("from node %r: handling %r failed", origin, item)
                self.cursor = seq
            else:
                self.duplicates += 1
            self.ack_due = True
            self.wake.set()

    def status(self) -> PeerStatus:
        return PeerStatus(
            node_id=self.node_id,
            address=self.address,
            dials=self.dials,
            connected=self.connected,
            unreachable=self.unreachable,
            queued=len(self.pending),
            unacked=self.outstanding - len(self.pending),
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            resends=self.resends,
            duplicates=self.duplicates,
            dropped=self.dropped,
            last_error=self.last_error,
        )


class Forwarder:
    """This node's end of every forwarding stream: a gRPC server, and dialers for its peers."""

    def __init__(
        self,
        node_id: str,
        listen: str,
        handlers: ForwardingHandlers,
        *,
        tls: NodeTLS | None = None,
        secret: str | bytes | None = None,
        settings: ForwardingSettings | None = None,
    ) -> None:
        self.node_id = node_id
        self.listen = listen
        self.handlers = handlers
        self.tls = tls
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.settings = settings or ForwardingSettings()
        self.incarnation = int.from_bytes(os.urandom(8), "big") >> 1
        self.port: int | None = None
        self._links: dict[str, PeerLink] = {}
        self._server: aio.Server | None = None
        self._services: list[grpc.GenericRpcHandler] = []
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------

    def add_service(self, handler: grpc.GenericRpcHandler) -> None:
        """Serve another gRPC service (the node's admin service) on this port; before start()."""
        if self._server is not None:
            raise RuntimeError(f"node {self.node_id!r}: add_service after the server started")
        self._services.append(handler)

    async def start(self) -> None:
        """Listen for peers; ``self.port`` is the bound port (useful with port 0)."""
        server = aio.server(options=common_options(self.settings.keepalive))
        handler = grpc.stream_stream_rpc_method_handler(self._serve)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}), *self._services)
        )
        if self.tls is not None:
            port = server.add_secure_port(self.listen, self.tls.server_credentials())
        else:
            port = server.add_insecure_port(self.listen)
        if not port:
            raise OSError(f"forwarding: cannot listen on {self.listen!r}")
        self.port = port
        self._server = server
        await server.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        stopped = ClusterUnavailable(f"node {self.node_id!r}: forwarding stopped")
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.close(stopped)
        tasks = [task for link in links for task in (link.dialer, link.stream_task) if task]
        await asyncio.gather(*tasks, return_exceptions=True)

    def add_peer(self, node_id: str, address: str | None) -> None:
        """Know ``node_id`` (at ``address``, "host:port"); dial it if our id sorts first."""
        if node_id == self.node_id:
            raise ValueError(f"node {node_id!r} cannot be its own peer")
        link = self._links.get(node_id)
        if link is None:
            link = self._links[node_id] = PeerLink(self, node_id, address)
        elif address == link.address:
            return
        link.address = address
        if link.dials:
            if address is None:
                raise ValueError(f"node {node_id!r} needs an address: {self.node_id!r} dials it")
            if link.dialer is not None:
                link.dialer.cancel()
            dialer = self._dial_forever(link, address)
            link.dialer = asyncio.get_running_loop().create_task(dialer)

    def remove_peer(self, node_id: str) -> None:
        """Forget ``node_id``: what is held for it is dropped, its waiting publishers fail."""
        link = self._links.pop(node_id, None)
        if link is None:
            return
        link.close(ClusterUnavailable(f"node {node_id!r} left the cluster"))

    # -- sending ------------------------------------------------------------------

    def send(
        self,
        node_ids: Collection[str],
        message: Message,
        shared_groups: Mapping[str, tuple[SharedGroup, ...]] | None = None,
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
        links = self._links
        for node_id in node_ids:
            link = links.get(node_id)
            if link is None:
                raise UnknownPeer(f"node {self.node_id!r} has no forwarding link to {node_id!r}")
            item = plain
            if shared_groups:
                groups = shared_groups.get(node_id)
                if groups:
                    item = Forwarded(message, groups)
            room = link.enqueue(item, waiter)
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

    def _send_control(self, node_id: str, item: Item) -> Awaitable[None]:
        link = self._links.get(node_id)
        if link is None:
            raise UnknownPeer(f"node {self.node_id!r} has no forwarding link to {node_id!r}")
        waiter = _Countdown(asyncio.get_running_loop().create_future(), 1)
        link.enqueue(item, waiter)
        return waiter.future

    def status(self) -> dict[str, PeerStatus]:
        return {node_id: link.status() for node_id, link in sorted(self._links.items())}

    # -- dialing ------------------------------------------------------------------

    async def _dial_forever(self, link: PeerLink, address: str) -> None:
        """Keep one stream to ``link``'s peer open; the channel lives as long as this task."""
        settings = self.settings
        backoff = (settings.reconnect_min, settings.reconnect_max)
        options = channel_options(link.node_id, self.tls is not None, settings.keepalive, backoff)
        if self.tls is not None:
            channel = aio.secure_channel(address, self.tls.channel_credentials(), options=options)
        else:
            channel = aio.insecure_channel(address, options=options)
        delay = settings.reconnect_min
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._dial_once(link, channel)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    link.last_error = _describe(exc)
                    log.info("forwarding stream to node %r: %s", link.node_id, link.last_error)
                if time.monotonic() - started > settings.reconnect_max:
                    delay = settings.reconnect_min
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, settings.reconnect_max)
        finally:
            await channel.close()

    async def _dial_once(self, link: PeerLink, channel: aio.Channel) -> None:
        metadata = hello_metadata(
            "dial", self.node_id, link.node_id, [self.incarnation], self.secret
        )
        call = channel.stream_stream(PATH)(metadata=metadata)
        try:
            answer = await call.initial_metadata()
            if not any(key == NODE_KEY for key, _ in answer or ()):
                code = await call.code()
                raise PeerRejected(f"{code.name}: {await call.details()}")
            hello = check_hello(answer, "accept", self.node_id, self.secret, self.incarnation)
            if hello.node_id != link.node_id:
                raise PeerRejected(f"{link.address} answered as node {hello.node_id!r}")
            await link.run(call.read, call.write, hello.incarnation)
        finally:
            call.cancel()

    # -- accepting ----------------------------------------------------------------

    async def _serve(self, request_iterator: Any, context: aio.ServicerContext) -> None:
        if self._stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"node {self.node_id!r} is stopping")
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
        link = self._links.get(hello.node_id)
        if link is None:
            link = self._links[hello.node_id] = PeerLink(self, hello.node_id, None)
        answer = hello_metadata(
            "accept",
            self.node_id,
            hello.node_id,
            [self.incarnation, hello.incarnation],
            self.secret,
        )
        await context.send_initial_metadata(answer)
        try:
            await link.accept(context.read, context.write, hello.incarnation)
        except FrameError as exc:
            link.last_error = _describe(exc)
            log.warning("forwarding stream from node %r: %s", link.node_id, link.last_error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StreamEnded as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        except (ConnectionError, aio.AioRpcError) as exc:
            link.last_error = _describe(exc)
            log.info("forwarding stream from node %r: %s", link.node_id, link.last_error)


def _describe(exc: BaseException) -> str:
    """What broke a stream, for status() and the log."""
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, FrameError):
        return f"broken peer: {exc}"
    if isinstance(exc, (PeerRejected, ConnectionError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
