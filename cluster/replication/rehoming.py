"""What was on its way to a node declared dead goes where that node's sessions went.

A QoS 1/2 publish whose target node stops answering is not failed back to
its publisher: the publisher is held (the link's waiter is not done) until
the node answers again or the cluster declares it dead (``NodeDown``). In the
second case the link hands back everything it held for the dead node
(``ReliableLink.declared_down``) and ``PendingRehoming`` finishes it:

- a publish goes, as a late hand-over, to each of the dead node's persistent
  sessions it matches, at the node that holds it now: the node that adopted it
  (``NodeDownResult.rehomed``), or the one whose CONNECT claimed it from the
  dead node while that node was out of reach; the dead node's clean sessions
  ended with it, so for them it is done;
- a hand-over that was moving a session to the dead node goes on to that
  session's owner now, late;
- kicks and barriers for the dead node are done: it is declared dead, so its
  lease ran out and its routes are gone.

Only then are the publishers answered. A publish the dead node was to serve
for a share group goes to a rehomed member of that group, if one matches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Mapping, Sequence

from raftmq.node.hooks import ClusterUnavailable, NodeEvents, SessionMessages
from raftmq.node.session import Delivery
from raftmq.node.topics import TopicIndex, parse_shared

from ..forwarding.frames import Forwarded, Handover, Item
from ..forwarding.link import Waiter
from .commands import Owner, SessionRecord, StoredSubscription
from .releases import HandoverLinks
from .state import ClusterState

log = logging.getLogger("raftmq.cluster")

MOVE_MEMORY = 120.0
"""Seconds a claim's previous owner is remembered: longer than a node takes to be
declared down after it was last seen (lease, suspicion, margin)."""


class PendingRehoming:
    """Finishes what the links held for dead nodes (see the module docstring)."""

    def __init__(self, node_id: str, links: HandoverLinks) -> None:
        self.node_id = node_id
        self.links = links
        self._moved: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """Client id -> (node it was claimed from, when): recent moves, newest last."""
        self.rehomed_messages = 0
        """Messages that reached a dead node's sessions at their new homes this way."""
        self.failed = 0
        """Publishes whose re-homing failed: their publishers were answered "unavailable"."""

    def moved(self, client_id: str, previous: str) -> None:
        """A claim took ``client_id`` from ``previous`` (every node applies it alike)."""
        now = time.monotonic()
        moved = self._moved
        moved[client_id] = (previous, now)
        moved.move_to_end(client_id)
        while moved and now - next(iter(moved.values()))[1] > MOVE_MEMORY:
            moved.popitem(last=False)

    def sessions_of(
        self, dead: str, rehomed: Sequence[tuple[str, Owner]], state: ClusterState
    ) -> dict[str, tuple[Owner, SessionRecord]]:
        """The persistent sessions what waited for ``dead`` was meant for, with their
        owner now: those ``NodeDown`` re-homed, and those claimed from ``dead`` while it
        was out of reach (it never let go of them, so its hand-over never came)."""
        sessions = {cid: (owner, state.sessions[cid]) for cid, owner in rehomed}
        for client_id, (previous, _) in self._moved.items():
            owner, record = state.owners.get(client_id), state.sessions.get(client_id)
            if previous == dead and owner is not None and record is not None:
                sessions.setdefault(client_id, (owner, record))
        return sessions

    async def finish(
        self,
        node: NodeEvents,
        dead: str,
        held: Sequence[tuple[Item, Waiter | None]],
        rehomed: Mapping[str, tuple[Owner, SessionRecord]],
        owners: Mapping[str, Owner],
    ) -> None:
        """Send ``held`` (what the link to ``dead`` held) on; answer its waiters once done.

        ``rehomed``: client id -> (owner now, session record) of the sessions it was
        meant for (``sessions_of``); ``owners``: the current owners, for hand-overs
        moving to ``dead``.
        """
        index = _subscription_index(rehomed)
        per_client: dict[str, list[Delivery]] = defaultdict(list)
        waiters: dict[str, list[Waiter]] = defaultdict(list)
        onward: list[tuple[str, Handover]] = []
        done: list[Waiter] = []
        for item, waiter in held:
            targets: set[str] = set()
            if type(item) is Forwarded:
                for client_id, delivery in _deliveries(index, item):
                    per_client[client_id].append(delivery)
                    targets.add(client_id)
            elif type(item) is Handover:
                owner = owners.get(item.client_id)
                if owner is not None and owner.node_id != dead:
                    late = Handover(item.client_id, owner.epoch, item.messages, late=True)
                    onward.append((owner.node_id, late))
            if waiter is None:
                continue
            if not targets:
                done.append(waiter)
            for client_id in targets:
                waiters[client_id].append(waiter)
        sends: list[tuple[str, Awaitable[None] | None]] = []
        for client_id, deliveries in per_client.items():
            owner = rehomed[client_id][0]
            messages = SessionMessages(queued=deliveries)
            self.rehomed_messages += len(deliveries)
            if owner.node_id == self.node_id:
                node.take_late_handover(client_id, messages)
                sends.append((client_id, None))
            else:
                late = Handover(client_id, owner.epoch, messages, late=True)
                sends.append((client_id, self.links.hand_over(owner.node_id, late)))
        for to, handover in onward:
            sends.append(("", self.links.hand_over(to, handover)))
        outcomes = await asyncio.gather(
            *(_settled(send) for _, send in sends), return_exceptions=True
        )
        failed: set[int] = set()
        for (client_id, _), outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning(
                    "messages on their way to dead node %s for client %r: not re-homed: %s",
                    dead,
                    client_id or "(hand-over)",
                    outcome,
                )
                for waiter in waiters.get(client_id, ()):
                    if id(waiter) not in failed:
                        failed.add(id(waiter))
                        self.failed += 1
                        waiter.fail(ClusterUnavailable(f"node {dead} is down: {outcome}"))
        for waiter in done:
            waiter.hit()
        for client_waiters in waiters.values():
            for waiter in client_waiters:
                if id(waiter) not in failed:
                    waiter.hit()


