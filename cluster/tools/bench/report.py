"""Turning worker results into the figures a run reports, as JSON or as a table.

The report is a plain dict so that ``--json`` is exactly what the table
shows, and scripts comparing brokers read the same numbers a person does.
A rate is only as good as the delivery behind it: every message figure
comes with lost, duplicate and out-of-order counts, and a rate measured
with losses says so in the table.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

from raftmq.cluster.tools.bench.plan import CONNECTION_SCENARIOS, BenchConfig
from raftmq.cluster.tools.bench.worker import PairResult, WorkerResult

Report = dict[str, Any]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Enough points to draw a latency CDF: every 1 %, then the tail.
CDF_PERCENTILES = (*range(1, 100), 99.5, 99.9, 99.99)
MAX_PROBLEM_ROWS = 20
PROTOCOL_NAMES = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}
_TALLIED = ("expected", "delivered", "lost", "duplicates", "out_of_order")


def _rank(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile ``q`` of sorted samples."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def percentiles_ms(samples_ns: array[int]) -> dict[str, float] | None:
    """Nearest-rank percentiles and the maximum, in milliseconds."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    figures = {f"p{q:g}": _rank(ordered, q) / 1e6 for q in PERCENTILES}
    figures["max"] = ordered[-1] / 1e6
    return {key: round(value, 3) for key, value in figures.items()}


def cdf_ms(samples_ns: array[int]) -> list[tuple[float, float]] | None:
    """(percentile, milliseconds) at every 1 %, 99.5, 99.9, 99.99 and 100 (the maximum).

    A few hundred bytes of JSON that draw the whole latency distribution,
    instead of every sample.
    """
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    points = [(float(q), round(_rank(ordered, q) / 1e6, 4)) for q in CDF_PERCENTILES]
    points.append((100.0, round(ordered[-1] / 1e6, 4)))
    return points


def _latencies(results: Iterable[WorkerResult]) -> array[int]:
    samples: array[int] = array("q")
    for result in results:
        samples.frombytes(result.latencies)
    return samples


def _lost(pair: PairResult, sent: dict[int, int]) -> int:
    """Messages the publisher sent that never reached this subscriber.

    What a stopped run never got to publish is not lost; what was still in
    flight when it stopped is, as far as the run can tell.
    """
    return max(0, min(sent.get(pair.publisher, 0), pair.expected) - pair.received)


def _tally(pairs: list[PairResult], sent: dict[int, int], key: str) -> list[dict[str, int]]:
    """Delivery figures summed per publisher or per subscriber."""
    rows: dict[int, dict[str, int]] = {}
    for pair in pairs:
        index = getattr(pair, key)
        row = rows.setdefault(index, {"index": index, **dict.fromkeys(_TALLIED, 0)})
        row["expected"] += pair.expected
        row["delivered"] += pair.received
        row["lost"] += _lost(pair, sent)
        row["duplicates"] += pair.duplicates
        row["out_of_order"] += pair.out_of_order
    return [rows[i] for i in sorted(rows)]


def build_report(
    cfg: BenchConfig,
    results: list[WorkerResult],
    *,
    broker: str,
    processes: int,
    stopped_by: str,
    errors: list[str],
    rss: tuple[int, int] | None = None,
) -> Report:
    """The figures of a run.

    ``stopped_by`` is what ended it (``Run._drive``); only "completion" is a
    complete run, and "drain" means publishing ended but messages never came.
    """
    report: Report = {
        "scenario": cfg.scenario,
        "broker": broker,
        "protocol": cfg.protocol,
        "clients": cfg.clients,
        "processes": processes,
        "stopped_by": stopped_by,
        "complete": stopped_by == "completion",
        "errors": errors + [e for r in results for e in r.errors],
        "dropped_connections": sum(r.dropped for r in results),
    }
    if cfg.scenario == "conns":
        _conns(report, cfg, results, rss)
    elif cfg.scenario == "connect-rate":
        _connect_rate(report, cfg, results)
    else:
        _messages(report, cfg, results)
    if cfg.scenario in CONNECTION_SCENARIOS:
        report["per_target"] = _per_target(results)
    report["ok"] = report["complete"] and not report["errors"] and not report.get("lost")
    for key in ("duplicates", "out_of_order", "unexpected", "rejected", "dropped_connections"):
        report["ok"] = report["ok"] and not report.get(key)
    return report


