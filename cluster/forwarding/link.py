"""The reliable link to one peer, without I/O: what makes a broken stream lose nothing.

A ``ReliableLink`` is fed what the node sends and the frames the peer sends
back, and says what goes out next. It opens no socket, starts no task and
reads no clock (the ``encode`` it is given stamps frames), so a unit test can
drive it by script: offer items, take frames, feed acknowledgements.

Sending. ``offer`` appends to the queue; ``next_frame`` puts everything
queued (up to ``max_frame_items``/``max_frame_bytes``) into one frame. Each
frame that carries items gets the next sequence number and stays in
``unacked`` until the peer acknowledges it, cumulatively, by sequence
number; then each item's waiter is told (``Waiter.hit``).

Receiving. ``receive`` returns the items of a frame the first time its
sequence number is seen, advances the receive cursor to it and owes the
peer an acknowledgement (carried by the next frame out). A frame at or
below the cursor is a duplicate: dropped, acknowledged again. The cursor is
tied to the sender's incarnation (a random number per process, exchanged
in the handshake): a peer that restarted starts a new one.

After a reconnect, ``resend`` gives every unacknowledged frame, in order, to
send before anything new; the receiver drops those it had. Acknowledgements
name the incarnation they count frames of, so an ack in a frame resent to a
restarted node is not mistaken for one of its new frames.

Backpressure. The link counts the items it holds (queued + unacknowledged)
against ``queue_limit``; ``offer`` says when that limit is reached, and
``has_room`` when the peer has taken enough for senders to go on.

Giving up. ``give_up`` discards what the link holds and fails its waiters
with ``ClusterUnavailable``; ``declared_down`` (the cluster declared the peer
dead) hands it all back, waiters included, instead. Either way, until the
stream is back (``stream_started``), offers are dropped (counted) and their
waiters fail at once. The receiver tolerates the resulting gap in sequence
numbers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from raftmq.node.hooks import ClusterUnavailable

from .frames import MAX_FRAME_BYTES, Forwarded, Frame, Handover, Item

log = logging.getLogger("raftmq.cluster.forwarding")

Encode = Callable[[int, int, Sequence[Item], int], bytes]
"""(seq, ack, items, ack incarnation) -> the bytes of one frame as it goes out."""


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
    hold_for_node_down: bool = False
    """Never give up by time on a peer once reached: what waits for it is handed back
    when the cluster declares it down (SWIM is on), not failed."""
    keepalive: float = 10.0


class Waiter(Protocol):
    """Who waits for an item to be taken by its peer (one send may wait on several)."""

    def hit(self) -> None:
        """The peer acknowledged the item."""

    def fail(self, exc: BaseException) -> None:
        """The item will never be acknowledged."""


class SentFrame:
    __slots__ = ("batch", "data", "seq")

    def __init__(self, seq: int, data: bytes, batch: list[tuple[Item, Waiter | None]]) -> None:
        self.seq = seq
        self.data = data
        self.batch = batch
        """The frame's items with their waiters: what ``declared_down`` re-homes."""


def item_size(item: Item) -> int:
    """Rough encoded size, to keep frames near ``max_frame_bytes``."""
    if type(item) is Forwarded:
        return len(item.message.payload) + len(item.message.topic) + 32
    if type(item) is Handover:
        held = item.messages
        deliveries = [*held.queued, *(o.delivery for o in held.outgoing.values())]
        return sum(len(d.message.payload) + len(d.message.topic) + 48 for d in deliveries) + 64
    return 64


