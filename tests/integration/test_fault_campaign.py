"""run_campaign (tests/faults/campaign.py) end to end on a loopback cluster, with a stand-in
lab and a stand-in nemesis that pauses one node (SIGSTOP/SIGCONT needs no namespaces).

What is checked is the campaign's plumbing: the nemesis gets the schedule and records into
the same history, the drain and the retained reads follow it, the checkers run over the
kept history, and the report shows every checker and the availability in and out of the
fault. The verdicts themselves are the checkers' business (tests/unit/test_fault_checkers.py).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from campaign import run_campaign
from clusterkit import start_cluster
from history import History, load
from workload import WorkloadConfig

if TYPE_CHECKING:
    from conftest import RunningBroker

PAUSE = 2.0


@dataclass
class LoopbackNode:
    broker: RunningBroker

    @property
    def address(self) -> str:
        return self.broker.host

    @property
    def mqtt_port(self) -> int:
        return self.broker.port


@dataclass
class LoopbackLab:
    nodes: dict[str, LoopbackNode]


class PausingNemesis:
    """Healthy, then one node paused for ``PAUSE`` seconds, then healthy to the end."""

    def __init__(self, lab: LoopbackLab, history: History, rng: random.Random) -> None:
        self.lab = lab
        self.history = history
        self.rng = rng
        self.schedules: list[tuple[list[str], float, dict[str, Any]]] = []

    def run_schedule(self, kinds: Sequence[str], duration: float, **timing: Any) -> None:
        self.schedules.append((list(kinds), duration, timing))
        end = time.monotonic() + duration
        node_id = self.rng.choice(sorted(self.lab.nodes))
        pid = self.lab.nodes[node_id].broker.pid
        time.sleep(duration / 3)
        self._fault("pause", node_id, signal.SIGSTOP, pid)
        time.sleep(PAUSE)
        self._fault("resume", node_id, signal.SIGCONT, pid)
        time.sleep(max(0.0, end - time.monotonic()))

    def _fault(self, fault: str, node_id: str, sig: int, pid: int) -> None:
        op = self.history.invoke(
            "nemesis", "nemesis", {"fault": fault, "detail": {"node": node_id}}
        )
        os.kill(pid, sig)
        self.history.complete(op, "info", {"fault": fault})


@pytest.mark.raftmq_only
@pytest.mark.timeout(150)
def test_run_campaign_writes_history_and_report_and_returns_every_checker(
    broker_factory: Callable[..., RunningBroker], tmp_path: Path
) -> None:
    cluster = start_cluster(broker_factory)
    lab = LoopbackLab({n: LoopbackNode(b) for n, b in cluster.nodes.items()})
    made: list[PausingNemesis] = []

    def nemesis_factory(lab: Any, history: History, rng: random.Random) -> PausingNemesis:
        made.append(PausingNemesis(lab, history, rng))
        return made[-1]

    config = WorkloadConfig(persistent_v5=1, persistent_v311=1, clean_subscribers=1)
    try:
        results = run_campaign(
            lab,
            ["pause"],
            8.0,
            seed=7,
            out_dir=tmp_path / "run",
            workload_config=config,
            nemesis_factory=nemesis_factory,
            timing={"healthy": (1.0, 2.0)},
            drain_timeout=20.0,
        )
    finally:
        for node in cluster.nodes.values():
            if node.proc.poll() is None:
                os.kill(node.pid, signal.SIGCONT)
    assert [schedule for nemesis in made for schedule in nemesis.schedules] == [
        (["pause"], 8.0, {"healthy": (1.0, 2.0)})
    ]
    names = {"well-formed", "lost", "qos2-duplicates", "order", "unexpected", "session-lost"}
    names |= {"split-brain", "retained-divergence", "availability"}
    assert set(results) == names
    ops = load(tmp_path / "run" / "history.jsonl")
    faults = [op["value"]["fault"] for op in ops if op["f"] == "nemesis" and op["type"] == "invoke"]
    assert faults == ["pause", "resume"]
    drained = next(i for i, op in enumerate(ops) if op["f"] == "drain")
    assert drained > max(i for i, op in enumerate(ops) if op["f"] == "nemesis")
    assert any(op["f"] == "read-retained" for op in ops[drained:])
    assert results["well-formed"].ok, results["well-formed"].examples
    figure = results["availability"].examples[0]
    assert figure["faulty"]["publishes"] > 0 and figure["healthy"]["publishes"] > 0
    report = (tmp_path / "run" / "report.md").read_text()
    for name in names - {"availability"}:
        assert f"| {name} |" in report
    assert "| faulty |" in report and "seed: 7" in report