def _messages(report: Report, cfg: BenchConfig, results: list[WorkerResult]) -> None:
    pairs = [pair for result in results for pair in result.pairs]
    sent = {pub: n for result in results for pub, n in result.sent.items()}
    expected = sum(p.expected for p in pairs)
    delivered = sum(p.received for p in pairs)
    lost = sum(_lost(p, sent) for p in pairs)
    first = min((r.first_publish_ns for r in results if r.first_publish_ns), default=0)
    last_delivery = max((r.last_delivery_ns for r in results), default=0)
    last_publish = max((r.last_publish_ns for r in results), default=0)
    published = sum(r.progress.published for r in results)
    probes = sum(r.probes_sent for r in results)
    latencies = _latencies(results)
    elapsed = _span_s(first, last_delivery)
    all_finished = all(r.last_publish_ns for r in results if r.sent)
    publish_time = _span_s(first, last_publish) if all_finished else 0.0
    report.update(
        qos=cfg.qos,
        payload=cfg.payload,
        publishers=len({p.publisher for p in pairs}),
        subscribers=len({p.subscriber for p in pairs}),
        rate_requested=cfg.total_rate or None,
        published=published,
        expected=expected,
        delivered=delivered,
        lost=lost,
        unpublished=expected - delivered - lost,
        duplicates=sum(p.duplicates for p in pairs),
        out_of_order=sum(p.out_of_order for p in pairs),
        unexpected=sum(r.unexpected for r in results),
        rejected=sum(r.rejected for r in results),
        elapsed_s=round(elapsed, 6),
        msgs_per_s=round(delivered / elapsed) if elapsed else 0,
        publish_msgs_per_s=round(published / publish_time) if publish_time else None,
        latency_ms=percentiles_ms(latencies),
        latency_samples=len(latencies),
        latency_cdf_ms=cdf_ms(latencies) if cfg.scenario == "latency" else None,
        probes_sent=probes,
        route_wait_ms=round(max(r.route_wait_ns for r in results) / 1e6, 3) if probes else None,
        per_publisher=_tally(pairs, sent, "publisher"),
        per_subscriber=_tally(pairs, sent, "subscriber"),
    )


def _per_target(results: list[WorkerResult]) -> dict[str, int]:
    """Connections (conns) or cycles (connect-rate) per broker address."""
    totals: dict[str, int] = {}
    for result in results:
        for address, count in result.per_target.items():
            totals[address] = totals.get(address, 0) + count
    return totals


def _session_s(results: list[WorkerResult]) -> float:
    """Seconds from the first worker's ``go`` to the last connection made or cycle ended."""
    start = min((r.start_ns for r in results if r.start_ns), default=0)
    end = max((r.end_ns for r in results), default=0)
    return _span_s(start, end)


def _span_s(start_ns: int, end_ns: int) -> float:
    """Seconds between two monotonic stamps; 0 when either is missing or they are out of order."""
    return (end_ns - start_ns) / 1e9 if start_ns and end_ns > start_ns else 0.0


def _conns(
    report: Report, cfg: BenchConfig, results: list[WorkerResult], rss: tuple[int, int] | None
) -> None:
    connected = sum(r.progress.connected for r in results)
    elapsed = _session_s(results)
    report.update(
        connected=connected,
        failed=sum(r.progress.errors for r in results),
        elapsed_s=round(elapsed, 6),
        conns_per_s=round(connected / elapsed) if elapsed else 0,
        broker_rss_before=rss[0] if rss else None,
        broker_rss_after=rss[1] if rss else None,
        broker_rss_per_conn=round((rss[1] - rss[0]) / connected) if rss and connected else None,
    )
    report["complete"] = report["complete"] and connected == cfg.clients


def _connect_rate(report: Report, cfg: BenchConfig, results: list[WorkerResult]) -> None:
    cycles = sum(r.progress.cycles for r in results)
    elapsed = _session_s(results)
    report.update(
        cycles=cycles,
        failed=sum(r.progress.errors for r in results),
        elapsed_s=round(elapsed, 6),
        cycles_per_s=round(cycles / elapsed) if elapsed else 0,
        handshake_ms=percentiles_ms(_latencies(results)),
    )


# -- the table ---------------------------------------------------------------------


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,}"


