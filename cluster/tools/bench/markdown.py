"""BENCHMARKS.md, written from the results of ``bench compare --all`` and nothing else.

Everything on the page comes from the results JSON (committed next to the
charts), so the page can be checked against the raw runs, and every
reduction, cap or unclean run is written out rather than left to a median.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raftmq.cluster.tools.bench.suite import problems, reduction_note
from raftmq.cluster.tools.bench.targets import MET, NOT_MET, evaluate

Results = dict[str, Any]

CHARTS = (
    ("throughput.png", "Throughput per scenario and broker"),
    ("latency-cdf.png", "Latency CDF at 5,000 msgs/s, QoS 1"),
)
NAMES = {"mosquitto": "Mosquitto", "amqtt": "amqtt", "raftmq": "raftmq"}
MESSAGE_SCENARIOS = ("pairs", "fanin", "fanout")


def _name(broker: str) -> str:
    return NAMES.get(broker, broker)


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or not theirs:
        return "-"
    return f"{mine / theirs:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _median(case: dict[str, Any], broker: str, key: str) -> float | None:
    result = case["brokers"].get(broker)
    if not result:
        return None
    value = result["median"].get(key)
    return None if value is None else float(value)


def _size_note(case: dict[str, Any], broker: str) -> str:
    result = case["brokers"][broker]
    if not result.get("reduced"):
        return ""
    return f" ({case['size_option']} {result['size']:g})"


def _delivery(result: dict[str, Any]) -> list[str]:
    return [
        f"{result['clean_runs']}/{len(result['runs'])}",
        _n(result["lost"]),
        _n(result["duplicates"]),
        _n(result["out_of_order"]),
    ]


def _runs(result: dict[str, Any], key: str, digits: int = 0) -> str:
    cells = []
    for run in result["runs"]:
        report = run["report"]
        if report is None:
            cells.append("failed")
            continue
        value: Any = report
        for part in key.split(".", 1) if key.startswith("latency_ms.") else [key]:
            value = (value or {}).get(part)
        cells.append(_n(value, digits) + ("" if report.get("ok") else "!"))
    return " ".join(cells)


def render_markdown(results: Results, charts_dir: Path, base: Path) -> str:
    """The whole page; chart links are relative to ``base`` (the page's own path)."""
    brokers = list(results["brokers"])
    cases = results["cases"]
    lines = _intro(results) + _machine(results) + _targets(results)
    message_cases = [c for c in cases if c["scenario"] in MESSAGE_SCENARIOS]
    if message_cases:
        lines += _throughput(message_cases, brokers)
    for case in cases:
        if case["scenario"] == "latency":
            lines += _latency(case, brokers)
        elif case["scenario"] == "conns":
            lines += _conns(case, brokers)
        elif case["scenario"] == "connect-rate":
            lines += _connect_rate(case, brokers)
    lines += _exceptions(results)
    rel = os.path.relpath(charts_dir, base.resolve().parent)
    lines += ["## Charts", ""]
    for file, title in CHARTS:
        lines += [f"![{title}]({Path(rel, file).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _intro(results: Results) -> list[str]:
    minutes = results.get("duration_s", 0) / 60
    names = " and ".join(_name(b) for b in results["brokers"] if b != "raftmq")
    lines = [
        "# Benchmarks",
        "",
        f"One raftmq node side by side with {names}, measured in the same run on the "
        f"same machine by `raftmq bench`. Generated on {results['generated']} "
        f"(the run took {minutes:.0f} min) by:",
        "",
        "```sh",
        results["command"],
        "```",
        "",
    ]
    if results.get("smoke"):
        lines += [
            "**Smoke run: every case at a tiny size to check the pipeline. "
            "These figures mean nothing.**",
            "",
        ]
    lines += [
        f"Every figure is the median of {results['runs_per_case']} runs. Each run starts its "
        "broker fresh on a free loopback port and stops it afterwards; runs alternate between "
        "the brokers (A B C A B C ...) so that load elsewhere on the machine hurts them alike. "
        "The generator (`raftmq bench`, raw asyncio clients on uvloop, MQTT 3.1.1, 64-byte "
        "payloads, QoS 1/2 publishers keeping 20 messages in flight) checks every message off: "
        "lost, duplicated and out-of-order deliveries are counted per run, and a run is "
        "*clean* when it completed with none. In the run lists, `!` marks a run that was "
        "not clean. Latency is measured from the time the pacer released a message, so a "
        "broker that falls behind the rate shows it as latency. A ratio `x B` is the row's "
        "median over broker B's: above 1 is better for rates, below 1 for latencies, times "
        "and memory.",
        "",
        "Brokers:",
        "",
    ]
    for broker, info in results["brokers"].items():
        lines.append(f"- **{_name(broker)} {info['version']}**: {info['config']}.")
    return [*lines, ""]


def _machine(results: Results) -> list[str]:
    m = results["machine"]
    versions = {b: info["version"] for b, info in results["brokers"].items()}
    rows = [
        ["CPU", f"{m['cpu']}, {m['cores']} cores"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["kernel", m["kernel"]],
        ["Python", f"{m['python']}, uvloop {m['uvloop']}"],
    ]
    rows += [[_name(b), v] for b, v in versions.items()]
    rows += [
        ["raftmq commit", m["raftmq_revision"]],
        ["open files limit", _n(m["open_files_limit"])],
        [
            "load average (1, 5, 15 min)",
            f"{results['load_average_start']} at the start, "
            f"{results.get('load_average_end', '-')} at the end",
        ],
    ]
    return ["## Machine", "", *_table(["", ""], rows)]


def _targets(results: Results) -> list[str]:
    targets = evaluate(results)
    met = sum(t.status == MET for t in targets)
    missed = sum(t.status == NOT_MET for t in targets)
    lines = [
        "## Targets (issue 3)",
        "",
        f"{met} met, {missed} not met, {len(targets) - met - missed} not measured.",
        "",
    ]
    rows = [[t.target, t.measured, f"**{t.status}**"] for t in targets]
    return lines + _table(["target", "measured", ""], rows)


def _throughput(cases: list[dict[str, Any]], brokers: list[str]) -> list[str]:
    base = brokers[0]
    compare_to = [b for b in brokers if b != "raftmq"]
    header = ["scenario", "broker", "msgs/s (median)"]
    header += [f"x {_name(b)}" for b in compare_to]
    header += ["runs (msgs/s)", "clean", "lost", "dup", "order"]
    rows = []
    for case in cases:
        for broker in brokers:
            result = case["brokers"].get(broker)
            if result is None:
                continue
            mine = _median(case, broker, "msgs_per_s")
            ratios = [
                "" if other == broker else _ratio(mine, _median(case, other, "msgs_per_s"))
                for other in compare_to
            ]
            rows.append(
                [
                    case["title"] if broker == base else "",
                    _name(broker) + _size_note(case, broker),
                    _n(mine),
                    *ratios,
                    _runs(result, "msgs_per_s"),
                    *_delivery(result),
                ]
            )
    return ["## Throughput", "", "Delivered messages per second.", "", *_table(header, rows)]


def _latency(case: dict[str, Any], brokers: list[str]) -> list[str]:
    keys = ("p50", "p90", "p99", "p99.9", "max")
    header = ["broker", *(f"{k} ms" for k in keys), "p99 x Mosquitto", "runs (p99 ms)"]
    header += ["clean", "lost", "dup", "order"]
    rows = []
    for broker in brokers:
        result = case["brokers"].get(broker)
        if result is None:
            continue
        p99 = _median(case, broker, "latency_ms.p99")
        rows.append(
            [
                _name(broker) + _size_note(case, broker),
                *(_n(_median(case, broker, f"latency_ms.{k}"), 2) for k in keys),
                _ratio(p99, _median(case, "mosquitto", "latency_ms.p99")),
                _runs(result, "latency_ms.p99", 2),
                *_delivery(result),
            ]
        )
    return [
        "## Latency",
        "",
        f"{case['title']}; from the pacer's release of a message to its delivery.",
        "",
        *_table(header, rows),
    ]


def _conns(case: dict[str, Any], brokers: list[str]) -> list[str]:
    header = ["broker", "connections", "time s", "conns/s", "RSS per connection"]
    header += ["time x Mosquitto", "runs (s)", "clean", "failed"]
    rows = []
    for broker in brokers:
        result = case["brokers"].get(broker)
        if result is None:
            continue
        elapsed = _median(case, broker, "elapsed_s")
        connected = [r["report"]["connected"] for r in result["runs"] if r["report"]]
        rows.append(
            [
                _name(broker),
                _n(max(connected)) if connected else "-",
                _n(elapsed, 2),
                _n(_median(case, broker, "conns_per_s")),
                _n(_median(case, broker, "broker_rss_per_conn")) + " B",
                _ratio(elapsed, _median(case, "mosquitto", "elapsed_s")),
                _runs(result, "elapsed_s", 2),
                f"{result['clean_runs']}/{len(result['runs'])}",
                _n(result["failed"]),
            ]
        )
    return [
        "## Connections",
        "",
        f"{case['title']}: time from the start to the last CONNACK of idle connections "
        "(keep alive 600 s, at most 64 handshakes in flight per generator process), and the "
        "broker's RSS growth divided by the connections.",
        "",
        *_table(header, rows),
    ]


def _connect_rate(case: dict[str, Any], brokers: list[str]) -> list[str]:
    header = ["broker", "connects/s", "x Mosquitto", "runs", "clean", "failed"]
    rows = []
    for broker in brokers:
        result = case["brokers"].get(broker)
        if result is None:
            continue
        rate = _median(case, broker, "cycles_per_s")
        rows.append(
            [
                _name(broker),
                _n(rate),
                _ratio(rate, _median(case, "mosquitto", "cycles_per_s")),
                _runs(result, "cycles_per_s"),
                f"{result['clean_runs']}/{len(result['runs'])}",
                _n(result["failed"]),
            ]
        )
    return [
        "## Connect rate",
        "",
        f"{case['title']}: CONNECT, CONNACK and DISCONNECT on a fresh TCP connection, "
        "again and again.",
        "",
        *_table(header, rows),
    ]


def _exceptions(results: Results) -> list[str]:
    """Reductions, caps and unclean runs, each said in words."""
    items = list(results.get("notes", []))
    for case in results["cases"]:
        for broker, result in case["brokers"].items():
            note = reduction_note(case["title"], _name(broker), result)
            if note:
                items.append(note)
            for run in result["runs"]:
                if run["report"] is None:
                    items.append(
                        f"{_name(broker)}, {case['title']}, run {run['round']}: {run['error']}"
                    )
                elif not run["report"].get("ok"):
                    items.append(
                        f"{_name(broker)}, {case['title']}, run {run['round']}: not clean: "
                        + problems(run["report"])
                    )
    if not items:
        return []
    return [
        "## Smaller runs, caps and runs that were not clean",
        "",
        *(f"- {i}" for i in items),
        "",
    ]
