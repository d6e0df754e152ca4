"""The SWIM membership protocol of one member, without I/O: time and messages in,
messages and membership events out.

``Swim`` has no clock, no socket and no randomness of its own: its driver
(``transport.py``, or the simulated network of the tests) passes the time to
every call, sends what the calls return, and hands it what arrives; a seeded
``random.Random`` makes every run repeatable. The driver calls ``tick`` by
``next_deadline``, which a ``receive`` may bring forward.

It glues the pieces together: the probes (``probes.py``), what is known of
the members (``view.py``), gossip piggybacked on every message it sends
(``broadcasts.py``), and a periodic full-state exchange with one random
member, which also heals partitions: its partner may be a member this one
holds dead, since a member cut off declares every other dead. A member that
knows nobody (its seeds were not up at ``join``, or the answer was lost)
tries a seed every ``SEED_RETRY`` probe intervals instead, until one
answers. A member probed by one it does not know (the gossip of that one's
arrival ran out before reaching it) exchanges full state with it at once.

A tick that comes much later than asked for (a paused process, a starved
event loop) is taken as this member's own stall: the probe under way is
dropped instead of blamed on its member, suspects get the lost time back,
and the local health score rises.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace

from . import wire
from .broadcasts import retransmit_limit
from .errors import BadPacket
from .health import LocalHealth
from .members import Member, MemberMeta, MembershipEvent, State, Update
from .messages import Ack, Message, Nack, Outgoing, Ping, PingReq, PushPull
from .probes import Prober
from .settings import SwimSettings
from .view import MemberView

SEED_RETRY = 2
"""A member that knows nobody tries a seed again after this many probe intervals."""


class Swim:
    """One member's SWIM state machine."""

    def __init__(
        self,
        meta: MemberMeta,
        settings: SwimSettings,
        rng: random.Random,
        now: float,
        *,
        incarnation: int = 0,
    ) -> None:
        """``meta``: this member; ``now``: the driver's clock when it starts.
        ``incarnation``: a member that kept its last one may start above it, but need
        not: it refutes its previous life when it hears of it."""
        own = Update(meta.node_id, State.ALIVE, incarnation, meta)
        try:  # what the others would drop as malformed, refused here, by name
            wire.decode(wire.encode(Ping(0, meta.node_id, meta.node_id, (own,))))
        except BadPacket as exc:
            raise ValueError(f"member {meta.node_id!r}: its record is not valid: {exc}") from None
        own_size = wire.update_size(own)
        if own_size > settings.max_packet_size // 4:
            raise ValueError(
                f"member {meta.node_id!r}: its node id and addresses take {own_size} bytes on "
                f"the wire; at most a quarter of max_packet_size ({settings.max_packet_size})"
            )
        self.settings = settings
        self._rng = rng
        self._health = LocalHealth(settings.max_local_health)
        self._view = MemberView(meta, settings, self._health, now, incarnation)
        self._prober = Prober(self._view, settings, self._health, rng, now)
        self._seeds: list[str] = []
        self._introduced: set[str] = set()
        interval = settings.push_pull_interval
        self._next_push_pull = now + rng.uniform(0, interval) if interval else float("inf")

    @property
    def node_id(self) -> str:
        return self._view.node_id

    @property
    def meta(self) -> MemberMeta:
        return self._view.local.meta

    @property
    def local_health(self) -> int:
        """Lifeguard's score of this member's own health: 0 is healthy."""
        return self._health.score

    def join(self, seeds: Iterable[str]) -> list[Outgoing]:
        """Exchange full state with each of ``seeds`` ("host:port" SWIM addresses); later
        exchanges fall back on them while this member knows nobody."""
        self._seeds = list(seeds)
        return self._dress([out for seed in self._seeds for out in self._state(seed, None, True)])

    def leave(self, now: float) -> list[Outgoing]:
        """Leave for good: every live member is told at once (and every later message says
        so too). Keep receiving for a moment, so that a lost packet is made up for."""
        if self._view.local.state is State.LEFT:
            return []
        self._view.leave(now)
        return self._dress(self._prober.pings(self._view.live()))

    def next_deadline(self) -> float:
        """When ``tick`` must be called next, at the latest."""
        if self._view.local.state is State.LEFT:
            return float("inf")
        return min(self._prober.next_deadline(), self._view.next_deadline(), self._next_push_pull)

    def tick(self, now: float) -> list[Outgoing]:
        """Do what is due by ``now``."""
        if self._view.local.state is State.LEFT:
            return []
        late = now - self.next_deadline()
        if late > self.settings.probe_timeout:
            self._prober.void(now)
            self._view.postpone(late)
            self._health.adjust(1)
        self._view.expire(now)
        out = self._prober.tick(now)
        if now >= self._next_push_pull:
            out += self._push_pull(now)
        return self._dress(out)

    def receive(self, now: float, from_addr: str, message: Message) -> list[Outgoing]:
        """Take in ``message``, which came from ``from_addr``; return the answers."""
        if message.sender == self.node_id:
            return []
        for update in message.updates:
            self._view.apply(update, now)
        out = self._answer_accusers()
        if isinstance(message, Ping | PingReq):
            out += self._introduce(from_addr, message.sender)
        match message:
            case Ping(seq, target, sender) if target == self.node_id:
                out.append(Outgoing(from_addr, Ack(seq, self.node_id), sender))
            case PingReq():
                out += self._prober.on_ping_req(now, from_addr, message)
            case Ack():
                out += self._prober.on_ack(now, from_addr, message)
            case Nack():
                self._prober.on_nack(message)
            case PushPull(sender, want_reply, records):
                self._merge(sender, records, now)
                if want_reply:
                    out += self._state(from_addr, sender, False)
                out += self._answer_accusers()
        return self._dress(out)

    def events(self) -> list[MembershipEvent]:
        """The membership changes since the last call, oldest first."""
        return self._view.take_events()

    def members(self) -> list[Member]:
        """Every member known, this one first, then by node id."""
        return [self._view.local, *sorted(self._view.records(), key=lambda m: m.node_id)]

    def member(self, node_id: str) -> Member | None:
        return self._view.local if node_id == self.node_id else self._view.get(node_id)

    def probe_rtts(self) -> dict[str, float]:
        """Per member, the round trip in seconds of the last probe it answered directly."""
        return dict(self._prober.rtts)

    def _answer_accusers(self) -> list[Outgoing]:
        """Ping whoever said this member is suspect, dead or left, at once: the ping
        carries the refutation (and its ack more gossip back)."""
        return self._prober.pings(sorted(self._view.take_accusers()))

    def _introduce(self, addr: str, sender: str) -> list[Outgoing]:
        """Exchange full state with a member that probes this one without being known
        here: the gossip of its arrival ran out before reaching this member. Once per
        member between two periodic exchanges."""
        if self._view.get(sender) is not None or sender in self._introduced:
            return []
        self._introduced.add(sender)
        return self._state(addr, sender, True)

    def _push_pull(self, now: float) -> list[Outgoing]:
        self._introduced.clear()
        partners = [m for m in self._view.records() if m.state is not State.LEFT]
        self._next_push_pull = now + self.settings.push_pull_interval
        if partners:
            partner = self._rng.choice(partners)
            return self._state(partner.meta.swim_addr, partner.node_id, True)
        if self._seeds:
            self._next_push_pull = now + SEED_RETRY * self.settings.probe_interval
            return self._state(self._rng.choice(self._seeds), None, True)
        return []

    def _state(self, addr: str, to: str | None, want_reply: bool) -> list[Outgoing]:
        """This member's full state for ``addr``, in as many messages as it takes; only the
        first asks for a reply, so the partner answers once."""
        records = [m.news(with_meta=True) for m in (self._view.local, *self._view.records())]
        room = self.settings.max_packet_size - wire.base_size(PushPull(self.node_id, True, ()))
        chunks: list[list[Update]] = [[]]
        used = 0
        for record in records:
            size = wire.update_size(record)
            if chunks[-1] and (used + size > room or len(chunks[-1]) == wire.MAX_UPDATES):
                chunks.append([])
                used = 0
            chunks[-1].append(record)
            used += size
        return [
            Outgoing(addr, PushPull(self.node_id, want_reply and i == 0, tuple(chunk)), to)
            for i, chunk in enumerate(chunks)
        ]

    def _merge(self, sender: str, records: tuple[Update, ...], now: float) -> None:
        """Take in a full state. A death there is only a suspicion here, accused by the
        sender: it may be stale news from the far side of a healed partition, and the
        member, if alive, must have the chance to refute."""
        for record in records:
            if record.state in (State.SUSPECT, State.DEAD):
                record = replace(record, state=State.SUSPECT, accuser=sender)
            self._view.apply(record, now)

    def _dress(self, out: list[Outgoing]) -> list[Outgoing]:
        """Piggyback on each message what its recipient must hear, then the gossip that
        fits."""
        settings = self.settings
        limit = retransmit_limit(settings.retransmit_mult, self._view.size())
        dressed = []
        for outgoing in out:
            room = settings.max_packet_size - wire.base_size(outgoing.message)
            updates = []
            for update in self._view.told(outgoing.to):
                size = wire.update_size(update)
                if size <= room:
                    updates.append(update)
                    room -= size
            skip = {update.node_id for update in updates}
            most = wire.MAX_UPDATES - len(updates)
            updates += self._view.broadcasts.pick(room, most, limit, skip)
            dressed.append(
                replace(outgoing, message=replace(outgoing.message, updates=tuple(updates)))
            )
        return dressed
