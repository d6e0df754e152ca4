"""The sessions of this node: making and ending them, their expiry and will timers,
and bringing them back from the store after a restart.

A session outlives its connection (``session.py``). When the connection goes,
a will is scheduled (after its delay, at most the session's expiry) unless the
client said goodbye, and the session ends after its expiry interval. Ending a
session publishes a will still pending (MQTT 5 §3.1.3.2.2), removes its
subscriptions, and gives its client id back to the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .context import NodeContext, NodePart
from .protocol import ClientProtocol
from .publishing import Publishing
from .session import NEVER_EXPIRES, Outgoing, Session
from .store_records import StoredSession, StoredState
from .subscribing import Subscriptions

log = logging.getLogger("raftmq.broker")


class SessionRegistry(NodePart):
    """Every session this node holds, by client id (``by_client``)."""

    def __init__(
        self,
        node: NodeContext,
        by_client: dict[str, Session],
        subscriptions: Subscriptions,
        publishing: Publishing,
    ) -> None:
        super().__init__(node)
        self.by_client = by_client
        self.subscriptions = subscriptions
        self.publishing = publishing

    def __len__(self) -> int:
        return len(self.by_client)

    def held(self) -> tuple[int, int]:
        """(messages, payload bytes) the sessions hold, queued or in flight: $SYS's store figures.

        Walks every session, so it is for once per ``sys_interval``, not the hot path.
        """
        messages = payload = 0
        for session in self.by_client.values():
            outgoing = session.outgoing
            messages += len(session.queue) + len(outgoing)
            payload += session.queued_bytes
            payload += sum(len(sent.delivery.message.payload) for sent in outgoing.values())
        return messages, payload

    def get(self, client_id: str) -> Session | None:
        return self.by_client.get(client_id)

    def new(self, client_id: str) -> Session:
        """A fresh session, not yet registered."""
        cfg = self.config
        return Session(
            client_id,
            max_queued=cfg.max_queued_messages,
            max_queued_bytes=cfg.max_queued_bytes,
            stats=self.stats,
            overflow_drops_oldest=cfg.queue_overflow == "drop_oldest",
            queue_qos0=cfg.queue_qos0,
            drops=self.extensions,
        )

    def is_takeover(self, client_id: str) -> bool:
        """A CONNECT that replaces a live connection leaves the connection count as it is."""
        session = self.by_client.get(client_id) if client_id else None
        return session is not None and session.connection is not None

    def bind_store(self, session: Session) -> None:
        """At CONNECT: a persistent session is journaled (disk durability); a resumed
        one that no longer persists leaves the store."""
        session.expires_at = session.will_at = None
        store = self.store
        if session.persistent and store.durable:
            session.store = store
        elif session.store is not None:
            session.store.delete_session(session)
            session.store = None

    # -- a connection went -------------------------------------------------------

    def disconnected(self, client: ClientProtocol) -> None:
        """``client`` was this session's connection: schedule its will and its end."""
        session = client.session
        if session is None or session.connection is not client:
            return
        session.connection = None
        if client.clean_disconnect:
            session.will = None
        elif session.will is not None:
            self.schedule_will(session)
        if session.expiry_interval == 0:
            self.end(session, client.epoch)
        elif session.expiry_interval != NEVER_EXPIRES:
            self.expire_in(session, session.expiry_interval, client.epoch)
        if session.store is not None:
            session.store.save_session(session)

    def expire_in(self, session: Session, delay: float, release_epoch: int | None = None) -> None:
        """End ``session`` after ``delay`` seconds unless its client comes back."""
        session.expiry_handle = asyncio.get_running_loop().call_later(
            delay, self._expired, session, release_epoch
        )
        session.expires_at = time.time() + delay

    def _expired(self, session: Session, release_epoch: int | None) -> None:
        """Its expiry interval passed with the client away: counted for $SYS clients/expired."""
        self.stats.clients_expired += 1
        self.end(session, release_epoch)

    @staticmethod
    def stop_timers(session: Session) -> None:
        """The client is back (or the node stops): no expiry, no delayed will."""
        for handle in (session.expiry_handle, session.will_handle):
            if handle is not None:
                handle.cancel()
        session.expiry_handle = session.will_handle = None

    def schedule_will(self, session: Session) -> None:
        will = session.will
        assert will is not None
        delay = min(will.properties.get("will_delay_interval", 0), session.expiry_interval)
        if delay <= 0:
            self.publish_will(session)
        else:
            session.will_handle = asyncio.get_running_loop().call_later(
                delay, self.publish_will, session
            )
            session.will_at = time.time() + delay

    def publish_will(self, session: Session) -> None:
        will = session.will
        session.will = None
        session.will_handle = None
        session.will_at = None
        if will is None:
            return
        if session.store is not None:
            session.store.save_session(session)
        self.publishing.publish_will(will)
        self.background.run(self.hooks.register_will(session.client_id, None))

    def end(self, session: Session, release_epoch: int | None = None) -> None:
        """The session is over: a pending delayed will goes now (MQTT 5 §3.1.3.2.2).

        ``release_epoch``: the claim this node held for the client, given back to
        the cluster; the cluster ignores it if a newer claim exists anywhere.
        """
        client_id = session.client_id
        if self.by_client.get(client_id) is not session:
            return
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        if session.will_handle is not None:
            session.will_handle.cancel()
            self.publish_will(session)
        del self.by_client[client_id]
        if session.store is not None:
            session.store.delete_session(session)
            session.store = None
        for sub in session.subscriptions.values():
            self.subscriptions.remove(client_id, sub)
        session.subscriptions.clear()
        session.clear_delivery_state()
        if self.extensions:
            self.extensions.session_ended(client_id)
        if release_epoch is not None:
            self.background.run(self.hooks.release_client(client_id, release_epoch))

    # -- restart -----------------------------------------------------------------

    async def restore(self, state: StoredState) -> None:
        """Bring back what the store kept: retained messages, then sessions, then the
        wills of clients the crash cut off, so that those reach restored subscribers."""
        now = time.monotonic()
        for topic, message in state.retained:
            if not message.expired(now):
                self.publishing.apply_retained(topic, message, keep=False)
        restored: list[tuple[Session, StoredSession]] = []
        for stored in state.sessions:
            session = self._restored(stored)
            self.by_client[session.client_id] = session
            for sub in list(session.subscriptions.values()):
                await self.subscriptions.add(session.client_id, sub)
            if session.will is not None:
                await self.hooks.register_will(session.client_id, session.will)
            restored.append((session, stored))
        for session, stored in restored:
            self._resume_timers(session, stored)
        if state.sessions or state.retained:
            log.info(
                "restored %d persistent sessions and %d retained messages",
                len(state.sessions),
                len(state.retained),
            )

    def _restored(self, stored: StoredSession) -> Session:
        session = self.new(stored.client_id)
        session.expiry_interval = stored.expiry_interval
        # A will is pending if the client was lost (connected at the crash, or a delayed
        # will was running); one kept over a graceful stop is not (see keep_for_restart).
        if stored.connected or stored.will_at is not None:
            session.will = stored.will
        session.subscriptions = stored.subscriptions
        session.incoming_qos2 = stored.incoming_qos2
        for entry in stored.deliveries:
            delivery = entry.delivery
            if entry.packet_id is None:
                session.queue.append(delivery)
                session.queued_bytes += len(delivery.message.payload)
            else:
                session.outgoing[entry.packet_id] = Outgoing(delivery, entry.released)
                session.next_packet_id = entry.packet_id % 0xFFFF + 1
            session.next_seq = delivery.seq + 1
        session.store = self.store
        return session

    def _resume_timers(self, session: Session, stored: StoredSession) -> None:
        """Expiry and will timers against the stored wall-clock deadlines.

        The node cannot know when it crashed, so a client connected at the
        crash is taken as lost now: its will delay and session expiry count
        from the restart, never from a guess that could end it early.
        """
        wall = time.time()
        if stored.connected:
            if session.will is not None:
                self.schedule_will(session)
            if session.expiry_interval != NEVER_EXPIRES:
                self.expire_in(session, session.expiry_interval)
            if session.store is not None:
                session.store.save_session(session)
            return
        if stored.expires_at is not None and stored.expires_at <= wall:
            # Expired while the node was down: a pending will goes now, as at expiry.
            self.publish_will(session)
            self.end(session)
            return
        if session.will is not None and stored.will_at is not None:
            if stored.will_at <= wall:
                self.publish_will(session)
            else:
                session.will_at = stored.will_at
                session.will_handle = asyncio.get_running_loop().call_later(
                    stored.will_at - wall, self.publish_will, session
                )
        if stored.expires_at is not None:
            self.expire_in(session, stored.expires_at - wall)
            session.expires_at = stored.expires_at

    def keep_for_restart(self) -> None:
        """A graceful stop is no client failure: a connected persistent session is kept
        as disconnected now, with no pending will, its expiry counting from now."""
        for session in self.by_client.values():
            self.stop_timers(session)
        if not self.store.durable:
            return
        wall = time.time()
        for session in self.by_client.values():
            if session.store is None or session.connection is None:
                continue
            session.connection = None
            session.will_at = None
            if session.expiry_interval != NEVER_EXPIRES:
                session.expires_at = wall + session.expiry_interval
            session.store.save_session(session)
