"""Member records, and the rule by which news about a member replaces what is known.

SWIM orders what is said about a member by its incarnation number, which only
the member itself raises: to refute a suspicion of it, to come back after
being declared dead, or to leave. At one incarnation an accusation outranks
the alive it contradicts (left > dead > suspect > alive), so a suspicion is
not undone by an old alive message still in flight, only by the member
speaking up with a new incarnation.

Two choices keep a graceful leave from ever reading as a failure: leaving
raises the incarnation, so a ``dead`` about the incarnation before it loses,
and at one incarnation ``left`` outranks ``dead``. A left member comes back
only with an incarnation above the one it left with, so an alive message of
its old life still in flight cannot resurrect it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_INCARNATION = 2**32 - 1
"""Incarnations are 32 bits on the wire. A member cannot refute past the last one: that
takes four billion refutations, or a peer with the secret that lies."""


class State(enum.IntEnum):
    """A member's state; the values are its rank at one incarnation (and its wire code)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class MemberMeta:
    """Who a member is and where to reach it; addresses are "host:port" strings."""

    node_id: str
    swim_addr: str
    raft_addr: str
    grpc_addr: str
    mqtt_addr: str


@dataclass(frozen=True, slots=True)
class Update:
    """One piece of news about a member, as gossiped: alive news carries the member's
    meta (a member is learned from it), suspect news names its accuser (Lifeguard
    counts independent accusers), and full-state records carry meta in every state."""

    node_id: str
    state: State
    incarnation: int
    meta: MemberMeta | None = None
    accuser: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """What this member knows of one member. ``state_changed_at`` is this member's own
    clock reading of the last state change; it is never sent."""

    node_id: str
    incarnation: int
    state: State
    meta: MemberMeta
    state_changed_at: float

    def superseded_by(self, update: Update) -> bool:
        """Whether ``update`` is newer than this record: a higher incarnation, or the
        same one and a state of higher rank."""
        return (update.incarnation, update.state) > (self.incarnation, self.state)

    def updated(self, update: Update, now: float) -> Member:
        """This record with ``update`` applied (the caller checked that it is newer)."""
        return Member(
            self.node_id,
            update.incarnation,
            update.state,
            update.meta or self.meta,
            now if update.state != self.state else self.state_changed_at,
        )

    def news(self, *, with_meta: bool = False, accuser: str | None = None) -> Update:
        """This record as an update to gossip: alive news always carries the meta."""
        meta = self.meta if with_meta or self.state is State.ALIVE else None
        return Update(self.node_id, self.state, self.incarnation, meta, accuser)


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A member's state (or, staying alive, its meta) changed; ``old_state`` is None for
    a member just learned."""

    node_id: str
    old_state: State | None
    new_state: State
    member: Member
