"""A deterministic simulated network for SWIM cores: a virtual clock, seeded loss,
per-link delay, partitions, and members that are killed, paused or slow.

Time moves in steps of ``step`` seconds, skipping the steps in which nothing
is due, so ten simulated minutes take a second or two. Messages go through the
real codec, so packet sizes are checked as well: every datagram must fit the
member's ``max_packet_size``.

Paused members (SIGSTOP) are neither ticked nor handed packets; what reaches
them meanwhile is kept for their waking, as a socket buffer would, or
dropped. Slow members (a process pinned at 100 % CPU) send everything late by
a random 200-400 ms.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from raftmq.cluster.swim import (
    Ack,
    MemberMeta,
    MembershipEvent,
    Outgoing,
    State,
    Swim,
    SwimSettings,
    Update,
)
from raftmq.cluster.swim.wire import decode, encode


@dataclass
class SimMember:
    swim: Swim
    addr: str
    killed: bool = False
    paused_until: float = 0.0
    keep_while_paused: bool = True
    held: list[tuple[str, bytes]] = field(default_factory=list)
    slow: tuple[float, float] | None = None
    events: list[tuple[float, MembershipEvent]] = field(default_factory=list)


def meta(node_id: str, index: int) -> MemberMeta:
    port = 7000 + index
    return MemberMeta(
        node_id, f"10.0.0.{index}:{port}", f"10.0.0.{index}:4400", f"10.0.0.{index}:4500", "x:1883"
    )


class Network:
    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0002, 0.002),
        step: float = 0.01,
        settings: SwimSettings | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.step = step
        self.settings = settings or SwimSettings()
        self.steps = 0
        self.members: dict[str, SimMember] = {}
        self._by_addr: dict[str, SimMember] = {}
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._order = itertools.count()
        self._groups: list[set[str]] | None = None
        self.sent = 0

    @property
    def now(self) -> float:
        return self.steps * self.step

    def add(
        self, node_id: str, join: Sequence[str] = (), settings: SwimSettings | None = None
    ) -> SimMember:
        """A member started now (again, if ``node_id`` ran before: a restart, with the same
        addresses and incarnation 0), joining the members ``join``."""
        old = self.members.get(node_id)
        index = list(self.members).index(node_id) + 1 if old else len(self.members) + 1
        swim = Swim(
            meta(node_id, index),
            settings or self.settings,
            random.Random(self.rng.getrandbits(64)),
            self.now,
        )
        member = SimMember(swim, swim.meta.swim_addr)
        if old:
            member.events = old.events
        self.members[node_id] = member
        self._by_addr[member.addr] = member
        seeds = [self.members[seed].addr for seed in join]
        self._send(member, swim.join(seeds))
        return member

    def start(self, size: int, *, settle: float = 30.0) -> list[str]:
        """``size`` members n1..n<size>, each joining n1, run until all know all alive."""
        ids = [f"n{i}" for i in range(1, size + 1)]
        self.add(ids[0])
        for node_id in ids[1:]:
            self.add(node_id, join=[ids[0]])
        assert self.run_until(self.converged, settle), "the cluster did not converge"
        return ids

    def leave(self, node_id: str, *, linger: float = 1.0) -> None:
        """A graceful stop: leave, keep answering for ``linger`` seconds, then exit."""
        member = self.members[node_id]
        self._send(member, member.swim.leave(self.now))
        self.run(linger)
        self.kill(node_id)

    def whisper(self, to: str, sender: str, update: Update) -> None:
        """Hand ``to`` one update, as piggybacked on a message from ``sender``."""
        member = self.members[to]
        message = Ack(0, sender, (update,))
        self._send(member, member.swim.receive(self.now, self.members[sender].addr, message))
        self._record(member)

    # Faults.
    def kill(self, node_id: str) -> None:
        self.members[node_id].killed = True

    def pause(self, node_id: str, seconds: float, *, keep: bool = True) -> None:
        member = self.members[node_id]
        member.paused_until = self.now + seconds
        member.keep_while_paused = keep

    def slow_down(self, node_id: str, low: float = 0.2, high: float = 0.4) -> None:
        self.members[node_id].slow = (low, high)

    def partition(self, *groups: set[str]) -> None:
        self._groups = [set(group) for group in groups]

    def heal(self) -> None:
        self._groups = None

    # Looking.
    def state(self, viewer: str, node_id: str) -> State | None:
        record = self.members[viewer].swim.member(node_id)
        return record.state if record else None

    def running(self) -> list[str]:
        return [node_id for node_id, m in self.members.items() if not m.killed]

    def converged(self) -> bool:
        """Every running member knows every running member alive, and no other alive."""
        running = self.running()
        for viewer in running:
            alive = {
                m.node_id for m in self.members[viewer].swim.members() if m.state is State.ALIVE
            }
            if alive != set(running):
                return False
        return True

    def events(self, new_state: State | None = None) -> list[tuple[str, float, MembershipEvent]]:
        return [
            (viewer, at, event)
            for viewer, member in self.members.items()
            for at, event in member.events
            if new_state is None or event.new_state is new_state
        ]

    # Running.
    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, done: Callable[[], bool], seconds: float) -> bool:
        end = self.steps + math.ceil(seconds / self.step - 1e-9)
        while self.steps < end:
            if done():
                return True
            self.steps = min(end, max(self.steps + 1, self._next_step(end)))
            self._step()
        return done()

    def _next_step(self, end: int) -> int:
        """The first step at which something is due (a delivery, a tick, a waking)."""
        due = self._queue[0][0] if self._queue else math.inf
        for member in self.members.values():
            if not member.killed:
                paused = member.paused_until > self.now
                due = min(due, member.paused_until if paused else member.swim.next_deadline())
        return end if due == math.inf else math.ceil(due / self.step - 1e-9)

    def _step(self) -> None:
        now = self.now
        while self._queue and self._queue[0][0] <= now + 1e-9:
            _, _, to, sender, data = heapq.heappop(self._queue)
            self._deliver(self._by_addr[to], sender, data)
        for member in self.members.values():
            if member.killed or member.paused_until > now:
                continue
            for sender, data in member.held:
                self._deliver(member, sender, data)
            member.held.clear()
            if member.swim.next_deadline() <= now + 1e-9:
                self._send(member, member.swim.tick(now))
            self._record(member)

    def _deliver(self, member: SimMember, sender: str, data: bytes) -> None:
        if member.killed:
            return
        if member.paused_until > self.now:
            if member.keep_while_paused:
                member.held.append((sender, data))
            return
        self._send(member, member.swim.receive(self.now, sender, decode(data)))
        self._record(member)

    def _record(self, member: SimMember) -> None:
        member.events += ((self.now, event) for event in member.swim.events())

    def _send(self, member: SimMember, out: list[Outgoing]) -> None:
        limit = member.swim.settings.max_packet_size
        for outgoing in out:
            data = encode(outgoing.message)
            assert len(data) <= limit, f"{len(data)}-byte message from {member.addr}"
            self.sent += 1
            if outgoing.addr not in self._by_addr or self._cut(member.addr, outgoing.addr):
                continue
            if self.rng.random() < self.loss:
                continue
            delay = self.rng.uniform(*self.delay)
            if member.slow:
                delay += self.rng.uniform(*member.slow)
            arrival = self.now + delay
            heapq.heappush(
                self._queue, (arrival, next(self._order), outgoing.addr, member.addr, data)
            )

    def _cut(self, a: str, b: str) -> bool:
        if self._groups is None:
            return False
        node_a = self._by_addr[a].swim.node_id
        node_b = self._by_addr[b].swim.node_id
        return not any(node_a in group and node_b in group for group in self._groups)
