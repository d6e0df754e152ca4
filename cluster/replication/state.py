"""The replicated state machine: what every node of the cluster agrees on.

``ClusterState`` is a plain object whose state is a pure function of the
commands (``commands.py``) applied to it, in order. It does no I/O, reads no
clock and starts no thread, so every replica that applies the same Raft log
holds the same state, and a unit test can drive it by feeding it commands.

Epochs come from one cluster-wide counter: every claim gets a number larger
than any claim before it. A client's ownership entry can therefore be
dropped on release without a later claim ever reusing an older epoch.

Determinism rules kept throughout: no ``hash()`` of strings (randomised per
process), no iteration over sets without sorting, and snapshots that preserve
dict insertion order so a restored replica iterates like the original.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from raftmq.node.hooks import RouteKey
from raftmq.node.topics import TopicIndex, parse_shared

from . import commands
from .commands import (
    ClaimFenced,
    ClaimResult,
    NodeDownResult,
    Owner,
    Rejected,
    RetainedRecord,
    SessionRecord,
    StoredSubscription,
    WillRecord,
)

SNAPSHOT_VERSION = 1


def route_key(full_filter: str) -> RouteKey:
    """The route of a subscription to ``full_filter`` (``$share/<group>/...`` or plain)."""
    shared = parse_shared(full_filter)
    return RouteKey(None, full_filter) if shared is None else RouteKey(*shared)


def _will_delay(will: WillRecord, session: SessionRecord | None) -> float:
    """Seconds after the connection ended that ``will`` is due: its delay, or the end of
    its session if that comes first (a session that ends with its connection: 0)."""
    delay = will.properties.get("will_delay_interval", 0)
    return float(min(delay, 0 if session is None else session.expiry_interval))


def _rehome_index(client_id: str, live: int) -> int:
    """Which live node adopts a session: stable across processes (crc32, not hash())."""
    return zlib.crc32(client_id.encode()) % live


class ClusterState:
    """Client ownership, persistent sessions, routes, retained messages and wills."""

    def __init__(self) -> None:
        self._reset()
        self._handlers: dict[type, Callable[[Any], object]] = {
            commands.SetMembers: self._set_members,
            commands.NodeDown: self._node_down,
            commands.NodeUp: self._node_up,
            commands.FireWill: self._fire_will,
            commands.ClaimClient: self._claim,
            commands.ReleaseClient: self._release,
            commands.AddSessionSubscriptions: self._add_session_subscriptions,
            commands.RemoveSessionSubscriptions: self._remove_session_subscriptions,
            commands.RegisterWill: self._register_will,
            commands.AddRoute: self._add_route,
            commands.RemoveRoute: self._remove_route,
            commands.SetRetained: self._set_retained,
        }

    def _reset(self) -> None:
        self.applied = 0
        """Commands applied so far, counted alike on every replica: a position in the
        log that nodes compare (the forwarding's route barrier)."""
        self.members: tuple[str, ...] = ()
        self.down: set[str] = set()
        self.next_epoch = 1
        self.owners: dict[str, Owner] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.wills: dict[str, WillRecord] = {}
        self.delayed_wills: dict[str, tuple[WillRecord, float]] = {}
        """Client id -> (will, wall-clock due time) of a dead node's clients whose will
        delay runs: the leader fires each when due, unless the client came back."""
        self.down_incarnations: dict[str, int] = {}
        """Per node, the highest SWIM incarnation it was declared dead at."""
        self.routes: dict[RouteKey, set[str]] = {}
        self.retained: dict[str, RetainedRecord] = {}
        self._route_index: TopicIndex[tuple[str | None, str], None] = TopicIndex()

    # -- applying commands -----------------------------------------------------

    def apply(self, command: object) -> object:
        """Apply one command and return its result; unknown commands are rejected, not raised.

        Raising here would stall the Raft apply loop on the same entry forever,
        so anything this state does not understand becomes a ``Rejected``.
        """
        self.applied += 1
        handler = self._handlers.get(type(command))
        if handler is None:
            return Rejected(f"unknown command type {type(command).__name__}")
        return handler(command)

    def live_members(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.down)

    def _owned_by(self, client_id: str, node_id: str, epoch: int) -> bool:
        return self.owners.get(client_id) == (node_id, epoch)

    def _set_members(self, cmd: commands.SetMembers) -> None:
        self.members = tuple(sorted(set(cmd.members)))
        self.down &= set(self.members)

    def _claim(self, cmd: commands.ClaimClient) -> ClaimResult | ClaimFenced:
        client_id = cmd.client_id
        previous = self.owners.get(client_id)
        owner_epoch = 0 if previous is None else previous.epoch
        if cmd.seen_epoch is not None and cmd.seen_epoch != owner_epoch:
            return ClaimFenced(owner_epoch)
        epoch = self.next_epoch
        self.next_epoch += 1
        self.owners[client_id] = Owner(cmd.node_id, epoch)
        # Back before its will delay ran out: no will (MQTT 5 §3.1.3.2.2).
        self.delayed_wills.pop(client_id, None)
        # The previous connection's will is its old node's business now (it
        # publishes it, or not, as the connection ends there).
        if cmd.will is None:
            self.wills.pop(client_id, None)
        else:
            self.wills[client_id] = cmd.will
        session = None if cmd.clean_start else self.sessions.get(client_id)
        if cmd.expiry_interval > 0:
            subscriptions = () if session is None else session.subscriptions
            self.sessions[client_id] = SessionRecord(cmd.expiry_interval, subscriptions)
        else:
            self.sessions.pop(client_id, None)
        return ClaimResult(
            epoch,
            None if previous is None else previous.node_id,
            None if previous is None else previous.epoch,
            session,
        )

    def _release(self, cmd: commands.ReleaseClient) -> bool:
        """The client's session ended on its owner: the id, the session and the will go."""
        if not self._owned_by(cmd.client_id, cmd.node_id, cmd.epoch):
            return False
        del self.owners[cmd.client_id]
        self.wills.pop(cmd.client_id, None)
        if not cmd.keep_session:
            self.sessions.pop(cmd.client_id, None)
        return True

    def _add_session_subscriptions(self, cmd: commands.AddSessionSubscriptions) -> bool:
        session = self.sessions.get(cmd.client_id)
        if session is None or not self._owned_by(cmd.client_id, cmd.node_id, cmd.epoch):
            return False
        subs = {sub.topic_filter: sub for sub in session.subscriptions}
        for sub in cmd.subscriptions:
            subs[sub.topic_filter] = sub
        self.sessions[cmd.client_id] = session._replace(subscriptions=tuple(subs.values()))
        return True

    def _remove_session_subscriptions(self, cmd: commands.RemoveSessionSubscriptions) -> bool:
        session = self.sessions.get(cmd.client_id)
        if session is None or not self._owned_by(cmd.client_id, cmd.node_id, cmd.epoch):
            return False
        gone = set(cmd.topic_filters)
        kept = tuple(sub for sub in session.subscriptions if sub.topic_filter not in gone)
        self.sessions[cmd.client_id] = session._replace(subscriptions=kept)
        return True

    def _register_will(self, cmd: commands.RegisterWill) -> bool:
        if not self._owned_by(cmd.client_id, cmd.node_id, cmd.epoch):
            return False
        if cmd.will is None:
            self.wills.pop(cmd.client_id, None)
        else:
            self.wills[cmd.client_id] = cmd.will
        return True

    def _add_route(self, cmd: commands.AddRoute) -> bool:
        key = RouteKey(cmd.share_group, cmd.topic_filter)
        nodes = self.routes.get(key)
        if nodes is None:
            nodes = self.routes[key] = set()
        if cmd.node_id in nodes:
            return False
        nodes.add(cmd.node_id)
        self._route_index.add(cmd.topic_filter, (cmd.share_group, cmd.node_id), None)
        return True

    def _remove_route(self, cmd: commands.RemoveRoute) -> bool:
        key = RouteKey(cmd.share_group, cmd.topic_filter)
        nodes = self.routes.get(key)
        if nodes is None or cmd.node_id not in nodes:
            return False
        nodes.discard(cmd.node_id)
        if not nodes:
            del self.routes[key]
        self._route_index.remove(cmd.topic_filter, (cmd.share_group, cmd.node_id))
        return True

    def _set_retained(self, cmd: commands.SetRetained) -> bool:
        if cmd.retained is None:
            return self.retained.pop(cmd.topic, None) is not None
        self.retained[cmd.topic] = cmd.retained
        return True

    def _node_up(self, cmd: commands.NodeUp) -> bool:
        if cmd.node_id not in self.down:
            return False
        self.down.discard(cmd.node_id)
        return True

    def _fire_will(self, cmd: commands.FireWill) -> WillRecord | None:
        delayed = self.delayed_wills.pop(cmd.client_id, None)
        return None if delayed is None else delayed[0]

    def _node_down(self, cmd: commands.NodeDown) -> NodeDownResult:
        """Drop a dead node's routes, re-home its persistent sessions, hand back its wills
        (those with a delay wait in ``delayed_wills``)."""
        dead = cmd.node_id
        stale = 0 < cmd.incarnation <= self.down_incarnations.get(dead, 0)
        if dead in self.down or stale:
            return NodeDownResult((), (), (), self.next_epoch)
        self.down.add(dead)
        if cmd.incarnation:
            self.down_incarnations[dead] = cmd.incarnation
        for key, nodes in list(self.routes.items()):
            if dead in nodes:
                self._remove_route(commands.RemoveRoute(dead, key[1], key[0]))
        live = self.live_members()
        wills: list[tuple[str, WillRecord]] = []
        rehomed: list[tuple[str, Owner]] = []
        released: list[str] = []
        delayed: list[str] = []
        for client_id in sorted(cid for cid, owner in self.owners.items() if owner.node_id == dead):
            session = self.sessions.get(client_id)
            will = self.wills.pop(client_id, None)
            if will is not None and not cmd.leaving:  # a graceful stop is no client failure
                due = cmd.last_seen + _will_delay(will, session)
                if cmd.declared_at and due > cmd.declared_at:  # no times given: due now
                    self.delayed_wills[client_id] = (will, due)
                    delayed.append(client_id)
                else:
                    wills.append((client_id, will))
            if session is None or not live:
                del self.owners[client_id]
                released.append(client_id)
                continue
            home = live[_rehome_index(client_id, len(live))]
            owner = self.owners[client_id] = Owner(home, self.next_epoch)
            self.next_epoch += 1
            rehomed.append((client_id, owner))
            for sub in session.subscriptions:
                group, topic_filter = route_key(sub.topic_filter)
                self._add_route(commands.AddRoute(home, topic_filter, group))
        return NodeDownResult(
            tuple(wills), tuple(rehomed), tuple(released), self.next_epoch, tuple(delayed)
        )

    # -- reading -------------------------------------------------------------

    def route_targets(
        self, topic: str
    ) -> tuple[frozenset[str], tuple[tuple[str, str, tuple[str, ...]], ...]]:
        """Nodes with plain routes matching ``topic``, and each matching share group's nodes.

        Shared groups come as (group, filter, sorted node ids) so the caller can
        pick one node per group; plain routes want the message on every node.
        """
        plain: set[str] = set()
        groups: dict[tuple[str, str], list[str]] = {}
        for topic_filter, (group, node), _ in self._route_index.match(topic):
            if group is None:
                plain.add(node)
            else:
                groups.setdefault((group, topic_filter), []).append(node)
        shared = tuple((g, f, tuple(sorted(nodes))) for (g, f), nodes in sorted(groups.items()))
        return frozenset(plain), shared

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain builtins, canonical: equal states give equal snapshots.

        pysyncobj pickles this into its full dump and ships it to lagging
        peers, so it holds only tuples, dicts, strings, numbers and bytes:
        no classes whose renaming would break old dumps.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "applied": self.applied,
            "members": self.members,
            "down": tuple(sorted(self.down)),
            "next_epoch": self.next_epoch,
            "owners": {cid: tuple(owner) for cid, owner in self.owners.items()},
            "sessions": {
                cid: (s.expiry_interval, tuple(tuple(sub) for sub in s.subscriptions))
                for cid, s in self.sessions.items()
            },
            "wills": {cid: tuple(will) for cid, will in self.wills.items()},
            "delayed_wills": {
                cid: (tuple(will), due) for cid, (will, due) in self.delayed_wills.items()
            },
            "down_incarnations": dict(self.down_incarnations),
            "routes": {tuple(key): tuple(sorted(nodes)) for key, nodes in self.routes.items()},
            "retained": {topic: tuple(r) for topic, r in self.retained.items()},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the whole state with one ``snapshot()`` produced."""
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(
                f"cluster state snapshot has version {version!r}, expected {SNAPSHOT_VERSION}"
            )
        self._reset()
        self.applied = snapshot.get("applied", 0)
        self.members = tuple(snapshot["members"])
        self.down = set(snapshot["down"])
        self.next_epoch = snapshot["next_epoch"]
        self.owners = {cid: Owner(*owner) for cid, owner in snapshot["owners"].items()}
        self.sessions = {
            cid: SessionRecord(expiry, tuple(StoredSubscription(*sub) for sub in subs))
            for cid, (expiry, subs) in snapshot["sessions"].items()
        }
        self.wills = {cid: WillRecord(*will) for cid, will in snapshot["wills"].items()}
        self.delayed_wills = {
            cid: (WillRecord(*will), due)
            for cid, (will, due) in snapshot.get("delayed_wills", {}).items()
        }
        self.down_incarnations = dict(snapshot.get("down_incarnations", {}))
        for (group, topic_filter), nodes in snapshot["routes"].items():
            for node in nodes:
                self._add_route(commands.AddRoute(node, topic_filter, group))
        self.retained = {topic: RetainedRecord(*r) for topic, r in snapshot["retained"].items()}
