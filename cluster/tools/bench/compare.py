"""``bench compare``: the same bench runs against several brokers, side by side.

``scripts/bench-compare.sh`` installs what is missing and calls this::

    python -m raftmq.cluster.tools.bench.compare [--brokers mosquitto,amqtt,raftmq] [--runs 3] \\
        [bench options...]                 # one scenario, a table on stdout
    python -m raftmq.cluster.tools.bench.compare --all [--smoke] [--only CASE,...]
                                           # the whole table -> results JSON + BENCHMARKS.md

The first broker named is the baseline of the ratios. A median hides a bad
run, so the table also shows every run's figure and how many runs were
clean (complete, nothing lost, duplicated or reordered): a fast run that
lost messages is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raftmq.cluster.tools.bench.brokers import Amqtt, BrokerKind, Mosquitto, Raftmq
from raftmq.cluster.tools.bench.machine import load_average, machine_details, port_range
from raftmq.cluster.tools.bench.markdown import render_markdown
from raftmq.cluster.tools.bench.suite import (
    BrokerResult,
    Case,
    Suite,
    fmt_number,
    full_cases,
    headline,
    metrics_for,
    problems,
    reduction_note,
)

REPO = Path(__file__).resolve().parents[3]
CONNS_TARGET = 20_000
# Descriptors a broker or generator process needs besides its connections.
SPARE_DESCRIPTORS = 64
# bench --timeout of one run: generous for the brokers measured at full size,
# short for amqtt, which gets smaller runs when it cannot finish in time.
FULL_TIMEOUT = 300.0
SLOW_TIMEOUT = 10.0
KNOWN_BROKERS = ("mosquitto", "amqtt", "raftmq")


def make_brokers(names: Sequence[str], amqtt: str, slow_timeout: float) -> list[BrokerKind]:
    kinds: dict[str, BrokerKind] = {
        "mosquitto": Mosquitto(
            "mosquitto", FULL_TIMEOUT, extra_config=os.environ.get("MOSQUITTO_CONF_EXTRA", "")
        ),
        "amqtt": Amqtt("amqtt", slow_timeout, reducible=True, executable=amqtt),
        "raftmq": Raftmq(
            "raftmq",
            FULL_TIMEOUT,
            extra_args=tuple(shlex.split(os.environ.get("RAFTMQ_NODE_ARGS", ""))),
        ),
    }
    return [kinds[name] for name in names]


def conns_count() -> tuple[int, str | None]:
    """How many idle connections ``conns`` can open here, and why, when fewer than 20,000."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = [(hard - SPARE_DESCRIPTORS, f"the open-files limit here is {hard:,} per process")]
    ports = port_range()
    if ports:
        limits.append(
            (ports[1] - ports[0] + 1 - 1000, f"the ephemeral port range is {ports[0]}-{ports[1]}")
        )
    count, why = min(limits)
    if count >= CONNS_TARGET:
        return CONNS_TARGET, None
    return count, (
        f"conns opens {count:,} connections, not {CONNS_TARGET:,}: {why} "
        "(the broker and the generator each hold one descriptor per connection)"
    )


# -- one scenario ----------------------------------------------------------------------


# The option a reduced run shrinks, per scenario.
SIZE_OPTIONS = {
    "pairs": "--messages",
    "fanin": "--messages",
    "fanout": "--messages",
    "latency": "--duration",
    "conns": "--clients",
}


def custom_case(bench_args: list[str]) -> Case:
    """A case from a bench command line; only a size given on it can be reduced."""
    scenario = bench_args[0]
    size_option = SIZE_OPTIONS.get(scenario)
    if size_option not in bench_args:
        size_option = None
    duration = 0.0
    if scenario in ("latency", "connect-rate"):
        duration = 10.0
        if "--duration" in bench_args:
            duration = float(bench_args[bench_args.index("--duration") + 1])
    return Case(scenario, " ".join(bench_args), tuple(bench_args), size_option, duration)