def _headline(cfg: BenchConfig, report: Report) -> str:
    if cfg.scenario in ("conns", "connect-rate"):
        what = f"{cfg.clients} clients"
    else:
        what = (
            f"{report['publishers']} pub -> {report['subscribers']} sub, QoS {cfg.qos}, "
            f"{cfg.payload} B"
        )
    return (
        f"raftmq bench {cfg.scenario}: {what}, {PROTOCOL_NAMES[cfg.protocol]}, "
        f"{report['processes']} process(es), broker {report['broker']}"
    )


def render_table(cfg: BenchConfig, report: Report) -> str:
    rows: list[tuple[str, str]] = []
    if cfg.scenario == "conns":
        rows += [
            ("connections", f"{_n(report['connected'])} of {_n(cfg.clients)}"),
            ("failed", _n(report["failed"])),
            ("time", f"{report['elapsed_s']:.3f} s"),
            ("connections/s", _n(report["conns_per_s"])),
        ]
        if report["broker_rss_per_conn"] is not None:
            rows += [
                ("broker RSS before", f"{report['broker_rss_before'] / 2**20:,.1f} MiB"),
                ("broker RSS after", f"{report['broker_rss_after'] / 2**20:,.1f} MiB"),
                ("broker RSS/connection", f"{_n(report['broker_rss_per_conn'])} B"),
            ]
    elif cfg.scenario == "connect-rate":
        rows += [
            ("cycles", _n(report["cycles"])),
            ("failed", _n(report["failed"])),
            ("time", f"{report['elapsed_s']:.3f} s"),
            ("cycles/s", _n(report["cycles_per_s"])),
        ]
        for key, value in (report["handshake_ms"] or {}).items():
            rows.append((f"handshake {key}", f"{value:.3f} ms"))
    else:
        rate = _n(report["msgs_per_s"])
        if report["lost"]:
            rate += f"  WITH LOSSES ({_n(report['lost'])} lost)"
        rows += [
            ("delivered msgs/s", rate),
            ("published msgs/s", _n(report["publish_msgs_per_s"])),
            ("delivered", f"{_n(report['delivered'])} of {_n(report['expected'])}"),
            ("lost", _n(report["lost"])),
            ("duplicates", _n(report["duplicates"])),
            ("out of order", _n(report["out_of_order"])),
            ("time", f"{report['elapsed_s']:.3f} s (first publish to last delivery)"),
        ]
        if report["unpublished"]:
            rows.insert(4, ("never published", _n(report["unpublished"])))
        if report["rate_requested"]:
            rows.insert(1, ("requested msgs/s", f"{report['rate_requested']:,.0f}"))
        for key in ("unexpected", "rejected"):
            if report[key]:
                rows.append((key, _n(report[key])))
        if report["probes_sent"]:
            rows.append(
                (
                    "route probes",
                    f"{_n(report['probes_sent'])} sent, all routes in "
                    f"{report['route_wait_ms']:.1f} ms (not counted)",
                )
            )
        for key, value in (report["latency_ms"] or {}).items():
            rows.append((f"latency {key}", f"{value:.3f} ms"))
    if len(report.get("per_target", ())) > 1:
        rows += [(f"  at {address}", _n(count)) for address, count in report["per_target"].items()]
    if report["dropped_connections"]:
        rows.append(("dropped connections", _n(report["dropped_connections"])))
    if not report["complete"]:
        rows.append(("INCOMPLETE", f"stopped by {report['stopped_by']}"))
    width = max(len(label) for label, _ in rows)
    lines = [_headline(cfg, report), ""]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += _problem_rows(report)
    if report["errors"]:
        lines += ["", "errors:"] + [f"  {e}" for e in report["errors"]]
    return "\n".join(lines)


def _problem_rows(report: Report) -> list[str]:
    """Per-client delivery figures, for the clients where something went wrong."""
    lines: list[str] = []
    for side in ("publisher", "subscriber"):
        bad = [
            row
            for row in report.get(f"per_{side}", [])
            if row["lost"] or row["duplicates"] or row["out_of_order"]
        ]
        if not bad:
            continue
        lines += ["", f"  {side:<10}  {'expected':>10}  {'lost':>8}  {'dup':>8}  {'order':>8}"]
        lines += [
            f"  {row['index']:<10}  {row['expected']:>10,}  {row['lost']:>8,}  "
            f"{row['duplicates']:>8,}  {row['out_of_order']:>8,}"
            for row in bad[:MAX_PROBLEM_ROWS]
        ]
        if len(bad) > MAX_PROBLEM_ROWS:
            lines.append(f"  ... and {len(bad) - MAX_PROBLEM_ROWS} more")
    return lines
