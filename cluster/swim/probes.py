"""SWIM's failure detector: one probe per probe interval, and relaying others' probes.

A probe pings the next member of a randomized round-robin (every member is
probed once per round, in a fresh random order each round, so a failure is
found within two rounds at worst, not just on average as with random picks).
Without an ack within the probe timeout, the prober pings the member once
more and asks ``indirect_checks`` alive members to ping it too (ping-req),
which tells a dead member from a lossy path between two live ones. An ack,
direct or relayed, counts until the probe interval ends; without one the
member is suspected.

The second direct ping stands in for memberlist's TCP fallback, which SWIM
over one UDP socket does not have: with 10 % loss on 3 members it made
suspicions five times rarer in the simulator, for one packet per probe that
goes indirect.

Relays answer with a nack when the member they ping stays silent (Lifeguard):
a prober that gets neither acks nor nacks probably has trouble of its own
rather than the member it probes, and its local health score says so
(``health.py``). Both probe interval and timeout stretch with that score.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .health import LocalHealth
from .members import State
from .messages import Ack, Nack, Outgoing, Ping, PingReq
from .settings import SwimSettings
from .view import MemberView

NACK_FRACTION = 0.8
"""A relay nacks after this fraction of the time between the requester's ping-req and the
end of its probe interval (unscaled), so the nack arrives in time to be counted."""


@dataclass(slots=True)
class _Probe:
    target: str
    addr: str
    seq: int
    sent_at: float
    indirect_at: float
    deadline: float
    relays: int = -1
    """Members asked to relay, once the probe went indirect."""
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str
    requester_addr: str
    requester_seq: int
    target: str
    nack_at: float
    expires_at: float
    acked: bool = False
    nacked: bool = False


class Prober:
    """Probes the members of ``view`` in turn and relays the probes of others."""

    def __init__(
        self,
        view: MemberView,
        settings: SwimSettings,
        health: LocalHealth,
        rng: random.Random,
        now: float,
    ) -> None:
        self.view = view
        self.settings = settings
        self.health = health
        self._rng = rng
        self._order: list[str] = []
        self._index = 0
        self._probe: _Probe | None = None
        self._next_probe_at = now + rng.uniform(0, settings.probe_interval)
        """Staggered, so that members started together do not probe in lockstep."""
        self._relays: dict[int, _Relay] = {}
        self._seq = rng.getrandbits(32)
        self.rtts: dict[str, float] = {}
        """Per member, the round trip of the last probe it answered directly."""

    def next_deadline(self) -> float:
        times = [self._next_probe_at]
        probe = self._probe
        if probe is not None:
            times.append(probe.indirect_at if probe.relays < 0 else probe.deadline)
        for relay in self._relays.values():
            times.append(relay.expires_at if relay.acked or relay.nacked else relay.nack_at)
        return min(times)

    def tick(self, now: float) -> list[Outgoing]:
        out = self._relay_timeouts(now)
        probe = self._probe
        if probe is not None:
            if now >= probe.deadline:
                out += self._failed(probe, now)
            elif probe.relays < 0 and now >= probe.indirect_at:
                out += self._indirect(probe)
        if self._probe is None and now >= self._next_probe_at:
            out += self._start(now)
        return out

    def void(self, now: float) -> None:
        """Drop the probe under way without judging its member: this member stalled, and
        the silence may have been its own. The next probe starts now."""
        self._probe = None
        self._next_probe_at = now

    def on_ack(self, now: float, from_addr: str, ack: Ack) -> list[Outgoing]:
        relay = self._relays.get(ack.seq)
        if relay is not None and ack.sender == relay.target:
            if relay.acked:
                return []
            relay.acked = True
            relayed = Ack(relay.requester_seq, relay.target)
            return [Outgoing(relay.requester_addr, relayed, relay.requester)]
        probe = self._probe
        if probe is not None and ack.seq == probe.seq and ack.sender == probe.target:
            if probe.relays < 0 and from_addr == probe.addr:
                self.rtts[probe.target] = now - probe.sent_at
            self.health.adjust(-1)
            self._probe = None
        return []

    def on_nack(self, nack: Nack) -> None:
        probe = self._probe
        if probe is not None and nack.seq == probe.seq:
            probe.nacks += 1

    def on_ping_req(self, now: float, from_addr: str, request: PingReq) -> list[Outgoing]:
        seq = self._next_seq()
        settings = self.settings
        wait = (settings.probe_interval - settings.probe_timeout) * NACK_FRACTION
        self._relays[seq] = _Relay(
            request.sender,
            from_addr,
            request.seq,
            request.target,
            now + wait,
            now + settings.probe_interval,
        )
        ping = Ping(seq, request.target, self.view.node_id)
        return [Outgoing(request.target_addr, ping, request.target)]

    def pings(self, members: list[str]) -> list[Outgoing]:
        """A ping to each of ``members`` known alive or suspect, outside the probe rotation:
        to get news to them now. Their acks are not waited for."""
        out = []
        for node_id in members:
            record = self.view.get(node_id)
            if record is not None and self.view.is_live(node_id):
                ping = Ping(self._next_seq(), node_id, self.view.node_id)
                out.append(Outgoing(record.meta.swim_addr, ping, node_id))
        return out

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _start(self, now: float) -> list[Outgoing]:
        scale = self.health.scale
        self._next_probe_at = now + self.settings.probe_interval * scale
        target = self._next_target()
        record = self.view.get(target) if target else None
        if record is None:
            return []
        addr = record.meta.swim_addr
        seq = self._next_seq()
        indirect_at = now + self.settings.probe_timeout * scale
        self._probe = _Probe(record.node_id, addr, seq, now, indirect_at, self._next_probe_at)
        return [Outgoing(addr, Ping(seq, record.node_id, self.view.node_id), record.node_id)]

    def _next_target(self) -> str | None:
        """The next member of this round; new arrivals go in at random places of the rest
        of the round, so that they are probed within it."""
        for arrival in self.view.take_arrivals():
            if arrival not in self._order[self._index :]:
                self._order.insert(self._rng.randint(self._index, len(self._order)), arrival)
        while True:
            if self._index >= len(self._order):
                self._order = self.view.live()
                self._rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    return None
            target = self._order[self._index]
            self._index += 1
            if self.view.is_live(target):
                return target

    def _indirect(self, probe: _Probe) -> list[Outgoing]:
        node_id = self.view.node_id
        helpers = [m for m in self.view.live(State.ALIVE) if m != probe.target]
        chosen = self._rng.sample(helpers, min(self.settings.indirect_checks, len(helpers)))
        probe.relays = len(chosen)
        request = PingReq(probe.seq, probe.target, probe.addr, node_id)
        out = [Outgoing(probe.addr, Ping(probe.seq, probe.target, node_id), probe.target)]
        for helper in chosen:
            record = self.view.get(helper)
            if record is not None:
                out.append(Outgoing(record.meta.swim_addr, request, helper))
        return out

    def _failed(self, probe: _Probe, now: float) -> list[Outgoing]:
        """Suspect the member, and tell it so at once: if it is alive after all, the
        sooner it hears, the sooner it refutes."""
        self._probe = None
        # Relays that neither acked nor nacked point at this member's own connectivity;
        # without relays to ask, any failed probe might be its own fault.
        missed = probe.relays - probe.nacks if probe.relays > 0 else 1
        self.health.adjust(max(0, missed))
        self.view.accuse(probe.target, now)
        return self.pings([probe.target])

    def _relay_timeouts(self, now: float) -> list[Outgoing]:
        out = []
        for seq, relay in list(self._relays.items()):
            if not (relay.acked or relay.nacked) and now >= relay.nack_at:
                relay.nacked = True
                nack = Nack(relay.requester_seq, self.view.node_id)
                out.append(Outgoing(relay.requester_addr, nack, relay.requester))
            if now >= relay.expires_at:
                del self._relays[seq]
        return out
