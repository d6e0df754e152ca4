"""A campaign's timeline: publish throughput and latency per second, faults shaded, as a PNG.

The report's tables say how much was acknowledged during faults and while healthy; the
timeline shows *when*: how fast throughput drops as a fault begins, how long latency stays
up after the heal, whether a kill stalls every publisher or only some. Like the checkers
it reads the history and nothing else, so it can be drawn again from a kept history
(``render_timeline(load(path), out)``). ``timeline_series`` is a pure function of the
events, tested on hand-written histories; ``render_timeline`` only draws what it returns.

The shaded periods are the availability checker's fault windows (``checkers.fault_windows``),
so the picture and the report's "faulty" row count the same seconds as faulty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from checkers import FAULT_STARTS, fault_windows
from history import Op
from history_view import publishes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BIN_SECONDS = 1.0
FIGURE_SIZE = (10.0, 6.0)
"""Inches: with ``DPI``, a 1000 x 600 picture, readable in a Markdown viewer."""
DPI = 100


class FaultPeriod(NamedTuple):
    """A fault window (seconds since the history started) and the faults begun in it."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class TimelineSeries:
    """Per 1-second bin from the history's start: bin ``i`` covers [i, i + 1) seconds.

    Publishes are counted in the bin of their completion; a publish the history ended
    before completing is in none. Latency is that of the acknowledged publishes completed
    in the bin, from invoke to completion, None where there were none.
    """

    acknowledged: list[int]
    """Publishes completed ok with a reason below 0x80, as the availability checker counts."""
    unacknowledged: list[int]
    """Publishes completed fail (surely not taken), info (unknown) or refused."""
    latency_p50_ms: list[float | None]
    latency_p99_ms: list[float | None]
    faults: list[FaultPeriod]


def timeline_series(ops: list[Op]) -> TimelineSeries:
    """The timeline of a loaded history (events in index order)."""
    completion_times = {op["index"]: op["time"] for op in ops if op["type"] != "invoke"}
    bins = math.floor(ops[-1]["time"] / BIN_SECONDS) + 1 if ops else 0
    acknowledged = [0] * bins
    unacknowledged = [0] * bins
    latencies_ms: list[list[float]] = [[] for _ in range(bins)]
    for publish in publishes(ops).values():
        if publish.completion_index is None:
            continue
        completed_at = completion_times[publish.completion_index]
        bin_index = math.floor(completed_at / BIN_SECONDS)
        if publish.acknowledged:
            acknowledged[bin_index] += 1
            latencies_ms[bin_index].append((completed_at - publish.invoke_time) * 1000.0)
        else:
            unacknowledged[bin_index] += 1
    return TimelineSeries(
        acknowledged,
        unacknowledged,
        [nearest_rank(samples, 50) for samples in latencies_ms],
        [nearest_rank(samples, 99) for samples in latencies_ms],
        fault_periods(ops),
    )


def nearest_rank(samples: list[float], percent: float) -> float | None:
    """The nearest-rank percentile: the smallest sample with ``percent`` % of the samples
    at or below it. Always a latency that happened, never an interpolation between two."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(math.ceil(percent / 100 * len(ordered)), 1) - 1]


def fault_periods(ops: list[Op]) -> list[FaultPeriod]:
    """The fault windows, each labelled with the faults begun in it ("partition-one",
    "pause n3"; several joined by " + " where faults overlapped)."""
    starts = [
        op
        for op in ops
        if op["f"] == "nemesis"
        and op["type"] == "invoke"
        and op["value"].get("fault") in FAULT_STARTS
    ]
    periods = []
    for start, end in fault_windows(ops):
        labels = [_fault_label(op) for op in starts if start <= op["time"] <= end]
        periods.append(FaultPeriod(start, end, " + ".join(labels)))
    return periods


def _fault_label(invoke: Op) -> str:
    """A partition's kind, or a process fault and its node ("kill n2")."""
    detail = invoke["value"].get("detail", {})
    kind = str(detail.get("kind", invoke["value"]["fault"]))
    return f"{kind} {detail['node']}" if "node" in detail else kind


def render_timeline(ops: list[Op], path: Path, title: str = "Fault campaign") -> None:
    """Draw the history's timeline to ``path`` as a PNG: acknowledged and unacknowledged
    publishes per second above, latency p50/p99 (log scale) below, faults shaded in both.

    The figure is built without pyplot, so nothing global (backend, open figures) is
    touched and it is freed with its last reference.
    """
    series = timeline_series(ops)
    seconds = [index * BIN_SECONDS for index in range(len(series.acknowledged))]
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    throughput, latency = figure.subplots(2, 1, sharex=True)
    throughput.step(seconds, series.acknowledged, where="post", label="acknowledged")
    throughput.step(seconds, series.unacknowledged, where="post", label="failed or unknown")
    throughput.set_ylabel("publishes / s")
    throughput.legend(loc="best")
    latency.plot(seconds, _gaps(series.latency_p50_ms), marker=".", label="p50")
    latency.plot(seconds, _gaps(series.latency_p99_ms), marker=".", label="p99")
    if any(value is not None for value in series.latency_p99_ms):
        # A log scale with nothing positive on it makes matplotlib warn.
        latency.set_yscale("log")
        latency.legend(loc="upper right")
    latency.set_ylabel("publish latency (ms)")
    latency.set_xlabel("seconds since start")
    for period in series.faults:
        for axes in (throughput, latency):
            axes.axvspan(period.start, period.end, color="tab:red", alpha=0.15, linewidth=0)
        throughput.annotate(
            period.label,
            ((period.start + period.end) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    throughput.set_title(f"{title}: faults shaded", pad=14)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _gaps(values: list[float | None]) -> list[float]:
    """None as NaN, which matplotlib leaves as a gap in the line."""
    return [math.nan if value is None else value for value in values]
