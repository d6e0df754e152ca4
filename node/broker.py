"""The broker: sessions, subscriptions, retained messages and routing.

Connections hand packets here; the broker decides what they mean for the
node as a whole. Everything the rest of the cluster must agree on goes
through ``self.hooks`` (see ``hooks.py``), so the same broker runs alone
(``LocalCluster``) or as one node of many.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

from .acks import OrderedAcks
from .acl import AccessControl
from .auth import Authenticator
from .config import TLS_SCHEMES, Config
from .connection import CLOSED, CONNECTED, PACKET_ID_BYTES, Disconnected, MQTTConnection
from .hooks import (
    Claim,
    ClusterHooks,
    ClusterUnavailable,
    LocalCluster,
    SessionMessages,
    SessionTransfer,
)
from .limits import retained_size
from .listeners import open_listener
from .message import Message
from .packets import (
    Connack,
    Connect,
    Properties,
    Puback,
    Publish,
    Pubrec,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from .reason_codes import ReasonCode
from .retained import RetainedStore
from .session import NEVER_EXPIRES, Delivery, Outgoing, Session, Subscription
from .stats import Stats
from .store import SessionStore, StoredSession, StoredState, make_store
from .sys_topics import SysPublisher
from .tls import build_server_context
from .topics import TopicIndex, parse_shared, topic_levels

log = logging.getLogger("raftmq.broker")

PUBACK_HEADER = b"\x40\x02"
PUBREC_HEADER = b"\x50\x02"
RouteKey = tuple[str | None, str]


class Broker:
    """One MQTT node. ``async with Broker(config) as broker:`` runs it in your loop."""

    def __init__(self, config: Config, hooks: ClusterHooks | None = None) -> None:
        self.config = config
        self.hooks: ClusterHooks = hooks if hooks is not None else LocalCluster(config.node_id)
        self.hooks.attach(self)
        # Security files and certificates load here, so a bad one stops the node before it listens.
        self.auth = Authenticator(config)
        self.acl = AccessControl(config.acl_file) if config.acl_file is not None else None
        self.tls_context = (
            build_server_context(config) if any(a.is_tls for a in config.listen) else None
        )
        self.sessions: dict[str, Session] = {}
        self.connections: set[MQTTConnection] = set()
        self.subscriptions: TopicIndex[str, Subscription] = TopicIndex()
        self.shared: TopicIndex[tuple[str, str], Subscription] = TopicIndex()
        self.retained: RetainedStore[Message] = RetainedStore()
        self.store: SessionStore = make_store(config.durability, config.data_dir)
        self._restoring = False
        """Replaying the store at start: what is replayed is not written back."""
        self.stats = Stats()
        self.addresses: list[str] = []
        self._route_refs: dict[RouteKey, int] = {}
        self._share_cursor: dict[tuple[str, str], int] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sys = SysPublisher(self)
        self._publishing: MQTTConnection | None = None
        """The connection whose PUBLISH is being routed, so slow readers can hold it back."""
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        await self.hooks.start()
        await self._restore(self.store.open(asyncio.get_running_loop()))
        for address in self.config.listen:
            server, url = await open_listener(self, address)
            self._servers.append(server)
            self.addresses.append(url)
        self._sys.start()
        log.info("node %s started on %s", self.config.node_id, ", ".join(self.addresses))

    async def stop(self) -> None:
        """Close listeners, tell v5 clients the server is shutting down (0x8B), then stop.

        A shutdown is not a client failure, so wills are not published and
        persistent sessions are kept, not ended.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._sys.stop()
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.disconnect(ReasonCode.SERVER_SHUTTING_DOWN, "server shutting down")
        for session in self.sessions.values():
            for handle in (session.will_handle, session.expiry_handle):
                if handle is not None:
                    handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._keep_sessions_for_restart()
        self.store.close()
        for server in self._servers:
            await server.wait_closed()
        await self.hooks.stop()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run cluster bookkeeping that no client waits for, logging its failure."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster update failed: %s", task.exception())

    # -- durable state (see store.py) ---------------------------------------

    async def _restore(self, state: StoredState) -> None:
        """Bring back what the store kept: retained messages, then sessions, then the
        wills of clients the crash cut off, so that those reach restored subscribers."""
        now = time.monotonic()
        self._restoring = True
        try:
            for topic, message in state.retained:
                if not message.expired(now):
                    self.apply_retained(topic, message)
        finally:
            self._restoring = False
        restored: list[tuple[Session, StoredSession]] = []
        for stored in state.sessions:
            session = self._restored_session(stored)
            self.sessions[session.client_id] = session
            for sub in list(session.subscriptions.values()):
                await self._add_subscription(session.client_id, sub)
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

    def _restored_session(self, stored: StoredSession) -> Session:
        session = self._new_session(stored.client_id)
        session.expiry_interval = stored.expiry_interval
        # A will is pending if the client was lost (connected at the crash, or a delayed
        # will was running); one kept over a graceful stop is not (see stop()).
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
        loop = asyncio.get_running_loop()
        wall = time.time()
        if stored.connected:
            if session.will is not None:
                self._schedule_will(session)
            if session.expiry_interval != NEVER_EXPIRES:
                session.expiry_handle = loop.call_later(
                    session.expiry_interval, self._end_session, session
                )
                session.expires_at = wall + session.expiry_interval
            if session.store is not None:
                session.store.save_session(session)
            return
        if stored.expires_at is not None and stored.expires_at <= wall:
            # Expired while the node was down: a pending will goes now, as at expiry.
            self._publish_will(session)
            self._end_session(session)
            return
        if session.will is not None and stored.will_at is not None:
            if stored.will_at <= wall:
                self._publish_will(session)
            else:
                session.will_at = stored.will_at
                session.will_handle = loop.call_later(
                    stored.will_at - wall, self._publish_will, session
                )
        if stored.expires_at is not None:
            session.expires_at = stored.expires_at
            session.expiry_handle = loop.call_later(
                stored.expires_at - wall, self._end_session, session
            )

    def _keep_sessions_for_restart(self) -> None:
        """A graceful stop is no client failure: a connected persistent session is kept
        as disconnected now, with no pending will, its expiry counting from now."""
        if not self.store.durable:
            return
        wall = time.time()
        for session in self.sessions.values():
            if session.store is None or session.connection is None:
                continue
            session.connection = None
            session.will_at = None
            if session.expiry_interval != NEVER_EXPIRES:
                session.expires_at = wall + session.expiry_interval
            session.store.save_session(session)

    # -- connections --------------------------------------------------------

    def connection_opened(self, conn: MQTTConnection) -> bool:
        """Admit a new socket, unless the node is far over max_connections.

        Refusing only at CONNECT would leave sockets that never send one
        unbounded until connect_timeout; refusing exactly at the limit would
        deny clients over it the CONNACK that tells them why. So a tenth more
        sockets (at least 16) are let in to be told, and the rest are closed.
        """
        limit = self.config.max_connections
        if len(self.connections) >= limit + max(16, limit // 10):
            self.stats.limits.connections += 1
            return False
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: MQTTConnection, was_connected: bool) -> None:
        self.connections.discard(conn)
        if not was_connected:
            return
        self.stats.clients_connected -= 1
        session = conn.session
        if session is None or session.connection is not conn or self._stopping:
            return
        session.connection = None
        if conn.clean_disconnect:
            session.will = None
        elif session.will is not None:
            self._schedule_will(session)
        if session.expiry_interval == 0:
            self._end_session(session, conn.epoch)
        elif session.expiry_interval != NEVER_EXPIRES:
            session.expiry_handle = asyncio.get_running_loop().call_later(
                session.expiry_interval, self._end_session, session, conn.epoch
            )
            session.expires_at = time.time() + session.expiry_interval
        if session.store is not None:
            session.store.save_session(session)

    async def handle_connect(self, conn: MQTTConnection, packet: Connect) -> None:
        cfg = self.config
        level = packet.protocol_level
        props = packet.properties
        limits = self.stats.limits
        if self.stats.clients_connected >= cfg.max_connections and not self._is_takeover(
            packet.client_id
        ):
            limits.connections += 1
            conn.connack(ReasonCode.QUOTA_EXCEEDED)
        if len(packet.client_id.encode()) > cfg.max_client_id_length:
            limits.client_id_length += 1
            conn.connack(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        if "authentication_method" in props:
            conn.connack(ReasonCode.BAD_AUTHENTICATION_METHOD)
        tls = conn.listener in TLS_SCHEMES
        peercert = conn.transport.get_extra_info("peercert") if tls and conn.transport else None
        identity = await self.auth.authenticate(packet.username, packet.password, peercert, tls)
        if conn.state == CLOSED:
            return
        if identity.reason:
            conn.connack(identity.reason)
        conn.username = identity.username
        client_id = packet.client_id
        assigned = False
        if not client_id:
            if level == 5 or (level == 4 and packet.clean_start):
                client_id = "raftmq-" + secrets.token_hex(8)
                assigned = True
            else:
                conn.connack(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        keepalive = packet.keepalive
        server_keepalive = None
        if level == 5:
            if keepalive > cfg.max_keepalive or (keepalive == 0 and cfg.max_keepalive < 0xFFFF):
                server_keepalive = keepalive = cfg.max_keepalive
        elif keepalive > cfg.max_keepalive:
            # MQTT 3 cannot tell the client another keep alive; Mosquitto refuses it so.
            conn.connack(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        will = packet.will
        if will is not None and topic_levels(will.topic) > cfg.max_topic_levels:
            limits.topic_levels += 1
            conn.connack(ReasonCode.TOPIC_NAME_INVALID)
        if (
            will is not None
            and self.acl is not None
            and not self.acl.may_publish(conn.username, client_id, will.topic)
        ):
            conn.connack(ReasonCode.NOT_AUTHORIZED)

        if level == 5:
            expiry_interval = props.get("session_expiry_interval", 0)
        else:
            expiry_interval = 0 if packet.clean_start else NEVER_EXPIRES
        try:
            claim = await self.hooks.claim_client(
                client_id,
                clean_start=packet.clean_start,
                expiry_interval=expiry_interval,
                will=will,
            )
            transfer = None
            if claim.session is not None and (
                claim.previous_owner != cfg.node_id or client_id not in self.sessions
            ):
                transfer = self.hooks.take_session(client_id, claim)
                if transfer is not None:
                    await self._take_session(client_id, claim, transfer)
        except ClusterUnavailable:
            conn.connack(ReasonCode.SERVER_UNAVAILABLE)
        if conn.state == CLOSED:
            return
        # Everything from here on runs without yielding, so no other CONNECT can
        # slip in between the checks and the session change.
        if self.stats.clients_connected >= cfg.max_connections and not self._is_takeover(client_id):
            limits.connections += 1
            conn.connack(ReasonCode.QUOTA_EXCEEDED)

        existing = self.sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            existing.connection.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
            existing = self.sessions.get(client_id)
        session_present = False
        if existing is not None and not packet.clean_start:
            session = existing
            session_present = True
            for handle in (session.expiry_handle, session.will_handle):
                if handle is not None:
                    handle.cancel()
            session.expiry_handle = session.will_handle = None
        else:
            if existing is not None:
                self._end_session(existing)
            session = self._new_session(client_id)
            self.sessions[client_id] = session
        session.expiry_interval = expiry_interval
        session.will = will
        self._bind_store(session)
        if transfer is not None and session.store is not None:
            self._journal_transferred(session)

        conn.client_id = client_id
        conn.session = session
        conn.epoch = claim.epoch
        conn.keepalive = keepalive
        conn.state = CONNECTED
        self.stats.clients_connected += 1
        self.stats.connects += 1
        connack_props: Properties = {}
        if level == 5:
            conn.send_window = min(cfg.max_inflight, props.get("receive_maximum", 0xFFFF))
            conn.max_outgoing_size = props.get("maximum_packet_size", 0)
            conn.alias_out_max = min(props.get("topic_alias_maximum", 0), cfg.topic_alias_maximum)
            conn.problem_info = props.get("request_problem_information", 1) == 1
            connack_props = {
                "receive_maximum": cfg.receive_maximum,
                "maximum_packet_size": cfg.max_packet_size,
                "topic_alias_maximum": cfg.topic_alias_maximum,
            }
            if assigned:
                connack_props["assigned_client_identifier"] = client_id
            if server_keepalive is not None:
                connack_props["server_keep_alive"] = server_keepalive
        conn.send(Connack(session_present, 0, connack_props))
        conn.start_keepalive()
        if session_present:
            session.resume(conn)
        else:
            session.connection = conn
        if session.store is not None:
            session.store.save_session(session)  # as connected: a crash now loses the client
        self.store.hold(conn)  # the CONNACK reports the session the store is writing

    def _is_takeover(self, client_id: str) -> bool:
        """A CONNECT that replaces a live connection leaves the connection count as it is."""
        session = self.sessions.get(client_id) if client_id else None
        return session is not None and session.connection is not None

    # -- sessions moving between nodes --------------------------------------

    async def _take_session(self, client_id: str, claim: Claim, transfer: SessionTransfer) -> None:
        """A session the client left on another node (or that this node lost) becomes ours.

        Its subscriptions are routed here first, so that what is published from
        then on reaches it here; then the messages the previous node held go in
        front of whatever arrived meanwhile.
        """
        stale = self.sessions.get(client_id)
        if stale is not None:
            self._end_session(stale)
        session = self._session_from(client_id, transfer)
        await asyncio.gather(
            *(self._add_subscription(client_id, sub) for sub in session.subscriptions.values())
        )
        held = await self.hooks.handed_over(client_id, claim)
        if held is not None and self.sessions.get(client_id) is session:
            for packet_id, entry in held.outgoing.items():
                session.outgoing[packet_id] = entry
                session.next_packet_id = packet_id % 0xFFFF + 1
            session.queue.extendleft(reversed(held.queued))
            session.queued_bytes += sum(len(d.message.payload) for d in held.queued)
            session.incoming_qos2 |= held.incoming_qos2

    def _session_from(self, client_id: str, transfer: SessionTransfer) -> Session:
        """A disconnected session with ``transfer``'s subscriptions, registered on this node."""
        session = self._new_session(client_id)
        session.expiry_interval = transfer.expiry_interval
        session.subscriptions = dict(transfer.subscriptions)
        self.sessions[client_id] = session
        return session

    def _journal_transferred(self, session: Session) -> None:
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

    def surrender_session(
        self, client_id: str, epoch: int, resumed: bool
    ) -> SessionMessages | None:
        session = self.sessions.get(client_id)
        if session is None:
            return None
        conn = session.connection
        if conn is not None:
            if conn.epoch >= epoch:
                return None  # a newer claim of this node's own: nothing to give up
            conn.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
            session = self.sessions.get(client_id)
            if session is None:
                return None  # it ended with its connection (session expiry 0)
        if not resumed:
            self._end_session(session)
            return None
        held = SessionMessages(
            list(session.queue), dict(session.outgoing), set(session.incoming_qos2)
        )
        # The client came back elsewhere before any will delay ran out: no will (MQTT 5
        # §3.1.3.2.2), and no expiry here; its messages go with it.
        session.will = None
        self._end_session(session)
        return held

    def adopt_session(self, client_id: str, epoch: int, transfer: SessionTransfer) -> None:
        if client_id in self.sessions:
            return  # already here (restored from this node's store): it has the messages
        session = self._session_from(client_id, transfer)
        self._bind_store(session)
        if session.expiry_interval != NEVER_EXPIRES:
            session.expiry_handle = asyncio.get_running_loop().call_later(
                session.expiry_interval, self._end_session, session, epoch
            )
            session.expires_at = time.time() + session.expiry_interval
        if session.store is not None:
            self._journal_transferred(session)
            session.store.save_session(session)
        self._background(self._subscribe_adopted(session))

    async def _subscribe_adopted(self, session: Session) -> None:
        for sub in list(session.subscriptions.values()):
            await self._add_subscription(session.client_id, sub)

    # -- sessions and wills -------------------------------------------------

    def _new_session(self, client_id: str) -> Session:
        cfg = self.config
        return Session(
            client_id,
            max_queued=cfg.max_queued_messages,
            max_queued_bytes=cfg.max_queued_bytes,
            stats=self.stats,
            overflow_drops_oldest=cfg.queue_overflow == "drop_oldest",
            queue_qos0=cfg.queue_qos0,
        )

    def _bind_store(self, session: Session) -> None:
        """At CONNECT: a persistent session is journaled (disk durability); a resumed
        one that no longer persists leaves the store."""
        session.expires_at = session.will_at = None
        store = self.store
        if session.persistent and store.durable:
            session.store = store
        elif session.store is not None:
            session.store.delete_session(session)
            session.store = None

    def _schedule_will(self, session: Session) -> None:
        will = session.will
        assert will is not None
        delay = min(will.properties.get("will_delay_interval", 0), session.expiry_interval)
        if delay <= 0:
            self._publish_will(session)
        else:
            session.will_handle = asyncio.get_running_loop().call_later(
                delay, self._publish_will, session
            )
            session.will_at = time.time() + delay

    def _publish_will(self, session: Session) -> None:
        will = session.will
        session.will = None
        session.will_handle = None
        session.will_at = None
        if will is None:
            return
        if session.store is not None:
            session.store.save_session(session)
        self.publish_will(will)
        self._background(self.hooks.register_will(session.client_id, None))

    def publish_will(self, will: Will) -> None:
        props = {k: v for k, v in will.properties.items() if k != "will_delay_interval"}
        message = Message.create(will.topic, will.payload, will.qos, will.retain, props)
        self.stats.wills_published += 1
        if will.retain and self._retained_fits(message):
            self._background(self.hooks.set_retained(will.topic, message if will.payload else None))
        _, pending = self.route(message)
        if pending is not None:
            self._background(_settle(pending))

    def _end_session(self, session: Session, release_epoch: int | None = None) -> None:
        """The session is over: a pending delayed will goes now (MQTT 5 §3.1.3.2.2).

        ``release_epoch``: the claim this node held for the client, given back to
        the cluster; the cluster ignores it if a newer claim exists anywhere.
        """
        if self.sessions.get(session.client_id) is not session:
            return
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None
        if session.will_handle is not None:
            session.will_handle.cancel()
            self._publish_will(session)
        del self.sessions[session.client_id]
        if session.store is not None:
            session.store.delete_session(session)
            session.store = None
        for sub in session.subscriptions.values():
            self._remove_subscription(session.client_id, sub)
        session.subscriptions.clear()
        session.clear_delivery_state()
        if release_epoch is not None:
            self._background(self.hooks.release_client(session.client_id, release_epoch))

    # -- publishing ---------------------------------------------------------

    def handle_publish(
        self, conn: MQTTConnection, packet: Publish
    ) -> Coroutine[Any, Any, None] | None:
        session = conn.session
        assert session is not None
        topic = packet.topic
        props = packet.properties
        qos = packet.qos
        if props:
            alias = props.get("topic_alias")
            if alias is not None:
                if alias == 0 or alias > self.config.topic_alias_maximum:
                    conn.protocol_error(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias}")
                    return None
                if topic:
                    conn.aliases_in[alias] = topic
                else:
                    found = conn.aliases_in.get(alias)
                    if found is None:
                        conn.protocol_error(
                            ReasonCode.PROTOCOL_ERROR, f"topic alias {alias} was never set"
                        )
                        return None
                    topic = found
        if qos:
            if qos == 2 and packet.packet_id in session.incoming_qos2:
                conn.send(Pubrec(packet.packet_id))  # a resend: already delivered once
                return None
            if (
                conn.protocol_level == 5
                and len(session.incoming_qos2) + conn.incoming_pending
                >= self.config.receive_maximum
            ):
                self.stats.limits.receive_maximum += 1
                conn.protocol_error(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
                return None
        if topic_levels(topic) > self.config.max_topic_levels:
            self.stats.limits.topic_levels += 1
            conn.protocol_error(
                ReasonCode.TOPIC_NAME_INVALID, f"topic {topic!r} has too many levels"
            )
            return None
        acl = self.acl
        if (acl is not None and not acl.may_publish(conn.username, conn.client_id, topic)) or (
            topic.startswith("$SYS")  # the node's own reports; nobody may forge them
        ):
            return self._refuse_publish(conn, packet)
        self.stats.messages_received += 1
        message = Message.create(topic, packet.payload, qos, packet.retain, props, conn.client_id)
        if packet.retain:
            return self._publish_retained(conn, packet, message)
        self._publishing = conn
        matched, pending = self.route(message)
        self._publishing = None
        if qos == 0:
            return None if pending is None else _wait_for_room(pending)
        if pending is None:
            if qos == 2 or not conn.ordered_acks:
                self._ack(conn, packet, matched)
                return None
        elif qos == 2:
            return self._ack_after(conn, packet, pending)
        # Another node taking it counts as a match.
        send = partial(self._ack, conn, packet, matched if pending is None else matched or 1)
        return self._ack_in_order(conn, pending, send)

    def _ack_in_order(
        self, conn: MQTTConnection, pending: Awaitable[None] | None, send: Callable[[], None]
    ) -> Coroutine[Any, Any, None] | None:
        """Send a QoS 1 acknowledgement now, or queue it behind those still waiting for
        other nodes (see acks.py); the result, when not None, is to await before reading on."""
        acks = conn.ordered_acks
        if pending is None and not acks:
            send()
            return None
        if acks is None:
            acks = conn.ordered_acks = OrderedAcks(conn, self.config.receive_maximum)
        return acks.add(pending, send)

    def _answer(
        self, conn: MQTTConnection, packet: Publish, send: Callable[[], None]
    ) -> Coroutine[Any, Any, None] | None:
        """Acknowledge ``packet`` with ``send``, in order if it is QoS 1."""
        if packet.qos == 1:
            return self._ack_in_order(conn, None, send)
        send()
        return None

    async def _publish_retained(
        self, conn: MQTTConnection, packet: Publish, message: Message
    ) -> None:
        store = self._retained_fits(message)
        if not store and packet.qos and conn.protocol_level == 5:
            # An error ack means "not accepted": delivering the message anyway
            # would duplicate it if the publisher sends it again.
            assert packet.packet_id is not None
            ack = Puback if packet.qos == 1 else Pubrec
            problem = conn.problem("retained message limit reached")
            reply = ack(packet.packet_id, ReasonCode.QUOTA_EXCEEDED, problem)
            room = self._answer(conn, packet, partial(conn.send, reply))
        else:
            with self._awaiting_cluster(conn):
                if store:
                    retained = message if message.payload else None
                    await self.hooks.set_retained(message.topic, retained)
                matched, pending = self.route(message)
                if pending is not None:
                    await pending
                    matched = matched or 1
            if not packet.qos:
                return
            room = self._answer(conn, packet, partial(self._ack, conn, packet, matched))
        if room is not None:
            await room

    async def _ack_after(
        self, conn: MQTTConnection, packet: Publish, pending: Awaitable[None]
    ) -> None:
        """QoS 2: PUBREC once other nodes took it; the next PUBLISH waits (see acks.py)."""
        with self._awaiting_cluster(conn):
            await pending
        self._ack(conn, packet, 1)

    @contextmanager
    def _awaiting_cluster(self, conn: MQTTConnection) -> Iterator[None]:
        """A publish in flight towards the cluster: counted against receive maximum,
        and answered with "server unavailable" if the cluster cannot take it."""
        conn.incoming_pending += 1
        try:
            yield
        except ClusterUnavailable:
            conn.disconnect(ReasonCode.SERVER_UNAVAILABLE, "cluster unavailable")
            raise Disconnected from None
        finally:
            conn.incoming_pending -= 1

    def _refuse_publish(
        self, conn: MQTTConnection, packet: Publish
    ) -> Coroutine[Any, Any, None] | None:
        """A denied PUBLISH (ACL, or a $SYS topic): v5 learns why (0x87); v3 has no way to
        say so, so the message is acknowledged and dropped, as Mosquitto does."""
        if not packet.qos:
            return None
        if conn.protocol_level != 5:
            return self._answer(conn, packet, partial(self._ack, conn, packet, 1))
        assert packet.packet_id is not None
        ack = Puback if packet.qos == 1 else Pubrec
        reply = ack(packet.packet_id, ReasonCode.NOT_AUTHORIZED, conn.problem("not authorized"))
        return self._answer(conn, packet, partial(conn.send, reply))

    def _retained_fits(self, message: Message) -> bool:
        """Whether storing ``message`` as retained stays within the node's retained limits.

        Clearing (empty payload) always fits. Counted when it does not; the
        caller decides what the publisher is told.
        """
        if not message.payload:
            return True
        cfg = self.config
        old = self.retained.get(message.topic)
        full = cfg.max_retained_messages and len(self.retained) >= cfg.max_retained_messages
        if old is None and full:
            self.stats.limits.retained_messages += 1
            return False
        grown = self.stats.retained_bytes - retained_size(old) + retained_size(message)
        if cfg.max_retained_bytes and grown > cfg.max_retained_bytes:
            self.stats.limits.retained_bytes += 1
            return False
        return True

    def _ack(self, conn: MQTTConnection, packet: Publish, matched: int) -> None:
        pid = packet.packet_id
        assert pid is not None
        if packet.qos == 2:
            assert conn.session is not None
            conn.session.add_incoming(pid)
        store = self.store
        if store.pending:
            store.hold(conn)  # the ack waits for the commit of what the message changed
        if matched or conn.protocol_level != 5:
            header = PUBACK_HEADER if packet.qos == 1 else PUBREC_HEADER
            conn.write(header + PACKET_ID_BYTES[pid])
            return
        ack = Puback if packet.qos == 1 else Pubrec
        conn.send(ack(pid, ReasonCode.NO_MATCHING_SUBSCRIBERS))

    def route(self, message: Message) -> tuple[int, Awaitable[None] | None]:
        """Deliver to local subscribers and forward to other nodes that want it."""
        matched = self.deliver_local(message)
        return matched, self.hooks.forward(message)

    def deliver_local(
        self, message: Message, only_groups: Collection[tuple[str, str]] | None = None
    ) -> int:
        """Deliver to this node's subscribers; returns how many sessions got it.

        ``only_groups``: the (group, topic filter) share groups to serve; None for all.
        """
        topic = message.topic
        entries = self.subscriptions.match(topic)
        delivered = 0
        if entries:
            if len(entries) == 1:
                _, client_id, sub = entries[0]
                delivered = self._deliver_one(message, client_id, sub)
            else:
                delivered = self._deliver_overlapping(message, entries)
        if len(self.shared) and (only_groups is None or only_groups):
            shared = self.shared.match(topic)
            if shared:
                delivered += self._deliver_shared(message, shared, only_groups)
        return delivered

    def _deliver_one(self, message: Message, client_id: str, sub: Subscription) -> int:
        if sub.no_local and client_id == message.publisher:
            return 0
        session = self.sessions.get(client_id)
        if session is None:
            return 0
        qos = message.qos if message.qos < sub.qos else sub.qos
        retain = message.retain and sub.retain_as_published
        ids = (sub.identifier,) if sub.identifier is not None else ()
        self._hand_to(session, Delivery(message, qos, retain, ids))
        return 1

    def _hand_to(self, session: Session, delivery: Delivery) -> None:
        """Deliver, and make a publisher wait if the subscriber cannot keep up."""
        session.deliver(delivery)  # drops are counted by the session
        conn = session.connection
        if conn is not None and conn.write_paused and self._publishing is not None:
            conn.hold(self._publishing)

    def _deliver_overlapping(
        self, message: Message, entries: tuple[tuple[str, str, Subscription], ...]
    ) -> int:
        """One copy per client at the highest granted QoS, with every subscription id."""
        per_client: dict[str, list[Any]] = {}
        publisher = message.publisher
        for _, client_id, sub in entries:
            if sub.no_local and client_id == publisher:
                continue
            plan = per_client.get(client_id)
            if plan is None:
                plan = per_client[client_id] = [0, False, []]
            if sub.qos > plan[0]:
                plan[0] = sub.qos
            plan[1] = plan[1] or sub.retain_as_published
            if sub.identifier is not None:
                plan[2].append(sub.identifier)
        delivered = 0
        for client_id, (sub_qos, rap, ids) in per_client.items():
            session = self.sessions.get(client_id)
            if session is None:
                continue
            qos = message.qos if message.qos < sub_qos else sub_qos
            delivery = Delivery(message, qos, message.retain and rap, tuple(sorted(ids)))
            self._hand_to(session, delivery)
            delivered += 1
        return delivered

    def _deliver_shared(
        self,
        message: Message,
        entries: tuple[tuple[str, tuple[str, str], Subscription], ...],
        only_groups: Collection[tuple[str, str]] | None = None,
    ) -> int:
        """Each matching share group gets one copy, round robin, preferring online members."""
        groups: dict[tuple[str, str], list[tuple[str, Subscription]]] = {}
        for topic_filter, (group, client_id), sub in entries:
            if only_groups is not None and (group, topic_filter) not in only_groups:
                continue
            groups.setdefault((group, topic_filter), []).append((client_id, sub))
        delivered = 0
        for key, members in groups.items():
            start = self._share_cursor.get(key, 0)
            count = len(members)
            chosen = members[start % count]
            for offset in range(count):
                client_id, sub = members[(start + offset) % count]
                session = self.sessions.get(client_id)
                if session is not None and session.connection is not None:
                    chosen = (client_id, sub)
                    start += offset
                    break
            self._share_cursor[key] = start + 1
            delivered += self._deliver_one(message, chosen[0], chosen[1])
        return delivered

    # -- subscriptions ------------------------------------------------------

    async def handle_subscribe(self, conn: MQTTConnection, packet: Subscribe) -> None:
        session = conn.session
        assert session is not None
        cfg = self.config
        level = conn.protocol_level
        identifiers = packet.properties.get("subscription_identifier")
        identifier = identifiers[0] if identifiers else None
        codes: list[int] = []
        problems: list[str] = []
        retained_for: list[Subscription] = []
        for full_filter, opts in packet.subscriptions:
            shared = parse_shared(full_filter)
            if shared is not None and opts.no_local:
                conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")
                raise Disconnected
            if topic_levels(full_filter) > cfg.max_topic_levels:
                self.stats.limits.topic_levels += 1
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if level == 5 else 0x80)
                problems.append(f"{full_filter!r} has more than {cfg.max_topic_levels} levels")
                continue
            group, topic_filter = shared if shared is not None else (None, full_filter)
            acl = self.acl
            if acl is not None and not acl.may_subscribe(
                conn.username, session.client_id, topic_filter
            ):
                codes.append(ReasonCode.NOT_AUTHORIZED if level == 5 else 0x80)
                problems.append(f"{full_filter!r}: not authorized")
                continue
            sub = Subscription(
                topic_filter,
                opts.qos,
                opts.no_local,
                opts.retain_as_published,
                opts.retain_handling,
                identifier,
                group,
            )
            existed = full_filter in session.subscriptions
            try:
                if session.persistent:  # so that it follows the client to any node
                    await self.hooks.save_subscriptions(
                        session.client_id, conn.epoch, {full_filter: sub}
                    )
                await self._add_subscription(session.client_id, sub)
            except ClusterUnavailable:
                codes.append(ReasonCode.UNSPECIFIED_ERROR)
                problems.append(f"{full_filter!r}: cluster unavailable")
                continue
            session.subscriptions[full_filter] = sub
            if session.store is not None:
                session.store.save_subscription(session, full_filter, sub)
            codes.append(opts.qos)
            if group is None and (
                opts.retain_handling == 0 or (opts.retain_handling == 1 and not existed)
            ):
                retained_for.append(sub)
        self.stats.subscribes += 1
        props = conn.problem("; ".join(problems)) if problems else {}
        conn.send(Suback(packet.packet_id, codes, props))
        now = time.monotonic()
        for sub in retained_for:
            ids = (sub.identifier,) if sub.identifier is not None else ()
            for _, message in self.retained.match(sub.topic_filter):
                if message.expired(now):
                    continue
                qos = message.qos if message.qos < sub.qos else sub.qos
                session.deliver(Delivery(message, qos, True, ids))

    async def handle_unsubscribe(self, conn: MQTTConnection, packet: Unsubscribe) -> None:
        session = conn.session
        assert session is not None
        codes: list[int] = []
        removed: list[str] = []
        for full_filter in packet.topic_filters:
            sub = session.subscriptions.pop(full_filter, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
                continue
            self._remove_subscription(session.client_id, sub)
            if session.store is not None:
                session.store.delete_subscription(session, full_filter)
            removed.append(full_filter)
            codes.append(ReasonCode.SUCCESS)
        if removed and session.persistent:
            try:
                await self.hooks.forget_subscriptions(session.client_id, conn.epoch, removed)
            except ClusterUnavailable:
                # Unsubscribed here all the same; should the client resume on another
                # node, these filters come back with its session (at least once, not lost).
                log.warning("client %r: unsubscribe of %s not replicated", conn.client_id, removed)
        conn.send(Unsuback(packet.packet_id, codes))

    async def _add_subscription(self, client_id: str, sub: Subscription) -> None:
        key: RouteKey = (sub.share_group, sub.topic_filter)
        refs = self._route_refs.get(key, 0)
        if refs == 0:
            await self.hooks.add_route(sub.share_group, sub.topic_filter)
        if sub.share_group is None:
            added = self.subscriptions.add(sub.topic_filter, client_id, sub)
        else:
            added = self.shared.add(sub.topic_filter, (sub.share_group, client_id), sub)
        if added:
            self._route_refs[key] = refs + 1

    def _remove_subscription(self, client_id: str, sub: Subscription) -> None:
        if sub.share_group is None:
            removed = self.subscriptions.remove(sub.topic_filter, client_id)
        else:
            removed = self.shared.remove(sub.topic_filter, (sub.share_group, client_id))
        if not removed:
            return
        key: RouteKey = (sub.share_group, sub.topic_filter)
        refs = self._route_refs[key] - 1
        if refs:
            self._route_refs[key] = refs
        else:
            del self._route_refs[key]
            self._background(self.hooks.remove_route(sub.share_group, sub.topic_filter))

    # -- NodeEvents (called by the cluster) ---------------------------------

    def kick_client(self, client_id: str, epoch: int) -> None:
        session = self.sessions.get(client_id)
        if session is None or session.connection is None:
            return
        if session.connection.epoch < epoch:
            session.connection.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")

    def deliver_forwarded(
        self, message: Message, shared_groups: Collection[tuple[str, str]] | None = None
    ) -> None:
        self.deliver_local(message, shared_groups)

    def apply_retained(self, topic: str, message: Message | None) -> None:
        """The one place retained messages change, so the byte count stays exact."""
        old = self.retained.get(topic)
        if message is None:
            self.retained.delete(topic)
        else:
            self.retained.set(topic, message)
        self.stats.retained_bytes += retained_size(message) - retained_size(old)
        if not self._restoring and not topic.startswith("$SYS/"):
            # $SYS is the node's own, rebuilt every sys_interval: not worth keeping.
            self.store.set_retained(topic, message)

    def publish_local(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message the node itself makes ($SYS); kept on this node, never replicated."""
        message = Message.create(topic, payload, 0, retain)
        if retain:
            self.apply_retained(topic, message)
        self.deliver_local(message)


async def _settle(pending: Awaitable[None]) -> None:
    """Wait for other nodes to take a message nobody is waiting to acknowledge."""
    await pending


async def _wait_for_room(pending: Awaitable[None]) -> None:
    """QoS 0 towards a peer at its queue limit: read nothing more from the publisher
    until the peer has room. QoS 0 is at most once, so a peer that cannot be
    reached (the forwarder counts what it drops) does not cost the publisher its
    connection."""
    with suppress(ClusterUnavailable):
        await pending
