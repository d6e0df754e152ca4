#!/usr/bin/env python3
"""Draw the BENCHMARKS.md charts from the results of `scripts/bench-compare.sh --all`.

    .bench-venv/bin/python scripts/bench-charts.py docs/bench/results.json docs/bench

Writes throughput.png (delivered msgs/s per scenario and broker, grouped
bars, plus connections/s and connects/s) and latency-cdf.png (the latency
distribution of each broker's median run, as a CDF and as a tail plot).
Runs in the benchmark venv, which has matplotlib; it reads only the JSON
and imports nothing from raftmq, so the project itself never needs
matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

COLOURS = {"mosquitto": "#3b6ea5", "amqtt": "#c0843a", "raftmq": "#3a9a5b"}
NAMES = {"mosquitto": "Mosquitto", "amqtt": "amqtt", "raftmq": "raftmq"}
MESSAGE_SCENARIOS = ("pairs", "fanin", "fanout")
DPI = 100


def _label(case: dict[str, Any]) -> str:
    """A short axis label: "pairs 10\nQoS 1"."""
    args = case["args"]
    clients = args[args.index("--clients") + 1] if "--clients" in args else ""
    qos = args[args.index("--qos") + 1] if "--qos" in args else "0"
    return f"{case['scenario']} {clients}\nQoS {qos}"


def _median(case: dict[str, Any], broker: str, key: str) -> float | None:
    result = case["brokers"].get(broker)
    return None if result is None else result["median"].get(key)


def _grouped_bars(
    ax: Any, cases: list[dict[str, Any]], brokers: list[str], key: str, ylabel: str
) -> bool:
    """Bars per case and broker; hatched when the broker ran a reduced size. True if any was."""
    width = 0.8 / len(brokers)
    reduced_any = False
    for i, broker in enumerate(brokers):
        xs, heights, hatches = [], [], []
        for x, case in enumerate(cases):
            value = _median(case, broker, key)
            if not value:
                continue
            xs.append(x + (i - (len(brokers) - 1) / 2) * width)
            heights.append(value)
            result = case["brokers"][broker]
            reduced = bool(result.get("reduced"))
            reduced_any |= reduced
            hatches.append("//" if reduced else "")
            if result["clean_runs"] < len(result["runs"]):
                # A rate measured with losses is not a result: say so on the bar.
                ax.annotate(
                    f"{result['clean_runs']}/{len(result['runs'])}\nclean",
                    (xs[-1], value),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color="#b00",
                )
        bars = ax.bar(
            xs, heights, width, label=NAMES.get(broker, broker), color=COLOURS.get(broker)
        )
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_xticks(range(len(cases)), [_label(c) for c in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(axis="y", which="major", alpha=0.3)
    return reduced_any


def throughput_chart(results: dict[str, Any], out: Path) -> None:
    brokers = list(results["brokers"])
    message_cases = [c for c in results["cases"] if c["scenario"] in MESSAGE_SCENARIOS]
    connection_cases = [c for c in results["cases"] if c["scenario"] in ("conns", "connect-rate")]
    widths = [max(1, len(message_cases)), max(1, len(connection_cases))]
    fig, axes = plt.subplots(
        1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": widths}, squeeze=False
    )
    left, right = axes[0]
    reduced = False
    if message_cases:
        reduced |= _grouped_bars(left, message_cases, brokers, "msgs_per_s", "delivered msgs/s")
        left.set_title("Message throughput (median)")
        # Headroom above the tallest bar for the legend.
        left.set_ylim(top=left.get_ylim()[1] * 6)
        left.legend(fontsize=8, ncol=len(brokers), loc="upper left")
    if connection_cases:
        width = 0.8 / len(brokers)
        for i, broker in enumerate(brokers):
            for x, case in enumerate(connection_cases):
                key = "conns_per_s" if case["scenario"] == "conns" else "cycles_per_s"
                value = _median(case, broker, key)
                if not value:
                    continue
                bar = right.bar(
                    x + (i - (len(brokers) - 1) / 2) * width,
                    value,
                    width,
                    color=COLOURS.get(broker),
                    label=NAMES.get(broker, broker) if x == 0 else None,
                )
                if case["brokers"][broker].get("reduced"):
                    bar[0].set_hatch("//")
                    reduced = True
        right.set_xticks(
            range(len(connection_cases)),
            [
                "idle conns\nopened/s" if c["scenario"] == "conns" else "connect +\ndisconnect/s"
                for c in connection_cases
            ],
            fontsize=8,
        )
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        right.set_ylabel("per second")
        right.grid(axis="y", alpha=0.3)
        right.set_title("Connections (median)")
    note = (
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores; {results['generated']}"
    )
    if reduced:
        note += "; hatched: smaller runs (see BENCHMARKS.md)"
    _save(fig, results, note, out)


def _save(fig: Figure, results: dict[str, Any], note: str, out: Path) -> None:
    """Write ``fig`` to ``out`` with its footnote, marked as a smoke run if it is one."""
    if results.get("smoke"):
        note = "SMOKE RUN, figures mean nothing; " + note
    fig.text(0.01, 0.01, note, fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def _median_run_cdf(result: dict[str, Any]) -> list[tuple[float, float]] | None:
    """The CDF of the run whose p99 is the median one."""
    runs = [
        r["report"]
        for r in result["runs"]
        if r["report"] and r["report"].get("latency_cdf_ms") and r["report"].get("latency_ms")
    ]
    if not runs:
        return None
    runs.sort(key=lambda report: report["latency_ms"]["p99"])
    return [tuple(point) for point in runs[len(runs) // 2]["latency_cdf_ms"]]


def latency_chart(results: dict[str, Any], out: Path) -> None:
    case = next((c for c in results["cases"] if c["scenario"] == "latency"), None)
    fig, (cdf_ax, tail_ax) = plt.subplots(1, 2, figsize=(13, 5))
    if case is not None:
        for broker, result in case["brokers"].items():
            points = _median_run_cdf(result)
            if not points:
                continue
            percent = [p for p, _ in points]
            ms = [max(v, 1e-3) for _, v in points]
            label = NAMES.get(broker, broker) + (" (smaller run)" if result.get("reduced") else "")
            colour = COLOURS.get(broker)
            cdf_ax.plot(ms, [p / 100 for p in percent], label=label, color=colour)
            # Tail view: x = 1 / (1 - p), so 90, 99, 99.9, 99.99 are evenly spaced.
            tail = [(p, v) for p, v in zip(percent, ms, strict=True) if p < 100]
            tail_ax.plot(
                [1 / (1 - p / 100) for p, _ in tail],
                [v for _, v in tail],
                label=label,
                color=colour,
            )
        cdf_ax.set_title(f"Latency CDF: {case['title']}")
    cdf_ax.set_xscale("log")
    cdf_ax.set_xlabel("latency (ms)")
    cdf_ax.set_ylabel("fraction of messages delivered within")
    cdf_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    cdf_ax.grid(alpha=0.3)
    if cdf_ax.get_lines():
        cdf_ax.legend(fontsize=8)
    else:
        cdf_ax.set_title("no latency case in this run")
    tail_ax.set_xscale("log")
    tail_ax.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10000]
    tail_ax.set_xticks(ticks, [f"p{100 - 100 / t:g}" for t in ticks])
    tail_ax.set_xlabel("percentile")
    tail_ax.set_ylabel("latency (ms)")
    tail_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    tail_ax.set_title("Tail")
    tail_ax.grid(alpha=0.3, which="both")
    note = f"median run of each broker; {results['generated']}"
    _save(fig, results, note, out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: bench-charts.py RESULTS.json OUT_DIR", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    throughput_chart(results, out / "throughput.png")
    latency_chart(results, out / "latency-cdf.png")
    print(f"wrote {out / 'throughput.png'} and {out / 'latency-cdf.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