class ReliableLink:
    """Sequence numbers, acknowledgements, resends and queue bounds towards one peer."""

    def __init__(
        self, peer_id: str, incarnation: int, settings: ForwardingSettings, encode: Encode
    ) -> None:
        """``incarnation`` is this process's: only acks that name it count."""
        self.peer_id = peer_id
        self.incarnation = incarnation
        self.settings = settings
        self.limit = settings.queue_limit
        self._encode = encode
        # sending side
        self.pending: deque[tuple[Item, Waiter | None]] = deque()
        self.unacked: deque[SentFrame] = deque()
        self.next_seq = 1
        self.outstanding = 0
        """Items held: queued plus sent and not yet acknowledged."""
        # receiving side
        self.peer_incarnation: int | None = None
        self.cursor = 0
        self.ack_due = False
        # reachability
        self.unreachable = False
        self.last_error: str | None = None
        """What broke the latest stream that broke (kept after a reconnect)."""
        # counters
        self.frames_sent = 0
        self.frames_received = 0
        self.resends = 0
        self.duplicates = 0
        self.dropped = 0

    # -- sending -----------------------------------------------------------------

    def offer(self, item: Item, waiter: Waiter | None) -> bool:
        """Queue ``item``; True when the link is now at its limit (wait for ``has_room``)."""
        if self.unreachable:
            self.dropped += 1
            if waiter is not None:
                waiter.fail(self.unavailable())
            return False
        self.pending.append((item, waiter))
        self.outstanding += 1
        return self.outstanding >= self.limit

    @property
    def has_room(self) -> bool:
        return self.outstanding < self.limit

    @property
    def wants_to_send(self) -> bool:
        """Items are queued, or the peer is owed an acknowledgement."""
        return bool(self.pending) or self.ack_due

    def resend(self) -> list[bytes]:
        """Every frame sent and not acknowledged, oldest first: a new stream starts with them."""
        return [sent.data for sent in self.unacked]

    def count_sent(self, resent: bool = False) -> None:
        """One frame went out (``resent``: one of ``resend``'s)."""
        self.frames_sent += 1
        if resent:
            self.resends += 1

    def next_frame(self) -> bytes | None:
        """Everything queued (within the frame caps) as one frame, plus our acknowledgement.

        None when nothing can go: the only queued item could not be encoded
        (its waiter was failed) and no acknowledgement is owed.
        """
        ack = self.cursor
        self.ack_due = False
        pending = self.pending
        if not pending:
            return self._encode(0, ack, (), self.peer_incarnation or 0)
        settings = self.settings
        batch: list[tuple[Item, Waiter | None]] = []
        budget = settings.max_frame_bytes
        while pending and len(batch) < settings.max_frame_items:
            size = item_size(pending[0][0])
            if batch and size > budget:
                break
            batch.append(pending.popleft())
            budget -= size
        data = self._encode_batch(batch, ack)
        if data is None:
            self.ack_due = True  # still owed to the peer
            return None
        seq = self.next_seq
        self.next_seq += 1
        self.unacked.append(SentFrame(seq, data, batch))
        return data

    def _encode_batch(self, batch: list[tuple[Item, Waiter | None]], ack: int) -> bytes | None:
        """Encode; an item that cannot be encoded fails its sender instead of the stream."""
        try:
            items = [item for item, _ in batch]
            data = self._encode(self.next_seq, ack, items, self.peer_incarnation or 0)
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
                return self._encode_batch(batch, ack)
            item, waiter = batch[0]
            log.error("forwarding to node %r: cannot send %.300r: %s", self.peer_id, item, exc)
            self.outstanding -= 1
            if waiter is not None:
                waiter.fail(exc)
            return None

    # -- receiving ---------------------------------------------------------------

    def stream_started(self, peer_incarnation: int) -> None:
        """A stream to the peer is up; a new ``peer_incarnation`` means it restarted."""
        if peer_incarnation != self.peer_incarnation:
            if self.peer_incarnation is not None:
                log.info("node %r restarted: new receive cursor", self.peer_id)
            self.peer_incarnation = peer_incarnation
            self.cursor = 0
        self.unreachable = False

    def receive(self, frame: Frame) -> list[Item]:
        """Take the peer's acknowledgement; the frame's items if they are new here, else []."""
        self.frames_received += 1
        if frame.ack and frame.ack_incarnation == self.incarnation:
            self._acknowledged(frame.ack)
        seq = frame.seq
        if not seq:
            return []
        self.ack_due = True
        if seq <= self.cursor:
            self.duplicates += 1
            return []
        self.cursor = seq
        return frame.items

    def _acknowledged(self, ack: int) -> None:
        unacked = self.unacked
        while unacked and unacked[0].seq <= ack:
            sent = unacked.popleft()
            self.outstanding -= len(sent.batch)
            for _, waiter in sent.batch:
                if waiter is not None:
                    waiter.hit()

    # -- giving up -----------------------------------------------------------------

    def unavailable(self) -> ClusterUnavailable:
        return ClusterUnavailable(
            f"forwarding to node {self.peer_id!r}: no stream for "
            f"{self.settings.unreachable_timeout:g} s "
            f"({self.last_error or 'never connected'})"
        )

    def give_up(self) -> None:
        """No stream for too long: discard what is held; offers fail until one is back."""
        self.unreachable = True
        log.warning(
            "forwarding to node %r: unreachable (%s); discarding %d items",
            self.peer_id,
            self.last_error or "never connected",
            self.outstanding,
        )
        self.fail_all(self.unavailable())

    def fail_all(self, exc: BaseException) -> None:
        """Discard everything held for the peer; waiting senders get ``exc``."""
        for _, waiter in self.pending:
            if waiter is not None:
                waiter.fail(exc)
        for sent in self.unacked:
            for _, waiter in sent.batch:
                if waiter is not None:
                    waiter.fail(exc)
        self.dropped += self.outstanding
        self.pending.clear()
        self.unacked.clear()
        self.outstanding = 0

    def declared_down(self, streaming: bool) -> list[tuple[Item, Waiter | None]]:
        """The cluster declared the peer dead: everything held for it, oldest first, with
        its waiters, for the cluster to send where the peer's sessions went (nothing is
        failed or counted as dropped here). Unless a stream is up (``streaming``: the
        peer came back before the declaration took effect, and rejoins), offers fail
        until one is."""
        held = [entry for sent in self.unacked for entry in sent.batch]
        held.extend(self.pending)
        self.unreachable = not streaming
        self.pending.clear()
        self.unacked.clear()
        self.outstanding = 0
        return held