def render_console(case: Case, results: dict[str, BrokerResult]) -> str:
    """The comparison of one case as a plain-text table."""
    names = list(results)
    metrics = metrics_for(case.scenario)
    base = results[names[0]]
    header = ["broker"]
    for metric in metrics:
        header += [metric.label, f"x {names[0]}"]
    header += [f"runs ({metrics[0].label})", "clean", "lost", "dup", "order"]
    rows = [header]
    for name in names:
        result = results[name]
        row = [name]
        for metric in metrics:
            value, reference = result.median(metric), base.median(metric)
            ratio = value / reference if value is not None and reference else None
            row += [_cell(value), "-" if ratio is None else f"{ratio:.2f}"]
        row.append(" ".join(_run_cell(metrics[0], run.report) for run in result.runs))
        row += [
            f"{sum(r.clean for r in result.runs)}/{len(result.runs)}",
            f"{result.total('lost'):,}",
            f"{result.total('duplicates'):,}",
            f"{result.total('out_of_order'):,}",
        ]
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
    lines.append(f"(medians; {better}; clean = complete, nothing lost, duplicated or reordered)")
    for name, result in results.items():
        note = reduction_note(case.title, name, result.to_json(case))
        if note:
            lines.append(note)
        for run in result.runs:
            if not run.clean:
                why = run.error if run.report is None else problems(run.report)
                lines.append(f"{name} run {run.round}: {why}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else fmt_number(value)


def _run_cell(metric: Any, report: dict[str, Any] | None) -> str:
    """One run's figure; "!" marks a run that was not clean, explained under the table."""
    if report is None:
        return "failed"
    value = metric.read(report)
    return _cell(value) + ("" if report.get("ok") else "!")


# -- the whole table -------------------------------------------------------------------


def run_all(args: argparse.Namespace, suite: Suite, command: str) -> dict[str, Any]:
    started = time.monotonic()
    conns, conns_note = conns_count()
    cases = full_cases(conns, smoke=args.smoke)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"bench compare: unknown case(s) {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.name in wanted]
    results: dict[str, Any] = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "smoke": args.smoke,
        "runs_per_case": args.runs,
        "machine": machine_details(REPO),
        "load_average_start": load_average(),
        "brokers": {
            b.name: {"version": b.version(), "config": b.config, "timeout": b.timeout}
            for b in suite.brokers
        },
        "baseline": suite.brokers[0].name,
        "notes": [conns_note]
        if conns_note and not args.smoke and any(c.scenario == "conns" for c in cases)
        else [],
        "cases": [],
    }
    for index, case in enumerate(cases, 1):
        label = f"[{index}/{len(cases)}] "
        suite.say(f"{label}{case.title}")
        outcome = suite.run_case(case, label)
        results["cases"].append(
            {
                "name": case.name,
                "title": case.title,
                "scenario": case.scenario,
                "args": list(case.args),
                "size_option": case.size_option,
                "headline": headline(case.scenario).key,
                "brokers": {name: r.to_json(case) for name, r in outcome.items()},
            }
        )
        results["load_average_end"] = load_average()
        results["duration_s"] = round(time.monotonic() - started)
        _write(args.results, json.dumps(results, indent=1) + "\n")
    _write(args.markdown, render_markdown(results, charts_dir=args.charts_dir, base=args.markdown))
    return results


def draw_charts(args: argparse.Namespace) -> bool:
    """Run the chart script in the Python that has matplotlib; False if it failed."""
    if not args.charts_python:
        print("no --charts-python: charts not drawn", file=sys.stderr)
        return True
    script = REPO / "scripts" / "bench-charts.py"
    command = [args.charts_python, str(script), str(args.results), str(args.charts_dir)]
    try:
        subprocess.run(command, check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"bench compare: drawing the charts failed: {exc}", file=sys.stderr)
        return False
    return True


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _groups_recorder(path: Path | None) -> Any:
    def record(pgid: int) -> None:
        if path is not None:
            with path.open("a") as f:
                f.write(f"{pgid}\n")

    return record


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="bench-compare",
        description="Run raftmq bench against several brokers, interleaved, median of N.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--brokers",
        default="mosquitto,amqtt,raftmq",
        help="comma-separated, the first is the baseline (default %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per broker (default 3)")
    parser.add_argument("--amqtt", default="amqtt", help="the amqtt executable")
    parser.add_argument(
        "--slow-timeout",
        type=float,
        default=SLOW_TIMEOUT,
        help="seconds amqtt gets for a full-size run before its runs are made smaller "
        "(default %(default)s)",
    )
    parser.add_argument("--all", action="store_true", help="run issue 3's whole table")
    parser.add_argument("--smoke", action="store_true", help="with --all: tiny sizes, to test")
    parser.add_argument("--only", help="with --all: only these cases (comma-separated names)")
    parser.add_argument("--results", type=Path, default=REPO / "docs/bench/results.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--charts-dir", type=Path, default=REPO / "docs/bench")
    parser.add_argument("--groups-file", type=Path, help="append every process group started")
    parser.add_argument(
        "--charts-python",
        help="with --all: a Python with matplotlib, to run scripts/bench-charts.py",
    )
    parser.add_argument("--command", help="the command line to print in BENCHMARKS.md")
    args, bench_args = parser.parse_known_args(argv)
    names = [n for n in args.brokers.split(",") if n]
    unknown = [n for n in names if n not in KNOWN_BROKERS]
    if unknown or not names:
        parser.error(f"--brokers: unknown {', '.join(unknown)}; choose from {KNOWN_BROKERS}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.all and not bench_args:
        bench_args = ["pairs", "--clients", "10", "--messages", "10000", "--qos", "0"]
    if args.all and bench_args:
        parser.error(f"--all runs its own scenarios; unexpected {' '.join(bench_args)}")
    return args, bench_args


def main(argv: Sequence[str]) -> int:
    args, bench_args = parse(argv)
    names = [n for n in args.brokers.split(",") if n]
    brokers = make_brokers(names, args.amqtt, args.slow_timeout)
    with tempfile.TemporaryDirectory(prefix="raftmq-bench-compare-") as workdir:
        suite = Suite(brokers, args.runs, Path(workdir), _groups_recorder(args.groups_file))
        if args.all:
            module = "python -m raftmq.cluster.tools.bench.compare "
            command = args.command or module + shlex.join(argv)
            results = run_all(args, suite, command)
            print(f"wrote {args.markdown} and {args.results}")
            charts_ok = draw_charts(args)
            clean = all(
                b["clean_runs"] == len(b["runs"])
                for c in results["cases"]
                for b in c["brokers"].values()
            )
            return 0 if clean and charts_ok else 1
        case = custom_case(bench_args)
        if case.scenario == "conns":
            conns_count()  # raises the soft open-files limit for the brokers started
        results_by_broker = suite.run_case(case)
        print(f"bench {' '.join(bench_args)}  ({args.runs} runs per broker, interleaved)")
        print(render_console(case, results_by_broker))
        clean = all(r.clean for res in results_by_broker.values() for r in res.runs)
        return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