async def _settled(send: Awaitable[None] | None) -> None:
    if send is not None:
        await send


def _subscription_index(
    rehomed: Mapping[str, tuple[Owner, SessionRecord]],
) -> TopicIndex[str, StoredSubscription]:
    """The rehomed sessions' subscriptions, by filter (a shared one by its own filter)."""
    index: TopicIndex[str, StoredSubscription] = TopicIndex(cache_size=256)
    for client_id, (_, record) in rehomed.items():
        for sub in record.subscriptions:
            shared = parse_shared(sub.topic_filter)
            index.add(sub.topic_filter if shared is None else shared[1], client_id, sub)
    return index


def _deliveries(
    index: TopicIndex[str, StoredSubscription], item: Forwarded
) -> list[tuple[str, Delivery]]:
    """(client id, delivery) of ``item`` for each rehomed session it matches: its plain
    subscriptions, and its shared ones in a group the dead node was to serve."""
    message = item.message
    groups = {(key.share_group, key.topic_filter) for key in item.shared_groups}
    best: dict[str, Delivery] = {}
    for _, client_id, sub in index.match(message.topic):
        shared = parse_shared(sub.topic_filter)
        if shared is not None and shared not in groups:
            continue
        if sub.no_local and client_id == message.publisher:
            continue
        qos = min(message.qos, sub.qos)
        ids = () if sub.identifier is None else (sub.identifier,)
        delivery = Delivery(message, qos, message.retain and sub.retain_as_published, ids)
        kept = best.get(client_id)
        if kept is None or qos > kept.qos:
            best[client_id] = delivery  # one copy per session, at its best QoS (MQTT 5 §3.3.4)
    return list(best.items())
