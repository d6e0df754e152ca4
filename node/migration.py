"""Sessions moving between nodes: taken at CONNECT, surrendered, adopted from a dead node.

A persistent session moves in two parts (``hooks.py``): its subscriptions and
expiry come from the replicated state at once, so the new node routes them
before anything else; the messages the old node held come over the
forwarding stream once the cluster says it is safe to let go
(``release``), and go before anything that arrived meanwhile, without the
copies both nodes got (``handover_merge.py``).
"""

from __future__ import annotations

import asyncio
import logging

from . import handover_merge
from .context import NodeContext, NodePart
from .hooks import Claim, SessionMessages, SessionTransfer
from .reason_codes import ReasonCode
from .session import NEVER_EXPIRES, Session
from .sessions import SessionRegistry
from .subscribing import Subscriptions

log = logging.getLogger("raftmq.broker")

LATE_WINDOW = 60.0
"""How long after a move a session keeps its ``first_direct`` record for late messages."""


class SessionMigration(NodePart):
    """This node's side of every session move."""

    def __init__(
        self, node: NodeContext, sessions: SessionRegistry, subscriptions: Subscriptions
    ) -> None:
        super().__init__(node)
        self.sessions = sessions
        self.subscriptions = subscriptions

    async def take(self, client_id: str, claim: Claim, transfer: SessionTransfer) -> None:
        """A session the client left on another node (or that this node lost) becomes ours.

        Its subscriptions are routed here first, so that what is published from
        then on reaches it here; then the messages the previous node held go in
        front of whatever arrived meanwhile.
        """
        stale = self.sessions.get(client_id)
        if stale is not None and _still_holds(stale, transfer):
            # This node held the session last (the claim in between never became a
            # connection): its messages are here, and its subscriptions routed.
            session = stale
            session.expiry_interval = transfer.expiry_interval
        else:
            if stale is not None:
                self.sessions.end(stale)
            session = self._register(client_id, transfer)
        # What comes late (from the old node, or through it) is judged by this record.
        session.first_direct = {}
        asyncio.get_running_loop().call_later(LATE_WINDOW, _forget_direct, session)
        if session is not stale:
            await asyncio.gather(
                *(self.subscriptions.add(client_id, s) for s in session.subscriptions.values())
            )
        held = await self.hooks.handed_over(client_id, claim)
        if held is not None and self.sessions.get(client_id) is session:
            duplicates = handover_merge.merge(session, held)
            self.stats.handover_duplicates += len(duplicates)

    def _register(self, client_id: str, transfer: SessionTransfer) -> Session:
        """A disconnected session with ``transfer``'s subscriptions, registered on this node."""
        session = self.sessions.new(client_id)
        session.expiry_interval = transfer.expiry_interval
        session.subscriptions = dict(transfer.subscriptions)
        self.sessions.by_client[client_id] = session
        return session

    @staticmethod
    def journal_transferred(session: Session) -> None:
        """Write a session that arrived from another node to this node's disk store,
        in the order a restart reads it back: in flight first, then queued."""
        store = session.store
        assert store is not None
        for full_filter, sub in session.subscriptions.items():
            store.save_subscription(session, full_filter, sub)
        for packet_id, entry in session.outgoing.items():
            store.send_delivery(session, entry.delivery, packet_id)
            if entry.released:
                store.release_delivery(session, entry.delivery)
        for delivery in session.queue:
            if delivery.qos:
                store.queue_delivery(session, delivery)
        for packet_id in session.incoming_qos2:
            store.add_incoming(session, packet_id)

    def surrender(self, client_id: str, epoch: int, resumed: bool) -> bool:
        """Another node claimed ``client_id`` at ``epoch`` (``hooks.NodeEvents``); True
        when this node keeps the session for ``release``."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        client = session.connection
        if client is not None:
            if client.epoch >= epoch:
                return False  # a newer claim of this node's own: nothing to give up
            client.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
            session = self.sessions.get(client_id)
            if session is None:
                return False  # it ended with its connection (session expiry 0)
        if not resumed:
            self.sessions.end(session)
            return False
        # The client came back elsewhere before any will delay ran out: no will (MQTT 5
        # §3.1.3.2.2). The session stays, offline and taking messages, until ``release``.
        session.will = None
        return True

    def release(self, client_id: str, final: bool) -> SessionMessages | None:
        """What a surrendered session holds, for its new owner
        (``hooks.NodeEvents.release_session``); ``final`` ends it, else it stays to
        catch what still comes this way, and gives that up on the next call."""
        session = self.sessions.get(client_id)
        if session is None or session.connection is not None:
            return None  # ended meanwhile, or its client is back here
        held = SessionMessages(
            list(session.queue), dict(session.outgoing), set(session.incoming_qos2)
        )
        held.seen = handover_merge.marks(
            [*held.queued, *(o.delivery for o in held.outgoing.values())]
        )
        held.seen[self.stamps.node_id] = self.stamps.last
        if final:
            self.sessions.end(session)
        else:
            session.clear_delivery_state()
        return held

    def take_late(self, client_id: str, held: SessionMessages) -> bool:
        """Messages handed over after the session resumed here (``hooks.NodeEvents``):
        delivered as new, after what the session got meanwhile. False: no such session."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        deliveries = handover_merge.late(held, session.first_direct or {})
        if not deliveries:
            return True
        first_direct, session.first_direct = session.first_direct, None
        for delivery in deliveries:  # late, not direct: not recorded as first arrivals
            session.deliver(delivery)
        session.first_direct = first_direct
        self.stats.late_handovers += 1
        log.info("client %r: %d messages handed over late", client_id, len(deliveries))
        return True

    def adopt(self, client_id: str, epoch: int, transfer: SessionTransfer) -> None:
        """Hold a dead node's persistent session until its client returns (``hooks.NodeEvents``)."""
        if self.sessions.get(client_id) is not None:
            return  # already here (restored from this node's store): it has the messages
        session = self._register(client_id, transfer)
        self.sessions.bind_store(session)
        if session.expiry_interval != NEVER_EXPIRES:
            self.sessions.expire_in(session, session.expiry_interval, epoch)
        if session.store is not None:
            self.journal_transferred(session)
            session.store.save_session(session)
        self.background.run(self._subscribe(session))

    async def _subscribe(self, session: Session) -> None:
        for sub in list(session.subscriptions.values()):
            await self.subscriptions.add(session.client_id, sub)


def _forget_direct(session: Session) -> None:
    session.first_direct = None


def _still_holds(stale: Session, transfer: SessionTransfer) -> bool:
    """Whether ``stale``, a session this node still has, is the one ``transfer`` resumes."""
    return stale.connection is None and stale.subscriptions == transfer.subscriptions
