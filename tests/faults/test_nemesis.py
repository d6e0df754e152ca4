"""The nemeses on a real lab: each partition shape lands as its grudge, a seeded schedule
alternates healthy and faulty periods, and the lab ends whole; every step is recorded."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
from lab import Lab
from nemesis import PARTITIONS, PROCESS, Nemesis, kinds_for
from probes import tcp_reaches

BEGIN_TO_END = {"partition": "heal", "kill": "restart", "pause": "resume"}


class RecordedHistory:
    """The History API of the interfaces file (invoke, complete), in memory.

    A stand-in for tests/faults/history.py, which the workload side writes.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def invoke(self, process: str, f: str, value: dict[str, Any]) -> dict[str, Any]:
        return self._add(process, "invoke", f, value)

    def complete(self, op: dict[str, Any], type_: str, value: dict[str, Any]) -> dict[str, Any]:
        return self._add(op["process"], type_, op["f"], value)

    def _add(self, process: str, type_: str, f: str, value: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            event = {"index": len(self.events), "process": process, "type": type_, "f": f}
            event["value"] = value
            self.events.append(event)
            return event

    def faults(self) -> list[str]:
        """The "fault" of each nemesis operation, once per invoke/completion pair."""
        invokes = [e for e in self.events if e["type"] == "invoke"]
        completions = [e for e in self.events if e["type"] != "invoke"]
        assert len(invokes) == len(completions)
        for invoke, completion in zip(invokes, completions, strict=True):
            assert completion["index"] == invoke["index"] + 1, self.events
            assert (invoke["process"], invoke["f"]) == (PROCESS, "nemesis")
            assert completion["type"] == "info"
            assert completion["value"] == invoke["value"], "an error was recorded"
        return [invoke["value"]["fault"] for invoke in invokes]


def test_each_partition_lands_as_its_grudge_and_heals(lab: Lab) -> None:
    history = RecordedHistory()
    nemesis = Nemesis(lab, history, random.Random(1))
    leader = lab.leader()
    for kind in kinds_for(len(lab.nodes)):
        if kind not in PARTITIONS:
            continue
        fault = nemesis.begin(kind)
        grudge = history.events[-1]["value"]["detail"]["grudge"]
        assert lab.network.rules().count(" drop ") == sum(len(v) for v in grudge.values())
        if kind == "isolate-leader":
            assert grudge[leader] == sorted(set(lab.nodes) - {leader})
        nemesis.end(fault)
        assert " drop " not in lab.network.rules()
    assert history.faults() == ["partition", "heal"] * 4
    with pytest.raises(ValueError, match="'ring' needs 5 nodes"):
        nemesis.begin("ring")


def test_a_schedule_alternates_and_leaves_the_lab_whole(lab: Lab) -> None:
    history = RecordedHistory()
    nemesis = Nemesis(lab, history, random.Random(14))  # draws halves, kill-restart, pause
    pids = {node_id: node.pid for node_id, node in lab.nodes.items()}
    applied = nemesis.run_schedule(
        ["kill-restart", "pause", "halves"], duration=6, healthy=(0.2, 0.4), faulty=(0.3, 0.6)
    )
    assert applied[:3] == ["halves", "kill-restart", "pause"]
    faults = history.faults()
    assert faults[-1] == "heal" and history.events[-1]["value"]["detail"]["final"]
    begun, ended = faults[:-1:2], faults[1:-1:2]
    assert [BEGIN_TO_END[fault] for fault in begun] == ended
    assert len(begun) == len(applied)
    assert all(node.running and not node.paused for node in lab.nodes.values())
    killed = {e["value"]["detail"]["node"] for e in history.events if e["value"]["fault"] == "kill"}
    assert all(lab.nodes[node_id].pid != pids[node_id] for node_id in killed)
    assert " drop " not in lab.network.rules()
    lab.wait_for_leader()


def test_a_majorities_ring_on_five_nodes(tmp_path: Path) -> None:
    history = RecordedHistory()
    with Lab(tmp_path / "lab", nodes=5) as lab:
        nemesis = Nemesis(lab, history, random.Random(2))
        fault = nemesis.begin("ring")
        grudge = history.events[-1]["value"]["detail"]["grudge"]
        dropped = set(grudge["n1"])
        assert len(dropped) == 2
        for other in set(lab.nodes) - {"n1"}:
            assert tcp_reaches(lab, other, "n1") == (other not in dropped), (other, grudge)
        nemesis.end(fault)
        assert all(tcp_reaches(lab, other, "n1") for other in dropped)
