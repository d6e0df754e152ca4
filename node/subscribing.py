"""SUBSCRIBE and UNSUBSCRIBE, and the routes this node holds in the cluster.

A subscription is checked (levels, ACL, no local on a share), committed to
the cluster first when its session persists (so it follows the client to any
node), then entered in the local index; the first local subscriber of a
(group, filter) adds this node's route, the last one gone removes it.
Retained matches go out after the SUBACK (MQTT 5 §3.3.1.3).
"""

from __future__ import annotations

import logging
import time

from . import client_log, read_rights
from .context import NodeContext, NodePart
from .fanout import FanOut
from .hooks import ClusterUnavailable, RouteKey
from .packets import Suback, Subscribe, Unsuback, Unsubscribe
from .protocol import ClientProtocol, ProtocolViolation
from .reason_codes import ReasonCode
from .routes import LocalRoutes
from .session import Delivery, Subscription
from .topics import parse_shared, topic_levels

log = logging.getLogger("raftmq.broker")


class Subscriptions(NodePart):
    """Subscribe and unsubscribe for this node's clients."""

    def __init__(self, node: NodeContext, fanout: FanOut) -> None:
        super().__init__(node)
        self.fanout = fanout
        self.routes = LocalRoutes(self.hooks, self.background)
        """Local subscribers per route (``routes.py``): the last one gone removes it."""

    async def handle_subscribe(self, client: ClientProtocol, packet: Subscribe) -> None:
        session = client.session
        assert session is not None
        cfg = self.config
        level = client.protocol_level
        identifiers = packet.properties.get("subscription_identifier")
        identifier = identifiers[0] if identifiers else None
        codes: list[int] = []
        problems: list[str] = []
        retained_for: list[Subscription] = []
        for full_filter, opts in packet.subscriptions:
            shared = parse_shared(full_filter)
            if shared is not None and opts.no_local:
                raise ProtocolViolation(
                    ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription"
                )
            if topic_levels(full_filter) > cfg.max_topic_levels:
                self.stats.limits.topic_levels += 1
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if level == 5 else 0x80)
                problems.append(f"{full_filter!r} has more than {cfg.max_topic_levels} levels")
                continue
            group, topic_filter = shared if shared is not None else (None, full_filter)
            rights = client.rights
            if rights is not None and not rights.may_subscribe(topic_filter):
                client_log.denied(session.client_id, client.username, "subscribe", full_filter)
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
                        session.client_id, client.epoch, {full_filter: sub}
                    )
                await self.add(session.client_id, sub)
            except ClusterUnavailable:
                codes.append(ReasonCode.UNSPECIFIED_ERROR)
                problems.append(f"{full_filter!r}: cluster unavailable")
                continue
            session.subscriptions[full_filter] = sub
            if rights is not None:
                read_rights.on_subscribe(session, rights, topic_filter)
            if session.store is not None:
                session.store.save_subscription(session, full_filter, sub)
            if self.extensions:
                self.extensions.subscribed(session.client_id, full_filter, sub)
            codes.append(opts.qos)
            if group is None and (
                opts.retain_handling == 0 or (opts.retain_handling == 1 and not existed)
            ):
                retained_for.append(sub)
        self.stats.subscribes += 1
        props = client.problem("; ".join(problems)) if problems else {}
        client.send(Suback(packet.packet_id, codes, props))
        now = time.monotonic()
        for sub in retained_for:
            ids = (sub.identifier,) if sub.identifier is not None else ()
            for _, message in self.retained.match(sub.topic_filter):
                if message.expired(now):
                    continue
                qos = message.qos if message.qos < sub.qos else sub.qos
                session.deliver(Delivery(message, qos, True, ids))

    async def handle_unsubscribe(self, client: ClientProtocol, packet: Unsubscribe) -> None:
        session = client.session
        assert session is not None
        codes: list[int] = []
        removed: list[str] = []
        for full_filter in packet.topic_filters:
            sub = session.subscriptions.pop(full_filter, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
                continue
            self.remove(session.client_id, sub)
            if session.store is not None:
                session.store.delete_subscription(session, full_filter)
            if self.extensions:
                self.extensions.unsubscribed(session.client_id, full_filter)
            removed.append(full_filter)
            codes.append(ReasonCode.SUCCESS)
        if removed and session.persistent:
            try:
                await self.hooks.forget_subscriptions(session.client_id, client.epoch, removed)
            except ClusterUnavailable:
                # Unsubscribed here all the same; should the client resume on another
                # node, these filters come back with its session (at least once, not lost).
                log.warning(
                    "client %r: unsubscribe of %s not replicated", client.client_id, removed
                )
        client.send(Unsuback(packet.packet_id, codes))

    async def add(self, client_id: str, sub: Subscription) -> None:
        """Enter ``sub`` in the local index, and return once this node's route for it is
        live cluster-wide.

        The index comes first: other nodes forward as soon as they apply the
        route, before this node hears back, and what they send must find the
        subscriber here. Should the route fail, the entry goes again.
        """
        key = RouteKey(sub.share_group, sub.topic_filter)
        fanout = self.fanout
        if sub.share_group is None:
            added = fanout.subscriptions.add(sub.topic_filter, client_id, sub)
        else:
            added = fanout.shared.add(sub.topic_filter, (sub.share_group, client_id), sub)
        try:
            await self.routes.acquire(key)
        except BaseException:
            if added:  # acquire gave its count back already
                self._unindex(client_id, sub)
            raise
        if not added:  # it replaced this client's subscription, counted already
            self.routes.release(key)

    def remove(self, client_id: str, sub: Subscription) -> None:
        if self._unindex(client_id, sub):
            self.routes.release(RouteKey(sub.share_group, sub.topic_filter))

    def _unindex(self, client_id: str, sub: Subscription) -> bool:
        fanout = self.fanout
        if sub.share_group is None:
            return fanout.subscriptions.remove(sub.topic_filter, client_id)
        return fanout.shared.remove(sub.topic_filter, (sub.share_group, client_id))

    def __len__(self) -> int:
        """How many subscriptions this node holds, plain and shared."""
        return len(self.fanout.subscriptions) + len(self.fanout.shared)
