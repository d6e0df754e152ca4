"""What this member knows of the cluster, and how news changes it.

Every update, whether piggybacked, from a full-state exchange or this
member's own verdict, goes through ``MemberView.apply``: newer news replaces
a record (``Member.superseded_by``), is gossiped on, and changes or ends a
suspicion; news about this member itself is refuted by raising its
incarnation. Beyond SWIM, news that is stale somewhere is pushed where it is
needed rather than left to gossip, so that a wrongly suspected member
refutes within a round trip, and a member that missed an update hears it
from whoever it talks to instead of at the next full-state exchange:

- a member said to be suspect, dead or left is told so by every message this
  member sends it (``told``: Lifeguard's "buddy system"), and a member that
  left says so in every message after;
- a member accused, rightly or by stale news, names its accusers
  (``take_accusers``), and the core pings them at once with its record;
- an accusation of an incarnation already refuted, or of a member that left,
  makes this member gossip the newer record again.
"""

from __future__ import annotations

from collections.abc import Iterator

from .broadcasts import BroadcastQueue
from .health import LocalHealth
from .members import MAX_INCARNATION, Member, MemberMeta, MembershipEvent, State, Update
from .settings import SwimSettings
from .suspicion import Suspicion

_LIVE = (State.ALIVE, State.SUSPECT)


