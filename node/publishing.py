"""PUBLISH: the checks a message passes, its routing, and the order of its acknowledgement.

A publish is checked (topic levels, ACL, ``$SYS``), made a ``Message``
once, delivered to local subscribers (``fanout.py``) and forwarded to the
other nodes that want it. QoS 1/2 is acknowledged only once every target node
took it and every extension that asked to wait is done; QoS 1 acknowledgements
still go in PUBLISH order without the next publish waiting (``acks.py``).
QoS 2 and retained publishes keep the serial path, so exactly-once and the
retained order do not depend on pipelining.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial

from . import client_log
from .acks import OrderedAcks
from .context import NodeContext, NodePart
from .fanout import FanOut
from .hooks import ClusterUnavailable
from .limits import retained_size
from .message import Message
from .packets import Publish, Pubrec, Will
from .protocol import ClientProtocol, Disconnected, ProtocolViolation, Work
from .reason_codes import ReasonCode
from .topics import topic_levels


class Publishing(NodePart):
    """Publishes from this node's clients, its wills and its own ($SYS) messages."""

    def __init__(self, node: NodeContext, fanout: FanOut) -> None:
        super().__init__(node)
        self.fanout = fanout

    def handle_publish(self, client: ClientProtocol, packet: Publish) -> Work | None:
        """Route ``packet``; the result, when not None, is to await before reading on."""
        session = client.session
        assert session is not None
        # Aliases and the receive maximum are MQTT 5's: a v3 PUBLISH skips both calls.
        v5 = client.protocol_level == 5
        topic = client.topic_of(packet) if v5 and packet.properties else packet.topic
        qos = packet.qos
        if qos:
            if qos == 2 and packet.packet_id in session.incoming_qos2:
                client.send(Pubrec(packet.packet_id))  # a resend: already delivered once
                return None
            if v5:
                client.check_receive_maximum(len(session.incoming_qos2))
        if topic_levels(topic) > self.config.max_topic_levels:
            self.stats.limits.topic_levels += 1
            raise ProtocolViolation(
                ReasonCode.TOPIC_NAME_INVALID, f"topic {topic!r} has too many levels"
            )
        rights = client.rights
        if rights is not None:  # the cached decision inline: this runs for every PUBLISH
            allowed = rights.writes.get(topic)
            if allowed is None:
                allowed = rights.may_publish(topic)
        else:
            allowed = True
        if not allowed or topic.startswith("$SYS"):  # the node's own reports: not forgeable
            client_log.denied(client.client_id, client.username, "publish", topic)
            return self._refuse(client, packet)
        self.stats.messages_received += 1
        self.stats.message_bytes_received += len(packet.payload)
        message = Message.create(
            topic, packet.payload, qos, packet.retain, packet.properties, client.client_id
        )
        extension_wait = self.extensions.published(message) if self.extensions else None
        if packet.retain:
            return self._publish_retained(client, packet, message, extension_wait)
        matched, pending = self.route(message, client)
        if qos == 0:
            return None if pending is None else _wait_for_room(pending)
        if pending is not None:
            matched = matched or 1  # another node taking it counts as a match
        if extension_wait is not None:
            pending = _also(pending, extension_wait)
        if pending is None:
            if qos == 2 or not client.ordered_acks:
                self._ack(client, packet, matched)
                return None
        elif qos == 2:
            return self._ack_after(client, packet, pending, matched)
        return self._ack_in_order(client, pending, partial(self._ack, client, packet, matched))

    def route(
        self, message: Message, publisher: ClientProtocol | None = None
    ) -> tuple[int, Awaitable[None] | None]:
        """Stamp its identity, deliver to local subscribers, and forward to other nodes
        that want it."""
        stamps = self.stamps  # inline: this runs for every PUBLISH
        stamps.last += 1
        message.origin = stamps.node_id
        message.seq = stamps.last
        matched = self.fanout.deliver(message, publisher)
        return matched, self.hooks.forward(message)

    def _ack_in_order(
        self, client: ClientProtocol, pending: Awaitable[None] | None, send: Callable[[], None]
    ) -> Work | None:
        """Send a QoS 1 acknowledgement now, or queue it behind those still waiting for
        other nodes (see acks.py); the result, when not None, is to await before reading on."""
        acks = client.ordered_acks
        if pending is None and not acks:
            send()
            return None
        if acks is None:
            acks = client.ordered_acks = OrderedAcks(client, self.config.receive_maximum)
        return acks.add(pending, send)

    def _answer(
        self, client: ClientProtocol, packet: Publish, send: Callable[[], None]
    ) -> Work | None:
        """Acknowledge ``packet`` with ``send``, in order if it is QoS 1."""
        if packet.qos == 1:
            return self._ack_in_order(client, None, send)
        send()
        return None

    def _refuse(self, client: ClientProtocol, packet: Publish) -> Work | None:
        """A denied PUBLISH (ACL, or a $SYS topic): v5 learns why (0x87); v3 has no way to
        say so, so the message is acknowledged and dropped, as Mosquitto does."""
        if not packet.qos:
            return None
        if client.protocol_level != 5:
            return self._answer(client, packet, partial(self._ack, client, packet, 1))
        reject = partial(client.reject, packet, ReasonCode.NOT_AUTHORIZED, "not authorized")
        return self._answer(client, packet, reject)

    async def _publish_retained(
        self,
        client: ClientProtocol,
        packet: Publish,
        message: Message,
        extension_wait: Awaitable[None] | None,
    ) -> None:
        keep = self.retained_fits(message)
        if not keep and packet.qos and client.protocol_level == 5:
            # An error ack means "not accepted": delivering the message anyway
            # would duplicate it if the publisher sends it again.
            reject = partial(
                client.reject, packet, ReasonCode.QUOTA_EXCEEDED, "retained message limit reached"
            )
            room = self._answer(client, packet, reject)
        else:
            with _awaiting_cluster(client):
                if keep:
                    retained = message if message.payload else None
                    await self.hooks.set_retained(message.topic, retained)
                matched, pending = self.route(message)
                if pending is not None:
                    await pending
                    matched = matched or 1
                if extension_wait is not None and packet.qos:
                    await extension_wait
            if not packet.qos:
                return
            room = self._answer(client, packet, partial(self._ack, client, packet, matched))
        if room is not None:
            await room

    async def _ack_after(
        self, client: ClientProtocol, packet: Publish, pending: Awaitable[None], matched: int
    ) -> None:
        """QoS 2: PUBREC once other nodes took it; the next PUBLISH waits (see acks.py)."""
        with _awaiting_cluster(client):
            await pending
        self._ack(client, packet, matched)

    def _ack(self, client: ClientProtocol, packet: Publish, matched: int) -> None:
        store = self.store
        if store.pending:
            store.hold(client)  # the ack waits for the commit of what the message changed
        client.acknowledge(packet, matched)

    def retained_fits(self, message: Message) -> bool:
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

    def apply_retained(self, topic: str, message: Message | None, keep: bool = True) -> None:
        """The one place retained messages change, so the byte count stays exact.

        ``keep``: write the change to the store (not while restoring from it).
        """
        old = self.retained.get(topic)
        if message is None:
            self.retained.delete(topic)
        else:
            self.retained.set(topic, message)
        self.stats.retained_bytes += retained_size(message) - retained_size(old)
        if keep and not topic.startswith("$SYS/"):
            # $SYS is the node's own, rebuilt every sys_interval: not worth keeping.
            self.store.set_retained(topic, message)

    def publish_will(self, will: Will) -> None:
        props = {k: v for k, v in will.properties.items() if k != "will_delay_interval"}
        message = Message.create(will.topic, will.payload, will.qos, will.retain, props)
        self.stats.wills_published += 1
        if will.retain and self.retained_fits(message):
            self.background.run(
                self.hooks.set_retained(will.topic, message if will.payload else None)
            )
        extension_wait = self.extensions.published(message) if self.extensions else None
        _, pending = self.route(message)
        pending = _also(pending, extension_wait)
        if pending is not None:
            self.background.run(pending)  # other nodes take it; nobody waits for an ack

    def publish_local(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message the node itself makes ($SYS); kept on this node, never replicated."""
        message = Message.create(topic, payload, 0, retain)
        if retain:
            self.apply_retained(topic, message)
        self.fanout.deliver(message)


@contextmanager
def _awaiting_cluster(client: ClientProtocol) -> Iterator[None]:
    """A publish in flight towards the cluster: counted against receive maximum,
    and answered with "server unavailable" if the cluster cannot take it."""
    client.pending_started()
    try:
        yield
    except ClusterUnavailable:
        client.disconnect(ReasonCode.SERVER_UNAVAILABLE, "cluster unavailable")
        raise Disconnected from None
    finally:
        client.pending_done()


def _also(pending: Awaitable[None] | None, wait: Awaitable[None] | None) -> Awaitable[None] | None:
    """One awaitable for both (either may be None)."""
    if wait is None:
        return pending
    if pending is None:
        return wait
    return asyncio.gather(pending, wait)


async def _wait_for_room(pending: Awaitable[None]) -> None:
    """QoS 0 towards a peer at its queue limit: read nothing more from the publisher
    until the peer has room. QoS 0 is at most once, so a peer that cannot be
    reached (the forwarder counts what it drops) does not cost the publisher its
    connection."""
    with suppress(ClusterUnavailable):
        await pending
