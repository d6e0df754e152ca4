"""The broker: one MQTT node, built from its parts.

This facade builds the parts, starts and stops them, and answers the two
interfaces that reach the node from outside by delegating: the connections'
``ClientHandler`` and the cluster's ``NodeEvents``. What each part owns:

- ``connect.py``: the CONNECT handshake and the cluster claim;
- ``publishing.py``: publish checks, routing and acknowledgement order;
- ``fanout.py``: delivery to local subscribers, share groups included;
- ``subscribing.py``: SUBSCRIBE/UNSUBSCRIBE and this node's routes;
- ``sessions.py``: sessions, their expiry and wills, restore after restart;
- ``migration.py``: sessions moving between nodes.

Everything the rest of the cluster must agree on goes through ``self.hooks``
(``hooks.py``), so the same broker runs alone (``LocalCluster``) or as one
node of many. See ``docs/architecture.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os

from . import client_log, read_rights
from .acl import AccessControl
from .auth import Authenticator
from .background import Background
from .config import Config
from .connect import ConnectHandshake
from .context import NodeContext
from .extensions import Extensions
from .fanout import FanOut
from .hooks import ClusterHooks, LocalCluster, SessionMessages, SessionTransfer
from .listeners import open_listener
from .message import Message, MessageStamps
from .migration import SessionMigration
from .packets import Connect, Subscribe, Unsubscribe, Will
from .protocol import ClientProtocol, Work
from .publishing import Publishing
from .reason_codes import ReasonCode
from .retained import RetainedStore
from .session import Session
from .sessions import SessionRegistry
from .stats import Stats
from .store import SessionStore, make_store
from .subscribing import Subscriptions
from .sys_topics import Gauges, SysPublisher
from .tls import build_server_context

log = logging.getLogger("raftmq.broker")


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
        self.stats = Stats()
        self.extensions = Extensions()
        """Observers of the node's events (``extensions.py``); register before start()."""
        self.store: SessionStore = make_store(config.durability, config.data_dir)
        self.retained: RetainedStore[Message] = RetainedStore()
        self.clients: set[ClientProtocol] = set()
        """Every open socket's protocol: connected, not yet, or lingering after its close."""
        self.addresses: list[str] = []
        self._background = Background()
        node = NodeContext(
            config,
            self.stats,
            self.hooks,
            self.store,
            self.retained,
            self.acl,
            self._background,
            self.extensions,
            MessageStamps(config.node_id),
        )
        by_client: dict[str, Session] = {}
        self.fanout = FanOut(by_client, self.extensions)
        self.subscriptions = Subscriptions(node, self.fanout)
        self.publishing = Publishing(node, self.fanout)
        self.sessions = SessionRegistry(node, by_client, self.subscriptions, self.publishing)
        self.migration = SessionMigration(node, self.sessions, self.subscriptions)
        self.connect = ConnectHandshake(node, self.auth, self.sessions, self.migration)
        # The two hot entries go straight to their part, without a call through here.
        self.handle_publish = self.publishing.handle_publish
        """``ClientHandler.handle_publish``: a client's PUBLISH."""
        self.deliver_forwarded = self.fanout.deliver_forwarded
        """``NodeEvents.deliver_forwarded``: a publish another node sent here."""
        self._servers: list[asyncio.Server] = []
        self._sys = SysPublisher(
            config.sys_interval, self.stats, self._gauges, self.publishing.publish_local
        )
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        await self.hooks.start()
        await self.sessions.restore(self.store.open(asyncio.get_running_loop()))
        locked: list[str] = []
        for address in self.config.listen:
            server, url = await open_listener(self, self.config, self.tls_context, address)
            self._servers.append(server)
            self.addresses.append(url)
            if self.auth.nobody_can_log_in(address):
                locked.append(url)
        self._sys.start()
        log.info("node %s started on %s", self.config.node_id, ", ".join(self.addresses))
        if locked:
            self._warn_locked(locked)

    def _warn_locked(self, urls: list[str]) -> None:
        """Say so when a listener refuses everyone: otherwise the node looks healthy
        and only its clients learn, one "not authorized" at a time, that it is not."""
        config = self.config
        anonymous = (
            "allow_anonymous = false"
            if config.allow_anonymous is False
            else "allow_anonymous is unset and not every listener is on a loopback address"
        )
        cert = (
            "or tls_cert_as_username with an mqtts:// or wss:// listener"
            if config.tls_cert_as_username == "off"
            else "or move these clients to an mqtts:// or wss:// listener (tls_cert_as_username)"
        )
        log.warning(
            "nobody can log in on %s: %s and no password_file is set; set password_file "
            "(users made with `raftmq passwd`), allow_anonymous = true, %s",
            ", ".join(urls),
            anonymous,
            cert,
        )

    async def stop(self) -> None:
        """Close listeners, tell v5 clients the server is shutting down (0x8B), then stop.

        A shutdown is not a client failure, so wills are not published and
        persistent sessions are kept, not ended: on the nodes that stay, when
        this one is part of a cluster (``ClusterHooks.leave``), else here for
        the restart. Sockets that linger after
        that DISCONNECT get their close_linger before stop returns: exiting
        with them open would reset them under clients still sending.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._sys.stop()
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            client.disconnect(ReasonCode.SERVER_SHUTTING_DOWN, "server shutting down")
        client_log.WARNINGS.flush()  # what was suppressed is reported before the node goes
        await self.hooks.leave()
        self._background.cancel_all()
        self.sessions.keep_for_restart()
        self.store.close()
        for server in self._servers:
            await server.wait_closed()
        await self.hooks.stop()
        await self._sockets_closed(self.config.close_linger)
        self._stopped.set()

    async def _sockets_closed(self, seconds: float) -> None:
        """Wait until every socket is closed, ``seconds`` at most (their linger timers)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reload_acl(self) -> None:
        """SIGHUP: read the ACL file again, and apply it to the subscriptions already made.

        Raises ConfigError (naming the file and line) with the old rules still in force.
        """
        if self.acl is not None:
            self.acl.reload()
            read_rights.after_reload(self.sessions.by_client.values())

    def _gauges(self) -> Gauges:
        """The figures $SYS reports that are not counters."""
        held_messages, held_bytes = self.sessions.held()
        return Gauges(
            sessions=len(self.sessions),
            subscriptions=len(self.subscriptions),
            shared_subscriptions=len(self.fanout.shared),
            retained=len(self.retained),
            held_messages=held_messages,
            held_bytes=held_bytes,
        )

    # -- ClientHandler (connection.py) ----------------------------------------

    def client_opened(self, client: ClientProtocol) -> bool:
        """Admit a new socket, unless the node is far over max_connections.

        Refusing only at CONNECT would leave sockets that never send one
        unbounded until connect_timeout; refusing exactly at the limit would
        deny clients over it the CONNACK that tells them why. So a tenth more
        sockets (at least 16) are let in to be told, and the rest are closed.
        """
        self.stats.sockets_opened += 1
        limit = self.config.max_connections
        if len(self.clients) >= limit + max(16, limit // 10):
            self.stats.limits.connections += 1
            return False
        self.clients.add(client)
        return True

    def client_closed(self, client: ClientProtocol, was_connected: bool) -> None:
        """The client is gone for MQTT; its socket may linger (``socket_closed`` follows)."""
        if not was_connected:
            return
        self.stats.clients_connected -= 1
        if self.extensions:
            self.extensions.disconnected(client.client_id, client.clean_disconnect)
        if not self._stopping:
            self.sessions.disconnected(client)

    def socket_closed(self, client: ClientProtocol) -> None:
        """Only now is the socket free: a lingering one still counted in ``clients``."""
        self.clients.discard(client)

    def handle_connect(self, client: ClientProtocol, packet: Connect) -> Work:
        return self.connect.handle_connect(client, packet)

    def handle_subscribe(self, client: ClientProtocol, packet: Subscribe) -> Work:
        return self.subscriptions.handle_subscribe(client, packet)

    def handle_unsubscribe(self, client: ClientProtocol, packet: Unsubscribe) -> Work:
        return self.subscriptions.handle_unsubscribe(client, packet)

    def commit_now(self) -> None:
        self.store.commit()

    # -- NodeEvents (hooks.py: called by the cluster) --------------------------

    def cluster_lost(self) -> None:
        for client in list(self.clients):
            if client.session is not None:  # connected; the cluster refuses new CONNECTs
                client.disconnect(ReasonCode.SERVER_UNAVAILABLE, "no cluster majority")

    def kick_client(self, client_id: str, epoch: int) -> None:
        session = self.sessions.get(client_id)
        if session is None or session.connection is None:
            return
        if session.connection.epoch < epoch:
            session.connection.disconnect(ReasonCode.SESSION_TAKEN_OVER, "session taken over")

    def surrender_session(self, client_id: str, epoch: int, resumed: bool) -> bool:
        return self.migration.surrender(client_id, epoch, resumed)

    def release_session(self, client_id: str, final: bool) -> SessionMessages | None:
        return self.migration.release(client_id, final)

    def take_late_handover(self, client_id: str, messages: SessionMessages) -> bool:
        return self.migration.take_late(client_id, messages)

    def adopt_session(self, client_id: str, epoch: int, transfer: SessionTransfer) -> None:
        self.migration.adopt(client_id, epoch, transfer)

    def apply_retained(self, topic: str, message: Message | None) -> None:
        self.publishing.apply_retained(topic, message)

    def publish_will(self, will: Will) -> None:
        self.publishing.publish_will(will)

    def publish_local(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message the node itself makes ($SYS); kept on this node, never replicated."""
        self.publishing.publish_local(topic, payload, retain)