class MemberView:
    """This member's own record and its records of the others, with their suspicions."""

    def __init__(
        self,
        meta: MemberMeta,
        settings: SwimSettings,
        health: LocalHealth,
        now: float,
        incarnation: int,
    ) -> None:
        self.settings = settings
        self.health = health
        self.local = Member(meta.node_id, incarnation, State.ALIVE, meta, now)
        self.broadcasts = BroadcastQueue()
        self.broadcasts.add(self.local.news())
        self._records: dict[str, Member] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._events: list[MembershipEvent] = []
        self._arrivals: list[str] = []
        self._accusers: set[str] = set()

    @property
    def node_id(self) -> str:
        return self.local.node_id

    def get(self, node_id: str) -> Member | None:
        return self._records.get(node_id)

    def records(self) -> Iterator[Member]:
        """The records of the other members, in the order they were learned."""
        return iter(self._records.values())

    def live(self, *states: State) -> list[str]:
        """The other members in ``states`` (default: alive or suspect)."""
        wanted = states or _LIVE
        return [node_id for node_id, m in self._records.items() if m.state in wanted]

    def is_live(self, node_id: str) -> bool:
        record = self._records.get(node_id)
        return record is not None and record.state in _LIVE

    def size(self) -> int:
        """The cluster's size as far as probing and gossip go: members not dead or left,
        this one included."""
        return 1 + sum(1 for m in self._records.values() if m.state in _LIVE)

    def take_events(self) -> list[MembershipEvent]:
        events, self._events = self._events, []
        return events

    def take_arrivals(self) -> list[str]:
        """Members that joined, or came back, since the last call: new to probe."""
        arrivals, self._arrivals = self._arrivals, []
        return arrivals

    def take_accusers(self) -> set[str]:
        """Members that accused this one since the last call, refuted or already wrong:
        each is to be told at once, not at the next chance of gossip."""
        accusers, self._accusers = self._accusers, set()
        return accusers

    def next_deadline(self) -> float:
        return min((s.deadline for s in self._suspicions.values()), default=float("inf"))

    def apply(self, update: Update, now: float) -> None:
        """Take in one piece of news."""
        if update.node_id == self.node_id:
            self._about_self(update)
            return
        current = self._records.get(update.node_id)
        if current is None:
            if update.meta is not None and update.state in _LIVE:
                record = Member(update.node_id, update.incarnation, update.state, update.meta, now)
                self._change(None, record, update.accuser, now)
        elif current.superseded_by(update):
            self._change(current, current.updated(update, now), update.accuser, now)
        elif update.state is State.SUSPECT and current.state is State.SUSPECT:
            self._confirm(current, update)
        elif update.state in (State.SUSPECT, State.DEAD) and current.state in (
            State.ALIVE,
            State.LEFT,
        ):
            # Alive at a later incarnation, or left: the accuser missed that.
            self.broadcasts.add(current.news())

    def accuse(self, node_id: str, now: float) -> None:
        """This member's own probe of ``node_id`` failed."""
        record = self._records.get(node_id)
        if record is not None and record.state in _LIVE:
            update = Update(node_id, State.SUSPECT, record.incarnation, accuser=self.node_id)
            self.apply(update, now)

    def expire(self, now: float) -> None:
        """Declare dead the suspected members whose time to refute is up."""
        for node_id, suspicion in list(self._suspicions.items()):
            if suspicion.deadline <= now:
                self.apply(Update(node_id, State.DEAD, suspicion.incarnation), now)

    def postpone(self, seconds: float) -> None:
        """This member stalled for ``seconds``: it owes every suspect that much time."""
        for suspicion in self._suspicions.values():
            suspicion.postpone(seconds)

    def leave(self, now: float) -> None:
        """This member leaves: ``left`` at a new incarnation, which outranks any suspicion
        or death of the one it had."""
        local = self.local
        incarnation = min(local.incarnation + 1, MAX_INCARNATION)
        self.local = Member(local.node_id, incarnation, State.LEFT, local.meta, now)
        self.broadcasts.add(self.local.news())

    def told(self, node_id: str | None) -> list[Update]:
        """What every message to ``node_id`` must say, whatever else is gossiped: that it
        is suspected, dead or left here (so it refutes), and that this member left."""
        told = []
        record = self._records.get(node_id) if node_id else None
        if record is not None and record.state is not State.ALIVE:
            told.append(record.news(accuser=self.node_id))
        if self.local.state is State.LEFT:
            told.append(self.local.news())
        return told

    def _about_self(self, update: Update) -> None:
        local = self.local
        if local.state is State.LEFT:
            return
        local_alive = (local.incarnation, local.meta)
        if update.state is not State.ALIVE and update.accuser:
            self._accusers.add(update.accuser)
        if update.incarnation < local.incarnation:
            if update.state is not State.ALIVE:
                self.broadcasts.add(local.news())  # refuted already; say it again
            return
        if (update.state, update.incarnation, update.meta) == (State.ALIVE, *local_alive):
            return
        # Suspected, declared dead or left, or alive in another life (a previous run, other
        # addresses): speak up with an incarnation above the one said.
        incarnation = min(update.incarnation + 1, MAX_INCARNATION)
        self.local = Member(
            local.node_id, incarnation, State.ALIVE, local.meta, local.state_changed_at
        )
        self.broadcasts.add(self.local.news())
        self.health.adjust(1)

    def _change(self, old: Member | None, new: Member, accuser: str | None, now: float) -> None:
        node_id = new.node_id
        self._records[node_id] = new
        if new.state is State.SUSPECT:
            accuser = accuser or ""
            self._suspicions[node_id] = Suspicion(
                self.settings, self.size(), new.incarnation, accuser, now
            )
            self.broadcasts.add(new.news(accuser=accuser))
        else:
            self._suspicions.pop(node_id, None)
            self.broadcasts.add(new.news())
        if new.state in _LIVE and (old is None or old.state not in _LIVE):
            self._arrivals.append(node_id)
        if old is None or old.state != new.state or old.meta != new.meta:
            self._events.append(MembershipEvent(node_id, old and old.state, new.state, new))

    def _confirm(self, record: Member, update: Update) -> None:
        suspicion = self._suspicions.get(record.node_id)
        if (
            suspicion is not None
            and update.incarnation == suspicion.incarnation
            and suspicion.confirm(update.accuser or "")
        ):
            self.broadcasts.add(update)  # others count this accuser too
