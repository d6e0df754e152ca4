"""The nemeses: faults done to a ``Lab`` on a seeded schedule, each recorded in the history.

A fault kind begins (a partition, a kill -9, a SIGSTOP) and later ends (heal, a
restart on the same data dir, SIGCONT). Every begin and end is a "nemesis" operation
of the "nemesis" process in the history, an invoke and an "info" completion as in
Jepsen, with ``{"fault": ..., "detail": ...}``: the checkers tell faulty periods
from healthy ones by these events alone.

Everything random (which kind, which node, which halves, how long) comes from the
``rng`` given, so a schedule is reproducible from its seed; only the Raft leader that
"isolate-leader" asks the lab for is not.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grudges

if TYPE_CHECKING:
    from lab import Lab

PARTITIONS = ("partition-one", "halves", "isolate-leader", "bridge", "ring")
PROCESS_FAULTS = ("kill-restart", "pause")
KINDS = PARTITIONS + PROCESS_FAULTS
RING_NODES = 5
"""A majorities ring is only a distinct fault from 5 nodes on."""
PROCESS = "nemesis"
HEALTHY = (3.0, 8.0)
FAULTY = (3.0, 10.0)
"""Default bounds (seconds) of the healthy and faulty periods of a schedule."""


class NemesisHistory(Protocol):
    """The part of ``history.History`` the nemesis writes to."""

    def invoke(self, process: str, f: str, value: dict[str, Any]) -> dict[str, Any]: ...

    def complete(self, op: dict[str, Any], type_: str, value: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Fault:
    """A fault in force: what began it and what ends it."""

    kind: str
    detail: dict[str, Any]
    end_fault: str
    """The history's name for the end: "heal", "restart" or "resume"."""
    undo: Callable[[], None]


def kinds_for(node_count: int) -> tuple[str, ...]:
    """Every fault kind that fits a lab of ``node_count`` nodes: the "mixed" nemesis."""
    return tuple(kind for kind in KINDS if kind != "ring" or node_count >= RING_NODES)


class Nemesis:
    """Begins and ends faults on ``lab``, one at a time, recording each in ``history``."""

    def __init__(self, lab: Lab, history: NemesisHistory, rng: random.Random) -> None:
        self.lab = lab
        self.history = history
        self.rng = rng
        self._stopping = threading.Event()

    @property
    def node_ids(self) -> list[str]:
        return list(self.lab.nodes)

    # -- one fault -----------------------------------------------------------------------

    def begin(self, kind: str) -> Fault:
        """Apply one fault of ``kind`` now; ``end`` it later."""
        self._check_kinds([kind])
        if kind in PARTITIONS:
            return self._partition(kind)
        if kind == "kill-restart":
            node = self.lab.nodes[self.rng.choice(self._running_ids())]
            self._record("kill", {"node": node.node_id}, node.kill)
            return Fault(kind, {"node": node.node_id}, "restart", node.start)
        node = self.lab.nodes[self.rng.choice(self._running_ids())]
        self._record("pause", {"node": node.node_id}, node.pause)
        return Fault(kind, {"node": node.node_id}, "resume", node.resume)

    def end(self, fault: Fault) -> None:
        self._record(fault.end_fault, {"kind": fault.kind, **fault.detail}, fault.undo)

    def recover(self) -> None:
        """Heal, resume every node and start every stopped one: the lab whole again."""
        paused = [n for n in self.lab.nodes.values() if n.running and n.paused]
        stopped = [n for n in self.lab.nodes.values() if not n.running]

        def whole_again() -> None:
            self.lab.heal()
            for node in paused:
                node.resume()
            for node in stopped:
                node.start()

        detail = {
            "final": True,
            "resumed": [n.node_id for n in paused],
            "restarted": [n.node_id for n in stopped],
        }
        self._record("heal", detail, whole_again)

    def _partition(self, kind: str) -> Fault:
        ids = self.node_ids
        detail: dict[str, Any] = {"kind": kind}
        if kind == "partition-one":
            grudge = grudges.isolate(self.rng.choice(ids), ids)
        elif kind == "halves":
            grudge = grudges.halves(ids, self.rng)
        elif kind == "isolate-leader":
            # Drawn first, used only when no leader is known, so that the draws that
            # follow do not depend on whether the lab answered.
            stand_in = self.rng.choice(ids)
            leader = self.lab.leader()
            detail["leader"] = leader
            grudge = grudges.isolate(leader or stand_in, ids)
        elif kind == "bridge":
            grudge = grudges.bridge(ids, self.rng)
        else:
            grudge = grudges.majorities_ring(ids, self.rng)
        detail["grudge"] = {node: sorted(sources) for node, sources in sorted(grudge.items())}
        self._record("partition", detail, lambda: self.lab.partition(grudge))
        return Fault(kind, {}, "heal", self.lab.heal)

    def _running_ids(self) -> list[str]:
        ids = [node_id for node_id, node in self.lab.nodes.items() if node.running]
        if not ids:
            raise RuntimeError("no lab node is running: nothing to kill or pause")
        return ids

    def _record(self, fault: str, detail: dict[str, Any], action: Callable[[], None]) -> None:
        """Do ``action`` between a nemesis invoke and its "info" completion."""
        op = self.history.invoke(PROCESS, "nemesis", {"fault": fault, "detail": detail})
        try:
            action()
        except BaseException as exc:
            failed = {**detail, "error": f"{type(exc).__name__}: {exc}"}
            self.history.complete(op, "info", {"fault": fault, "detail": failed})
            raise
        self.history.complete(op, "info", {"fault": fault, "detail": detail})

    def _check_kinds(self, kinds: Sequence[str]) -> None:
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown nemesis kinds {unknown}; known: {', '.join(KINDS)}")
        if "ring" in kinds and len(self.lab.nodes) < RING_NODES:
            raise ValueError(
                f"nemesis 'ring' needs {RING_NODES} nodes, the lab has {len(self.lab.nodes)}"
            )

    # -- a schedule ----------------------------------------------------------------------

    def run_schedule(
        self,
        kinds: Sequence[str],
        duration: float,
        healthy: tuple[float, float] = HEALTHY,
        faulty: tuple[float, float] = FAULTY,
    ) -> list[str]:
        """Alternate healthy and faulty periods for ``duration`` seconds; the kinds applied.

        Each period's length is drawn uniformly from its bounds; a fault never outlasts
        the schedule, and whatever happens (an error, ``stop()``) the lab is healed,
        resumed and restarted at the end.
        """
        if not kinds:
            raise ValueError("run_schedule needs at least one nemesis kind")
        self._check_kinds(kinds)
        deadline = time.monotonic() + duration
        applied: list[str] = []
        try:
            while not self._wait(self.rng.uniform(*healthy), deadline, whole=True):
                kind = self.rng.choice(list(kinds))
                fault = self.begin(kind)
                applied.append(kind)
                try:
                    self._wait(self.rng.uniform(*faulty), deadline, whole=False)
                finally:
                    self.end(fault)
        finally:
            self.recover()
        return applied

    def stop(self) -> None:
        """End a running schedule early (from another thread): its fault ends now."""
        self._stopping.set()

    def _wait(self, seconds: float, deadline: float, *, whole: bool) -> bool:
        """Sleep ``seconds``, cut at ``deadline`` or ``stop()``; True when the schedule is over.

        ``whole``: a period that cannot fit before the deadline is not begun at all.
        """
        left = deadline - time.monotonic()
        if whole and seconds > left:
            self._stopping.wait(max(left, 0.0))
            return True
        return self._stopping.wait(max(min(seconds, left), 0.0)) or seconds >= left
