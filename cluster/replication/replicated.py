"""``ClusterHooks`` over Raft: the replicated implementation of the node's boundary.

Every hook that changes cluster state becomes a command committed through
the node's ``RaftNode``; it returns once the command is applied. Every node
watches the applied commands (its own and its peers') and reacts through
the ``NodeEvents`` of its broker: a client claimed elsewhere is kicked here,
a retained message set anywhere is stored here.

Writes on behalf of a client carry the epoch of this node's claim, so once
another node has claimed the client they are ignored by the state machine.

What peers send over forwarding comes in here too: the ``Forwarder`` hands
it to ``publish_from_peer``, ``kick_from_peer`` and ``handover_from_peer``,
which pass it on to the broker's ``NodeEvents`` (``deliver_forwarded``,
``kick_client``), or to the CONNECT waiting for a hand-over.

``forward`` is on the PUBLISH hot path: it is ``plans.ForwardingPlans``'s.
A route added here is live everywhere before ``add_route`` returns (a route
barrier, ``barriers.py``), and a session that moves away is let go only once
nothing can fall between the two nodes (``releases.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from raftmq.node.background import Background
from raftmq.node.hooks import (
    Claim,
    ClusterUnavailable,
    NodeEvents,
    RouteKey,
    SessionMessages,
    SessionTransfer,
)
from raftmq.node.message import Message
from raftmq.node.packets import Will
from raftmq.node.session import Subscription

from ..forwarding.frames import Handover
from .barriers import BARRIER_TIMEOUT, RouteBarriers, StateFence
from .commands import (
    ROUTE_COMMANDS,
    AddRoute,
    AddSessionSubscriptions,
    ClaimClient,
    ClaimFenced,
    ClaimResult,
    FireWill,
    NodeDown,
    NodeDownResult,
    NodeUp,
    RegisterWill,
    ReleaseClient,
    RemoveRoute,
    RemoveSessionSubscriptions,
    RetainedRecord,
    SessionRecord,
    SetMembers,
    SetRetained,
    WillRecord,
)
from .convert import (
    retained_message,
    retained_record,
    session_transfer,
    stored_subscription,
    will_record,
)
from .deaths import DeathDeclarer, MemberHealth
from .handovers import Handovers
from .lease import LeaseKeeper
from .leaving import leave
from .peers import Peers, Service
from .plans import DEFAULT_PLAN_CACHE_SIZE, ForwardingPlans
from .raft import Applied, RaftNode, RaftStatus
from .rehoming import PendingRehoming
from .releases import ROUTE_WAIT, SessionReleases
from .state import ClusterState
from .wills import DelayedWills

log = logging.getLogger("raftmq.cluster")

ANNOUNCE_RETRY = 1.0
CLAIM_ATTEMPTS = 3
"""A CONNECT's claim is retried when fenced (another claim of the client came
first); after this many the client is told "server unavailable"."""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    raft: RaftStatus
    members: tuple[str, ...]
    down: tuple[str, ...]
    clients: int
    persistent_sessions: int
    routes: int
    retained: int
    wills: int


class RaftCluster:
    """The replicated ``ClusterHooks``, and the ``PeerInbox`` of this node's forwarding
    (what peers send reaches the node through it); see the module docstring."""

    def __init__(
        self,
        raft: RaftNode,
        peers: Peers,
        members: Sequence[str] | None = None,
        *,
        services: Sequence[Service] = (),
        plan_cache_size: int = DEFAULT_PLAN_CACHE_SIZE,
        lease: tuple[float, float] = (3.0, 1.0),
        barrier_timeout: float = BARRIER_TIMEOUT,
        health: Callable[[], Mapping[str, MemberHealth]] | None = None,
    ) -> None:
        """``members``: the cluster's node ids, committed at start so that a dead
        node's persistent sessions can be re-homed among the live ones.
        ``services`` start (in order) once ``peers`` stream to this cluster and
        before Raft, so that what Raft commits at startup can be served at once;
        they stop, in reverse, after Raft. ``lease``: (cluster_lease,
        cluster_lease_margin), see ``lease.py``; ``barrier_timeout``: how long a route
        barrier waits for a peer (``route_barrier_timeout``). ``health``: each member as
        this node's SWIM sees it (``membership.py``); with it, dead members are
        declared down without an operator (``deaths.py``)."""
        self.node_id = raft.node_id
        self.raft = raft
        self.peers = peers
        self._services = tuple(services)
        self._members = tuple(sorted(members)) if members is not None else None
        self._node: NodeEvents | None = None
        self._claims: dict[str, int] = {}
        """Client id -> epoch of the claim this node holds for it."""
        self._retained_topics: set[str] = set()
        self.plans = ForwardingPlans(self.node_id, lambda: self.raft.state, peers, plan_cache_size)
        self.forward = self.plans.forward  # ClusterHooks.forward, with no call in between
        self.barriers = RouteBarriers(raft, peers, barrier_timeout)
        self.fence = StateFence(raft)
        self._tasks = Background()
        self.handovers = Handovers(self._late_handover)
        self._replayed: set[str] = set()
        """Client ids that other nodes claimed or that moved, seen while catching up."""
        self.lease = LeaseKeeper(raft, *lease)
        route_wait = self.lease.state.takeover_wait + ROUTE_WAIT
        self.releases = SessionReleases(raft, self.barriers, peers, self._live_peers, route_wait)
        self.rehoming = PendingRehoming(self.node_id, peers)
        self.delayed_wills = DelayedWills(raft)
        self.health: Callable[[], Mapping[str, MemberHealth]] = health or dict
        """Each member as this node's SWIM sees it (empty without SWIM)."""
        self.deaths: DeathDeclarer | None = None
        if health is not None:
            wait = self.lease.state.takeover_wait
            self.deaths = DeathDeclarer(raft, health, wait, self.node_down)
        raft.add_listener(self._on_applied)
        raft.add_restore_listener(self._on_restored)

    @property
    def state(self) -> ClusterState:
        """This node's view of the replicated state (read only)."""
        return self.raft.state

    # -- lifecycle -------------------------------------------------------------

    def attach(self, node: NodeEvents) -> None:
        self._node = node

    async def start(self) -> None:
        self.peers.start(self)
        for service in self._services:
            await service.start()
        await self.raft.start()
        self._tasks.run(self._announce())
        self._tasks.run(self._reconcile_when_caught_up())
        self._tasks.run(self.lease.run(self._lease_lost))
        self._tasks.run(self.delayed_wills.run())
        if self.deaths is not None:
            self._tasks.run(self.deaths.run())

    async def stop(self) -> None:
        await self._tasks.cancel()
        await self.barriers.stop()
        try:
            await self.raft.stop()
        finally:
            for service in reversed(self._services):
                await service.stop()
            await self.peers.stop()

    def _lease_lost(self) -> None:
        if self._node is not None:
            self._node.cluster_lost()

    async def _announce(self, members: bool = True) -> None:
        """Commit the member list (unless not ``members``) and that this node is up,
        retrying until it sticks."""
        commands: list[object] = [NodeUp(self.node_id)]
        if members and self._members is not None:
            commands.insert(0, SetMembers(self._members))
        while True:
            try:
                await asyncio.gather(*(self.raft.submit(c) for c in commands))
                return
            except ClusterUnavailable:
                await asyncio.sleep(ANNOUNCE_RETRY)

    # -- ClusterHooks ----------------------------------------------------------

    async def claim_client(
        self,
        client_id: str,
        *,
        clean_start: bool = True,
        expiry_interval: int = 0,
        will: Will | None = None,
    ) -> Claim:
        if not self.lease.serving:
            raise ClusterUnavailable(
                f"node {self.node_id} has heard from no Raft majority for over its cluster_lease"
            )
        record = None if will is None else will_record(will)
        claimed_at = time.monotonic()
        for _ in range(CLAIM_ATTEMPTS):
            # Fenced by the owner epoch applied here: should the commit come only
            # after this CONNECT gave up, and after the client connected elsewhere,
            # it changes nothing (no kick, no session taken, nothing to release).
            owner = self.state.owners.get(client_id)
            seen = 0 if owner is None else owner.epoch
            command = ClaimClient(
                client_id, self.node_id, clean_start, expiry_interval, record, seen
            )
            result = await self.raft.submit(command)
            if not isinstance(result, ClaimFenced):
                break
            # Another claim came first; this node has applied it by now: try again.
        else:
            raise ClusterUnavailable(
                f"client {client_id!r} was claimed elsewhere {CLAIM_ATTEMPTS} times meanwhile"
            )
        assert isinstance(result, ClaimResult)
        owner = self.state.owners.get(client_id)
        if owner is None or owner.epoch != result.epoch:
            # Another node claimed it between our commit and now; its kick found no
            # connection here yet, so this CONNECT must not go on.
            holder = "nobody" if owner is None else f"node {owner.node_id}"
            raise ClusterUnavailable(f"client {client_id!r} was claimed by {holder} meanwhile")
        self._claims[client_id] = result.epoch
        previous = result.previous_owner
        if result.session is not None and previous not in (None, self.node_id):
            self.handovers.expect(client_id, result.epoch)
        if previous is not None and previous != self.node_id and previous not in self.state.down:
            # The previous node disconnects the client when it applies the claim; the kick
            # gets there first when that node's Raft lags, and says when it has let go.
            kick = self.peers.kick(previous, client_id, result.epoch)
            await self.lease.let_go(kick, previous, client_id, claimed_at)
        return Claim(result.epoch, result.previous_owner, result.previous_epoch, result.session)

    def take_session(self, client_id: str, claim: Claim) -> SessionTransfer | None:
        record = claim.session
        if not isinstance(record, SessionRecord):
            return None
        return session_transfer(record)

    async def handed_over(self, client_id: str, claim: Claim) -> SessionMessages | None:
        try:
            previous = claim.previous_owner
            if claim.session is None or previous is None or previous == self.node_id:
                return None
            handover = await self.handovers.wait(previous, client_id, claim.epoch)
            return None if handover is None else handover.messages
        finally:
            # Late hand-overs that came while this CONNECT waited follow the one it
            # waited for, which its caller merges as soon as this returns.
            asyncio.get_running_loop().call_soon(self._unpark, client_id)

    def _unpark(self, client_id: str) -> None:
        for origin, handover in self.handovers.unpark(client_id):
            self._late_handover(origin, handover)

    # -- PeerInbox: what peers send ------------------------------------------------

    def publish_from_peer(
        self, origin: str, message: Message, shared_groups: tuple[RouteKey, ...]
    ) -> None:
        """A publish ``origin`` forwarded: to this node's subscribers (and ``shared_groups``)."""
        message.origin = origin
        self.releases.heard[origin] = message.seq
        if self._node is not None:
            self._node.deliver_forwarded(message, shared_groups)

    def kick_from_peer(self, origin: str, client_id: str, epoch: int) -> None:
        """``origin`` claimed ``client_id`` and tells us ahead of Raft: drop our connection."""
        if self._node is not None:
            self._node.kick_client(client_id, epoch)

    def handover_from_peer(self, origin: str, handover: Handover) -> None:
        """``origin`` let go of a session we claimed: its messages, for the CONNECT
        resuming it."""
        self.handovers.arrived(origin, handover)

    def _late_handover(self, origin: str, handover: Handover) -> None:
        """No CONNECT waits for ``handover`` any more: its messages go to the session as
        it is now, here, or on the node that owns it now (claims only grow, so a
        hand-over passed on this way ends at the newest one)."""
        client_id = handover.client_id
        node = self._node
        owner = self.state.owners.get(client_id)
        if node is not None and owner is not None and client_id in self.state.sessions:
            if owner.node_id == self.node_id:
                # Ours now: to the session here, or once our CONNECT has taken it.
                if not node.take_late_handover(client_id, handover.messages):
                    self.handovers.park(origin, handover)
                return
            elif owner.epoch > handover.epoch and owner.node_id not in self.state.down:
                onward = Handover(client_id, owner.epoch, handover.messages, late=True)
                self._tasks.run(self.peers.hand_over(owner.node_id, onward))
                return
        self.handovers.drop(origin, handover, "no node holds the session now")

    def applied_count(self) -> int:
        return self.raft.state.applied

    def catch_up(self, applied: int) -> Awaitable[None]:
        return self.fence.catch_up(applied)

    def barrier_from_peer(self, origin: str, token: int, applied: int) -> None:
        self.barriers.asked(origin, token, applied)

    def barrier_reply_from_peer(self, origin: str, token: int) -> None:
        self.barriers.replied(origin, token)

    # -- ClusterHooks, continued ---------------------------------------------------

    async def save_subscriptions(
        self, client_id: str, epoch: int, subscriptions: Mapping[str, Subscription]
    ) -> None:
        stored = tuple(stored_subscription(f, sub) for f, sub in subscriptions.items())
        await self.raft.submit(AddSessionSubscriptions(client_id, self.node_id, epoch, stored))

    async def forget_subscriptions(
        self, client_id: str, epoch: int, topic_filters: Sequence[str]
    ) -> None:
        command = RemoveSessionSubscriptions(client_id, self.node_id, epoch, tuple(topic_filters))
        await self.raft.submit(command)

    async def release_client(self, client_id: str, epoch: int) -> None:
        await self.raft.submit(ReleaseClient(client_id, self.node_id, epoch))
        if self._claims.get(client_id) == epoch:
            del self._claims[client_id]

    async def add_route(self, share_group: str | None, topic_filter: str) -> None:
        """Committed, and then live on every live peer (a route barrier), so that a
        SUBACK sent after it means a publish made anywhere reaches the subscriber."""
        await self.raft.submit(AddRoute(self.node_id, topic_filter, share_group))
        await self.barriers.everywhere(self._live_peers())

    def _live_peers(self) -> list[str]:
        down = self.state.down
        return [node_id for node_id in self.raft.peers if node_id not in down]

    async def remove_route(self, share_group: str | None, topic_filter: str) -> None:
        await self.raft.submit(RemoveRoute(self.node_id, topic_filter, share_group))

    async def set_retained(self, topic: str, message: Message | None) -> None:
        record = None if message is None else retained_record(message)
        await self.raft.submit(SetRetained(topic, record))

    async def register_will(self, client_id: str, will: Will | None) -> None:
        epoch = self._claims.get(client_id)
        if epoch is None:
            return  # another node claimed the client since: its will is not ours to set
        record = None if will is None else will_record(will)
        await self.raft.submit(RegisterWill(client_id, self.node_id, epoch, record))

    # -- administration --------------------------------------------------------------

    async def node_down(
        self, node_id: str, last_seen: float | None = None, incarnation: int = 0
    ) -> NodeDownResult:
        """Declare ``node_id`` dead: its routes go, its sessions move, its wills go out.

        The wills are published by this node (the one that committed the
        command), from the apply listener, so they go out exactly once even
        when this call times out and the command commits later; a will delay
        counts from ``last_seen`` (wall clock; default now), and a delayed
        will is fired by the leader when due (``wills.py``).
        """
        now = time.time()
        seen = now if last_seen is None else last_seen
        result = await self.raft.submit(NodeDown(node_id, seen, now, incarnation))
        assert isinstance(result, NodeDownResult)
        return result

    async def leave(self) -> None:
        """``ClusterHooks.leave``: see ``leaving.py``."""
        if self._node is not None:
            await leave(self.raft, self.releases, self._node, self.lease.serving)

    def status(self) -> ClusterStatus:
        state = self.state
        return ClusterStatus(
            raft=self.raft.status(),
            members=state.members,
            down=tuple(sorted(state.down)),
            clients=len(state.owners),
            persistent_sessions=len(state.sessions),
            routes=len(state.routes),
            retained=len(state.retained),
            wills=len(state.wills),
        )

    # -- reacting to applied commands ------------------------------------------------

    def _on_applied(self, applied: Applied) -> None:
        command = applied.command
        if isinstance(command, ROUTE_COMMANDS):
            self.plans.clear()
        if isinstance(command, ClaimClient):
            self._claim_applied(command, applied)
        elif isinstance(command, SetRetained):
            self._retained_applied(command.topic, command.retained)
        elif isinstance(command, NodeDown):
            self._node_down_applied(command, applied)
        elif isinstance(command, FireWill):
            will = applied.result
            if applied.mine and isinstance(will, WillRecord) and self._node is not None:
                self._node.publish_will(Will(*will))

    def _claim_applied(self, command: ClaimClient, applied: Applied) -> None:
        result = applied.result
        if not isinstance(result, ClaimResult):
            return
        client_id = command.client_id
        if result.previous_owner not in (None, command.node_id):
            self.rehoming.moved(client_id, result.previous_owner)
        if command.node_id != self.node_id:
            self._claims.pop(client_id, None)
            if self.raft.caught_up:
                self._surrender(command, result)
            else:
                self._replayed.add(client_id)
        elif applied.orphaned:
            # Our CONNECT gave up on this claim (timeout) but it committed anyway:
            # give the client id back rather than own a client nobody serves, and
            # keep its session for the CONNECT that comes next (the client never
            # heard of this one).
            release = ReleaseClient(client_id, self.node_id, result.epoch, keep_session=True)
            self._tasks.run(self.raft.submit(release))

    def _surrender(self, command: ClaimClient, result: ClaimResult) -> None:
        """Another node claimed a client: our connection of it goes, and when we held its
        session and the new connection resumes it, its messages go to the claimer."""
        node = self._node
        if node is None:
            return
        # Whoever still holds the resumed session hands it over: its previous owner, or
        # the node that held it last when the claim in between never became a connection.
        record = result.session
        resumed = isinstance(record, SessionRecord)
        held = node.surrender_session(command.client_id, result.epoch, resumed)
        if held and isinstance(record, SessionRecord):
            release = self.releases.release(
                node, command.node_id, command.client_id, result.epoch, record
            )
            self._tasks.run(release)

    def _retained_applied(self, topic: str, record: RetainedRecord | None) -> None:
        node = self._node
        if node is None:
            return
        message = None if record is None else retained_message(topic, record)
        if message is None:
            self._retained_topics.discard(topic)
        else:
            self._retained_topics.add(topic)
        node.apply_retained(topic, message)

    def _node_down_applied(self, command: NodeDown, applied: Applied) -> None:
        result = applied.result
        if not isinstance(result, NodeDownResult):
            return
        if not self.raft.caught_up:
            self._replayed.update(result.released, (cid for cid, _ in result.rehomed))
            return
        node = self._node
        if command.node_id == self.node_id and node is not None and not command.leaving:
            # Declared dead while alive (cut off, paused): our clients belong elsewhere
            # now, what we still hold of their sessions goes after them, and we rejoin.
            for client_id in (*result.released, *(cid for cid, _ in result.rehomed)):
                self._claims.pop(client_id, None)
                node.kick_client(client_id, result.fence_epoch)
            for client_id, owner in result.rehomed:
                hand_back = self.releases.hand_back(node, owner.node_id, client_id, owner.epoch)
                self._tasks.run(hand_back)
            if self.node_id in self.state.down:
                self._tasks.run(self._announce(members=False))
        if node is not None:
            for client_id, owner in result.rehomed:
                if owner.node_id == self.node_id:
                    self._adopt(node, client_id, owner.epoch)
            held = self.peers.declared_down(command.node_id)
            if held:
                state = self.state
                meant = self.rehoming.sessions_of(command.node_id, result.rehomed, state)
                finish = self.rehoming.finish(node, command.node_id, held, meant, state.owners)
                self._tasks.run(finish)
        if applied.mine and node is not None:
            for _, will in result.wills:
                node.publish_will(Will(*will))

    async def _reconcile_when_caught_up(self) -> None:
        """Once the replay of old commands is over, settle the clients they touched.

        Replaying them one by one would act on the past: a session this node
        restored from disk would be ended by a claim it had long outlived, or a
        session adopted after a node-down would come back although it moved on.
        The state as it is now says who owns each client: copies owned
        elsewhere end here, and sessions this node owns but lacks are adopted.
        """
        while not await self.raft.wait_ready(ANNOUNCE_RETRY * 60):
            pass
        node = self._node
        if node is None:
            return
        state = self.state
        down = state.down
        for client_id in sorted(self._replayed):
            owner = state.owners.get(client_id)
            if owner is not None and owner.node_id == self.node_id:
                self._adopt(node, client_id, owner.epoch)
            elif owner is not None and client_id in state.sessions and owner.node_id not in down:
                # It moved on while this node was down: what this node still holds of it
                # goes to its owner, late, rather than being thrown away.
                hand_back = self.releases.hand_back(node, owner.node_id, client_id, owner.epoch)
                self._tasks.run(hand_back)
            else:
                node.surrender_session(client_id, state.next_epoch, False)
        self._replayed.clear()

    def _adopt(self, node: NodeEvents, client_id: str, epoch: int) -> None:
        """This node owns ``client_id`` at ``epoch`` without having connected it: hold its
        persistent session, if it has one."""
        self._claims[client_id] = epoch
        record = self.state.sessions.get(client_id)
        if record is not None:
            node.adopt_session(client_id, epoch, session_transfer(record))

    def _on_restored(self, state: ClusterState) -> None:
        """A snapshot replaced the state: resync what per-command events would have done."""
        self.plans.clear()
        node = self._node
        if node is None:
            return
        for topic in self._retained_topics - state.retained.keys():
            self._retained_applied(topic, None)
        for topic, record in state.retained.items():
            self._retained_applied(topic, record)
        for client_id in list(self._claims):
            owner = state.owners.get(client_id)
            if owner is None or owner.node_id != self.node_id:
                del self._claims[client_id]
                if owner is not None:
                    node.kick_client(client_id, owner.epoch)
