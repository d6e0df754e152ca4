"""The CONNECT handshake: checks, authentication, the cluster claim, and the session.

A CONNECT is checked against the node's limits, authenticated (password file,
TLS client certificate), and its negotiation settled (``protocol.py``). The
client id is then claimed through the cluster: a session the client left on
another node is taken over (``migration.py``) before the CONNACK says whether
a session is present. No quorum: "server unavailable".
"""

from __future__ import annotations

import secrets

from . import client_log, read_rights
from .auth import Authenticator
from .config import TLS_SCHEMES
from .context import NodeContext, NodePart
from .hooks import ClusterUnavailable
from .migration import SessionMigration
from .packets import Connect
from .protocol import CLOSED, ClientProtocol, Disconnected
from .reason_codes import ReasonCode
from .sessions import SessionRegistry
from .topics import topic_levels


def new_client_id() -> str:
    """An id for a client that sent none (MQTT 5 §3.1.3.1)."""
    return "raftmq-" + secrets.token_hex(8)


class ConnectHandshake(NodePart):
    """Turns an accepted CONNECT into a connected client with its session."""

    def __init__(
        self,
        node: NodeContext,
        auth: Authenticator,
        sessions: SessionRegistry,
        migration: SessionMigration,
    ) -> None:
        super().__init__(node)
        self.auth = auth
        self.sessions = sessions
        self.migration = migration

    async def handle_connect(self, client: ClientProtocol, packet: Connect) -> None:
        """Connect the client, or refuse it; either way with one log line (``client_log``)."""
        try:
            await self._handshake(client, packet)
        except Disconnected:
            ending = client.ended
            if ending is not None and ending.by == "refused" and ending.reason is not None:
                client_log.refused(client, packet, ending.reason)
            raise

    async def _handshake(self, client: ClientProtocol, packet: Connect) -> None:
        cfg = self.config
        limits = self.stats.limits
        if self._full() and not self.sessions.is_takeover(packet.client_id):
            limits.connections += 1
            client.refuse(ReasonCode.QUOTA_EXCEEDED)
        if len(packet.client_id.encode()) > cfg.max_client_id_length:
            limits.client_id_length += 1
            client.refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
        if "authentication_method" in packet.properties:
            client.refuse(ReasonCode.BAD_AUTHENTICATION_METHOD)
        tls = client.listener in TLS_SCHEMES
        peercert = client.link.peer_certificate() if tls else None
        identity = await self.auth.authenticate(packet.username, packet.password, peercert, tls)
        if client.state == CLOSED:
            return
        if identity.reason:
            client.refuse(identity.reason)
        client.username = identity.username
        granted = client.negotiate(packet, new_client_id)
        client_id = granted.client_id
        will = packet.will
        if will is not None and topic_levels(will.topic) > cfg.max_topic_levels:
            limits.topic_levels += 1
            client.refuse(ReasonCode.TOPIC_NAME_INVALID)
        if self.acl is not None:
            client.rights = self.acl.rights_for(client.username, client_id)
            if will is not None and not client.rights.may_publish(will.topic):
                client.refuse(ReasonCode.NOT_AUTHORIZED)
        try:
            claim = await self.hooks.claim_client(
                client_id,
                clean_start=packet.clean_start,
                expiry_interval=granted.expiry_interval,
                will=will,
            )
            transfer = None
            if claim.session is not None and (
                claim.previous_owner != cfg.node_id or self.sessions.get(client_id) is None
            ):
                transfer = self.hooks.take_session(client_id, claim)
                if transfer is not None:
                    await self.migration.take(client_id, claim, transfer)
        except ClusterUnavailable:
            client.refuse(ReasonCode.SERVER_UNAVAILABLE)
        if client.state == CLOSED:
            return
        # Everything from here on runs without yielding, so no other CONNECT can
        # slip in between the checks and the session change.
        if self._full() and not self.sessions.is_takeover(client_id):
            limits.connections += 1
            client.refuse(ReasonCode.QUOTA_EXCEEDED)

        sessions = self.sessions
        existing = sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            taken = ReasonCode.SESSION_TAKEN_OVER
            existing.connection.end("server", taken, f"by a new connection from {client.peer}")
            existing.connection.disconnect(taken, "session taken over")
            existing = sessions.get(client_id)
        session_present = False
        if existing is not None and not packet.clean_start:
            session = existing
            session_present = True
            sessions.stop_timers(session)
        else:
            if existing is not None:
                sessions.end(existing)
            session = sessions.new(client_id)
            sessions.by_client[client_id] = session
        session.expiry_interval = granted.expiry_interval
        session.will = will
        sessions.bind_store(session)
        if transfer is not None and session.store is not None:
            self.migration.journal_transferred(session)

        if client.rights is not None:  # before resume sends what the session kept
            read_rights.on_connect(session, client.rights)
        self.stats.client_connected()
        client.accept(packet, granted, session, claim.epoch, session_present)
        client_log.connected(client, packet.clean_start, session_present)
        if session_present:
            session.resume(client)
        else:
            session.connection = client
        if session.store is not None:
            session.store.save_session(session)  # as connected: a crash now loses the client
        self.store.hold(client)  # the CONNACK reports the session the store is writing
        if self.extensions:
            self.extensions.connected(
                client_id, client.username, client.peer, client.protocol_level
            )

    def _full(self) -> bool:
        return self.stats.clients_connected >= self.config.max_connections
