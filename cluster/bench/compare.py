"""Median figures of repeated bench runs per broker, side by side with ratios to a baseline.

``scripts/bench-compare.sh`` owns the brokers and the runs and leaves one
``--json`` report per run in a directory, named ``<broker>.<run>.json``
(a run that produced no report leaves nothing, or an empty file). This
module only reads them::

    python -m raftmq.cluster.bench.compare DIR mosquitto raftmq

The first broker named is the baseline. A median hides a bad run, so the
table also shows every run's figure and how many runs were clean (complete,
nothing lost, duplicated or reordered): a fast run that lost messages is
not a result.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Report = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Metric:
    label: str
    read: Callable[[Report], float | None]
    higher_is_better: bool = True


def _key(name: str) -> Callable[[Report], float | None]:
    return lambda report: report.get(name)


def _latency(name: str) -> Callable[[Report], float | None]:
    return lambda report: (report.get("latency_ms") or {}).get(name)


METRICS: dict[str, list[Metric]] = {
    "latency": [
        Metric("p50 ms", _latency("p50"), higher_is_better=False),
        Metric("p99 ms", _latency("p99"), higher_is_better=False),
    ],
    "conns": [
        Metric("conns/s", _key("conns_per_s")),
        Metric("RSS B/conn", _key("broker_rss_per_conn"), higher_is_better=False),
    ],
    "connect-rate": [Metric("cycles/s", _key("cycles_per_s"))],
}
DEFAULT_METRICS = [Metric("msgs/s", _key("msgs_per_s"))]


def load_runs(directory: Path, broker: str) -> list[Report | None]:
    """The reports of ``broker`` in run order; None for a run that produced none."""
    runs: list[Report | None] = []
    for path in sorted(directory.glob(f"{broker}.*.json"), key=lambda p: int(p.stem.split(".")[1])):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            runs.append(None)
    return runs


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if value < 100 and value != int(value) else f"{value:,.0f}"


def render(directory: Path, brokers: Sequence[str]) -> tuple[str, bool]:
    """The comparison table, and whether every run of every broker was clean."""
    runs = {broker: load_runs(directory, broker) for broker in brokers}
    scenario = next((r["scenario"] for rs in runs.values() for r in rs if r), None)
    metrics = METRICS.get(scenario or "", DEFAULT_METRICS)
    medians = {
        broker: [
            _median([v for r in reports if r and (v := m.read(r)) is not None]) for m in metrics
        ]
        for broker, reports in runs.items()
    }
    baseline = medians[brokers[0]]
    header = ["broker"]
    for metric in metrics:
        header += [metric.label, f"x {brokers[0]}"]
    header += [f"runs ({metrics[0].label})", "clean"]
    rows = [header]
    all_clean = True
    for broker in brokers:
        reports = runs[broker]
        clean = sum(1 for r in reports if r and r.get("ok"))
        all_clean = all_clean and bool(reports) and clean == len(reports)
        row = [broker]
        for value, base in zip(medians[broker], baseline, strict=True):
            ratio = value / base if value is not None and base else None
            row += [_fmt(value), "-" if ratio is None else f"{ratio:.2f}"]
        row.append(" ".join(_run_cell(metrics[0], r) for r in reports))
        row.append(f"{clean}/{len(reports)}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    better = ", ".join(
        f"{m.label} {'higher' if m.higher_is_better else 'lower'} is better" for m in metrics
    )
    lines.append(
        f"(medians; {better}; clean = complete, nothing lost, duplicated or reordered, "
        "! = not clean)"
    )
    for broker, reports in runs.items():
        for index, report in enumerate(reports, 1):
            if report and not report.get("ok"):
                lines.append(f"{broker} run {index}: {_problem(report)}")
    return "\n".join(lines), all_clean


def _run_cell(metric: Metric, report: Report | None) -> str:
    """One run's figure; "!" marks a run that was not clean, explained under the table."""
    if report is None:
        return "failed"
    return _fmt(metric.read(report)) + ("" if report.get("ok") else "!")


def _problem(report: Report) -> str:
    parts = [f"stopped by {report.get('stopped_by')}"]
    for key in ("lost", "duplicates", "out_of_order", "failed", "dropped_connections"):
        if report.get(key):
            parts.append(f"{key} {report[key]:,}")
    parts += report.get("errors", [])[:2]
    return "; ".join(parts)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m raftmq.cluster.bench.compare DIR BASELINE [BROKER...]")
        return 2
    table, all_clean = render(Path(argv[0]), argv[1:])
    print(table)
    return 0 if all_clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
