"""Local fan-out: who on this node gets a message, at which QoS, with which ids.

The subscription index matches the topic; a client with several matching
subscriptions gets one copy at the highest granted QoS carrying every
subscription identifier (MQTT 5 §3.3.4); each matching share group gets one
copy, round robin among its members, preferring online ones the ACL lets
read the topic. A delivery to a subscriber whose socket is full holds the
publisher back (``connection.py``) rather than buffering without bound.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .extensions import Extensions
from .hooks import RouteKey
from .message import Message
from .round_robin import RoundRobin
from .session import Delivery, Session, Subscription
from .topics import TopicIndex

if TYPE_CHECKING:
    from .protocol import ClientProtocol


class FanOut:
    """This node's subscription indexes and the delivery of one message to them."""

    def __init__(self, sessions: dict[str, Session], extensions: Extensions) -> None:
        self.sessions = sessions
        self.extensions = extensions
        self.subscriptions: TopicIndex[str, Subscription] = TopicIndex()
        """Plain subscriptions: topic filter → client id → subscription."""
        self.shared: TopicIndex[tuple[str, str], Subscription] = TopicIndex()
        """Shared subscriptions: topic filter → (group, client id) → subscription."""
        self._turns: RoundRobin[RouteKey] = RoundRobin()

    def deliver(
        self,
        message: Message,
        publisher: ClientProtocol | None = None,
        only_groups: Collection[RouteKey] | None = None,
    ) -> int:
        """Deliver to this node's subscribers; returns how many sessions got it.

        ``publisher``: the client whose PUBLISH this is, held back by slow readers.
        ``only_groups``: the share groups to serve; None for all.
        """
        topic = message.topic
        entries = self.subscriptions.match(topic)
        delivered = 0
        if entries:
            if len(entries) == 1:
                _, client_id, sub = entries[0]
                delivered = self._deliver_one(message, client_id, sub, publisher)
            else:
                delivered = self._deliver_overlapping(message, entries, publisher)
        if len(self.shared) and (only_groups is None or only_groups):
            shared = self.shared.match(topic)
            if shared:
                delivered += self._deliver_shared(message, shared, only_groups, publisher)
        return delivered

    def deliver_forwarded(
        self, message: Message, shared_groups: Collection[RouteKey] | None = None
    ) -> None:
        """A publish from another node (``hooks.NodeEvents``): no publisher to hold back here."""
        self.deliver(message, None, shared_groups)

    def _deliver_one(
        self,
        message: Message,
        client_id: str,
        sub: Subscription,
        publisher: ClientProtocol | None,
    ) -> int:
        if sub.no_local and client_id == message.publisher:
            return 0
        session = self.sessions.get(client_id)
        if session is None:
            return 0
        qos = message.qos if message.qos < sub.qos else sub.qos
        retain = message.retain and sub.retain_as_published
        ids = (sub.identifier,) if sub.identifier is not None else ()
        self._hand_to(session, Delivery(message, qos, retain, ids), publisher)
        return 1

    def _hand_to(
        self, session: Session, delivery: Delivery, publisher: ClientProtocol | None
    ) -> None:
        """Deliver, and make the publisher wait if the subscriber cannot keep up."""
        session.deliver(delivery)  # drops are counted by the session
        if self.extensions:
            self.extensions.delivered(session.client_id, delivery.message, delivery.qos)
        client = session.connection
        if client is not None and client.write_paused and publisher is not None:
            client.hold(publisher)

    def _deliver_overlapping(
        self,
        message: Message,
        entries: tuple[tuple[str, str, Subscription], ...],
        publisher: ClientProtocol | None,
    ) -> int:
        """One copy per client at the highest granted QoS, with every subscription id."""
        per_client: dict[str, list[Any]] = {}
        sender = message.publisher
        for _, client_id, sub in entries:
            if sub.no_local and client_id == sender:
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
            self._hand_to(session, delivery, publisher)
            delivered += 1
        return delivered

    def _deliver_shared(
        self,
        message: Message,
        entries: tuple[tuple[str, tuple[str, str], Subscription], ...],
        only_groups: Collection[RouteKey] | None,
        publisher: ClientProtocol | None,
    ) -> int:
        """Each matching share group gets one copy, round robin, preferring usable members."""
        groups: dict[RouteKey, list[tuple[str, Subscription]]] = {}
        for topic_filter, (group, client_id), sub in entries:
            key = RouteKey(group, topic_filter)
            if only_groups is not None and key not in only_groups:
                continue
            groups.setdefault(key, []).append((client_id, sub))
        delivered = 0
        sessions = self.sessions
        topic = message.topic

        for key, members in groups.items():

            def usable(index: int, members: list[tuple[str, Subscription]] = members) -> bool:
                """Online, and allowed by the ACL to read the topic: the group's copy
                goes to a member who may have it, when one can."""
                session = sessions.get(members[index][0])
                if session is None or session.connection is None:
                    return False
                read_filter = session.read_filter
                return read_filter is None or read_filter.may_read(topic)

            client_id, sub = members[self._turns.pick(key, len(members), usable)]
            delivered += self._deliver_one(message, client_id, sub, publisher)
        return delivered
