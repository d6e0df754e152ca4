"""One fault campaign: workload and nemesis on a lab, then drain, retained reads, checkers.

The order is the one the checkers assume: the nemesis schedule ends healed (its contract:
every partition healed, every paused node resumed, every killed node restarted), so the
drain after it reads what a healthy cluster still owes, and the retained reads compare
nodes that can all talk to each other again. Everything lands in ``out_dir``:
``history.jsonl``, kept whatever happens (it is flushed per line), ``report.md`` and
``timeline.png`` (throughput and latency per second, faults shaded).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from checkers import DEFAULT_GRACE, Result, check
from history import History, load
from report import render_report
from timeline import render_timeline
from workload import Workload, WorkloadConfig

DRAIN_TIMEOUT = 60.0
TIMELINE = "timeline.png"


class LabNodeLike(Protocol):
    """What the campaign needs of a lab node (lab.LabNode)."""

    @property
    def address(self) -> str: ...

    @property
    def mqtt_port(self) -> int: ...


class LabLike(Protocol):
    """What the campaign needs of a lab (lab.Lab)."""

    @property
    def nodes(self) -> Mapping[str, LabNodeLike]: ...


class NemesisLike(Protocol):
    """What the campaign needs of a nemesis (nemesis.Nemesis)."""

    def run_schedule(self, kinds: Sequence[str], duration: float, **timing: Any) -> None: ...


NemesisFactory = Callable[[Any, History, random.Random], NemesisLike]


def lab_nemesis(lab: Any, history: History, rng: random.Random) -> NemesisLike:
    """The lab's own nemesis (tests/faults/nemesis.py), imported only when a campaign
    runs on a real lab."""
    from nemesis import Nemesis

    nemesis: NemesisLike = Nemesis(lab, history, rng)
    return nemesis


def run_campaign(
    lab: LabLike,
    nemesis_kinds: Sequence[str],
    duration: float,
    seed: int,
    out_dir: Path,
    *,
    workload_config: WorkloadConfig | None = None,
    nemesis_factory: NemesisFactory = lab_nemesis,
    timing: dict[str, tuple[float, float]] | None = None,
    drain_timeout: float = DRAIN_TIMEOUT,
    grace: float = DEFAULT_GRACE,
) -> dict[str, Result]:
    """Run the workload under ``nemesis_kinds`` for ``duration`` seconds, then check it.

    ``timing`` passes ``healthy``/``faulty`` period ranges to the schedule (its defaults
    otherwise). Every random choice comes from ``seed``, through one generator for the
    workload and one for the nemesis.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    history_path = out_dir / "history.jsonl"
    rng = random.Random(seed)
    history = History(history_path)
    addresses = {node_id: (node.address, node.mqtt_port) for node_id, node in lab.nodes.items()}
    workload = Workload(addresses, history, random.Random(rng.random()), workload_config)
    try:
        nemesis = nemesis_factory(lab, history, random.Random(rng.random()))
        workload.start()
        nemesis.run_schedule(list(nemesis_kinds), duration, **(timing or {}))
        workload.drain(drain_timeout)
        workload.read_retained()
    finally:
        workload.close()
        history.close()
    ops = load(history_path)
    results = check(ops, grace)
    run = {
        "nodes": len(addresses),
        "nemeses": ", ".join(nemesis_kinds),
        "duration": f"{duration:g} s",
        "seed": seed,
        "operations": sum(op["type"] == "invoke" for op in ops),
        "deliveries": sum(op["f"] == "deliver" for op in ops),
        "history": history_path.name,
        "timeline": TIMELINE,
    }
    (out_dir / "report.md").write_text(render_report(results, run), encoding="utf-8")
    title = f"{run['nemeses']}, {run['duration']}, seed {seed}"
    render_timeline(ops, out_dir / TIMELINE, title)
    return results
