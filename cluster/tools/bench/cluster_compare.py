"""``bench-cluster``: cross-node and same-node figures of a 3-node cluster, beside Mosquitto.

``scripts/bench-cluster.sh`` installs what is missing and calls this::

    python -m raftmq.cluster.tools.bench.cluster_compare [--runs 3] [--json FILE] [--smoke]

Three deployments, each started fresh for every run on loopback: Mosquitto,
one ``raftmq node``, and a ``raftmq cluster up --nodes 3``. Each case runs
with the same ``raftmq bench`` arguments everywhere; only where the clients
connect differs (a *placement*):

- ``pairs`` and ``latency``, QoS 1: on Mosquitto and the single node, all
  clients on the one broker; in the cluster, publishers and subscribers on
  node 1 (same node), then publishers on node 1 and subscribers on node 2
  (cross-node, which ``raftmq bench`` starts only once probes show the
  route reached node 1).
- ``connect-rate``: the one broker; node 1 of the cluster alone; and the
  clients round-robin over the three nodes (every CONNECT commits a claim
  through Raft, so this is the rate the cluster can claim).

The machine is shared, so every figure is stated as a ratio to Mosquitto
measured in the same run, and runs are interleaved: round after round, each
case, each placement (A B C D A B C D ...), so a burst of load elsewhere
hurts all alike. The headline of a placement is the median of its runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raftmq.cluster.tools.bench.brokers import (
    BrokerStartError,
    Mosquitto,
    Raftmq,
    RunningBroker,
    RunningCluster,
    start_broker,
    start_cluster,
)
from raftmq.cluster.tools.bench.compare import REPO
from raftmq.cluster.tools.bench.machine import load_average, machine_details
from raftmq.cluster.tools.bench.plan import Address, format_address
from raftmq.cluster.tools.bench.suite import (
    BrokerResult,
    Case,
    Metric,
    RunRecord,
    bench_then_stop,
    describe,
    fmt_number,
    headline,
    problems,
)

CLUSTER_NODES = 3
# bench --timeout of one run, beyond a case's own duration.
RUN_TIMEOUT = 180.0
BASELINE = "mosquitto"

BROKERS = {
    "mosquitto": Mosquitto("mosquitto", RUN_TIMEOUT),
    "raftmq": Raftmq("raftmq", RUN_TIMEOUT),
}

# Where the clients of a case connect, given the deployment's node addresses.
SINGLE, CROSS, SPREAD = "single", "cross", "spread"


@dataclass(frozen=True, slots=True)
class Placement:
    key: str
    label: str
    deployment: str  # "mosquitto", "raftmq" or "cluster"
    where: str  # SINGLE (node 1 only), CROSS (publishers node 1, subscribers node 2), SPREAD

    def address_args(self, addresses: list[Address]) -> list[str]:
        first = addresses[0]
        args = ["--host", first[0], "--port", str(first[1])]
        if self.where == CROSS:
            args += ["--sub-host", addresses[1][0], "--sub-port", str(addresses[1][1])]
        elif self.where == SPREAD:
            args = [arg for a in addresses for arg in ("--target", format_address(a))]
        return args


MOSQUITTO = Placement("mosquitto", "Mosquitto", "mosquitto", SINGLE)
RAFTMQ_NODE = Placement("raftmq", "raftmq, 1 node (no cluster)", "raftmq", SINGLE)
SAME_NODE = Placement("cluster-same", "cluster: pub n1 -> sub n1", "cluster", SINGLE)
CROSS_NODE = Placement("cluster-cross", "cluster: pub n1 -> sub n2", "cluster", CROSS)
ONE_NODE = Placement("cluster-one", "cluster: all on n1", "cluster", SINGLE)
ALL_NODES = Placement("cluster-spread", "cluster: round-robin n1, n2, n3", "cluster", SPREAD)
MESSAGE_PLACEMENTS = (MOSQUITTO, RAFTMQ_NODE, SAME_NODE, CROSS_NODE)
CONNECT_PLACEMENTS = (MOSQUITTO, RAFTMQ_NODE, ONE_NODE, ALL_NODES)


@dataclass(frozen=True, slots=True)
class ClusterCase:
    case: Case
    placements: tuple[Placement, ...]


def cluster_cases(smoke: bool = False) -> list[ClusterCase]:
    """The cases; ``smoke`` runs each at a size that only checks the pipeline."""
    clients, messages, rate, seconds, connecting = (
        (2, 200, 200, 1, 4) if smoke else (10, 5000, 2000, 10, 50)
    )
    pairs = Case(
        "pairs-q1",
        f"pairs {clients} -> {clients}, {messages:,} msgs each, QoS 1",
        tuple(f"pairs --clients {clients} --messages {messages} --qos 1".split()),
    )
    latency = Case(
        "latency-q1",
        f"latency, {clients} pairs, {rate:,} msgs/s in total, QoS 1, {seconds} s",
        tuple(f"latency --clients {clients} --rate {rate} --qos 1 --duration {seconds}".split()),
        duration=seconds,
    )
    connect = Case(
        "connect-rate",
        f"connect-rate, {connecting} clients, {seconds} s",
        tuple(f"connect-rate --clients {connecting} --duration {seconds}".split()),
        duration=seconds,
    )
    return [
        ClusterCase(pairs, MESSAGE_PLACEMENTS),
        ClusterCase(latency, MESSAGE_PLACEMENTS),
        ClusterCase(connect, CONNECT_PLACEMENTS),
    ]


# -- running -----------------------------------------------------------------------------


Deployment = RunningBroker | RunningCluster


def start_deployment(name: str, workdir: Path, on_group: Callable[[int], None]) -> Deployment:
    if name == "cluster":
        return start_cluster(CLUSTER_NODES, workdir, on_group)
    return start_broker(BROKERS[name], workdir, on_group)


def node_addresses(deployment: Deployment) -> list[Address]:
    if isinstance(deployment, RunningCluster):
        return deployment.addresses
    return [("127.0.0.1", deployment.port)]


class ClusterSuite:
    """Runs every case at every placement, interleaved, each run on a fresh deployment."""

    def __init__(
        self, runs: int, workdir: Path, on_group: Callable[[int], None], log: Any = sys.stderr
    ) -> None:
        self.runs = runs
        self.workdir = workdir
        self.on_group = on_group
        self.log = log

    def say(self, message: str) -> None:
        print(f"bench-cluster: {message}", file=self.log, flush=True)

    def run(self, cases: list[ClusterCase]) -> dict[str, dict[str, BrokerResult]]:
        results = {
            c.case.name: {
                p.key: BrokerResult(None, RUN_TIMEOUT + c.case.duration) for p in c.placements
            }
            for c in cases
        }
        for round_ in range(1, self.runs + 1):
            for cluster_case in cases:
                for placement in cluster_case.placements:
                    run = self._run(cluster_case.case, placement, round_)
                    results[cluster_case.case.name][placement.key].runs.append(run)
        return results

    def _run(self, case: Case, placement: Placement, round_: int) -> RunRecord:
        began = time.monotonic()
        where = f"round {round_}/{self.runs} {case.name} {placement.key}"
        workdir = self.workdir / f"{case.name}-{placement.key}-{round_}"
        try:
            deployment = start_deployment(placement.deployment, workdir, self.on_group)
        except BrokerStartError as exc:
            self.say(f"{where}: {exc}")
            return RunRecord(placement.key, round_, None, time.monotonic() - began, error=str(exc))
        report, error = bench_then_stop(
            deployment,
            placement.deployment,
            [*case.args, *placement.address_args(node_addresses(deployment))],
            RUN_TIMEOUT + case.duration,
            self.on_group,
        )
        run = RunRecord(placement.key, round_, None, time.monotonic() - began, report, error)
        self.say(f"{where}: {describe(case, run)}")
        return run


# -- results -----------------------------------------------------------------------------


def _figures(scenario: str) -> list[Metric]:
    """The headline, then the figures that help read it."""
    if scenario == "latency":
        return [headline(scenario), Metric("latency_ms.p50", "p50 ms", higher_is_better=False)]
    if scenario == "connect-rate":
        return [
            Metric("cycles_per_s", "connects/s"),
            Metric("handshake_ms.p99", "CONNACK p99 ms", higher_is_better=False),
        ]
    return [headline(scenario)]


def results_json(
    cases: list[ClusterCase], outcome: dict[str, dict[str, BrokerResult]]
) -> list[dict[str, Any]]:
    rows = []
    for cluster_case in cases:
        case = cluster_case.case
        by_placement = outcome[case.name]
        figures = _figures(case.scenario)
        baseline = by_placement[BASELINE]
        placements = []
        for placement in cluster_case.placements:
            result = by_placement[placement.key]
            medians = {m.key: result.median(m) for m in figures}
            ratios = {}
            for metric in figures:
                value, reference = medians[metric.key], baseline.median(metric)
                ratios[metric.key] = (
                    round(value / reference, 3) if value is not None and reference else None
                )
            placements.append(
                {
                    "placement": placement.key,
                    "label": placement.label,
                    "median": medians,
                    "ratio_to_mosquitto": ratios,
                    "clean_runs": sum(r.clean for r in result.runs),
                    "lost": result.total("lost"),
                    "duplicates": result.total("duplicates"),
                    "out_of_order": result.total("out_of_order"),
                    "failed": result.total("failed"),
                    "runs": [r.to_json() for r in result.runs],
                }
            )
        rows.append(
            {
                "name": case.name,
                "title": case.title,
                "args": list(case.args),
                "figures": [
                    {"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                    for m in figures
                ],
                "placements": placements,
            }
        )
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else fmt_number(value)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(results: dict[str, Any]) -> str:
    """The table of medians with their ratios to Mosquitto, and what each run did."""
    lines = [
        f"# raftmq cluster benchmark ({results['generated']})",
        "",
        f"`{results['command']}`: median of {results['runs_per_case']} interleaved runs per "
        "row, each on a freshly started deployment on loopback. "
        f"{results['machine']['cores']} cores ({results['machine']['cpu']}), shared with "
        f"other work: load average {results['load_average_start']} at the start, "
        f"{results['load_average_end']} at the end. Absolute figures are noisy here; "
        "read the ratios to Mosquitto measured in the same run.",
        "",
        "| case | where | figure | median | x Mosquitto | also | x Mosquitto | clean runs "
        "| lost / dup | runs |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for case in results["cases"]:
        head, *extra = case["figures"]
        for index, row in enumerate(case["placements"]):
            runs = " ".join(_run_cell(head, run) for run in row["runs"])
            title = case["title"] if index == 0 else ""
            also = ["", ""]
            if extra:
                key = extra[0]["key"]
                also = [
                    f"{extra[0]['label']} {_cell(row['median'][key])}",
                    _ratio(row["ratio_to_mosquitto"][key]),
                ]
            lines.append(
                f"| {title} | {row['label']} | {head['label']} "
                f"| {_cell(row['median'][head['key']])} "
                f"| {_ratio(row['ratio_to_mosquitto'][head['key']])} "
                f"| {also[0]} | {also[1]} "
                f"| {row['clean_runs']}/{len(row['runs'])} "
                f"| {row['lost']:,} / {row['duplicates']:,} | {runs} |"
            )
    lines += [
        "",
        "Ratios: for msgs/s and connects/s higher is better; for latency lower is better "
        "(2.00x = twice Mosquitto's). Clean = complete, nothing lost, duplicated or "
        "reordered; a run marked ! was not clean:",
    ]
    unclean = [
        f"- {case['name']} {row['placement']} round {run['round']}: "
        + (run["error"] if run["report"] is None else problems(run["report"]))
        for case in results["cases"]
        for row in case["placements"]
        for run in row["runs"]
        if run["report"] is None or not run["report"].get("ok")
    ]
    lines += unclean or ["- none"]
    lines += [
        "",
        "Deployments: " + "; ".join(f"{k}: {v}" for k, v in results["deployments"].items()) + ".",
    ]
    return "\n".join(lines)


def _run_cell(figure: dict[str, Any], run: dict[str, Any]) -> str:
    report = run["report"]
    if report is None:
        return "failed"
    value = Metric(figure["key"], figure["label"]).read(report)
    return _cell(value) + ("" if report.get("ok") else "!")


# -- the command -------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench-cluster",
        description="Same-node and cross-node figures of a 3-node raftmq cluster, "
        "beside one raftmq node and Mosquitto; interleaved, median of N.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per row (default 3)")
    parser.add_argument("--json", type=Path, help="also write every figure here as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline")
    parser.add_argument("--groups-file", type=Path, help="append every process group started")
    parser.add_argument("--command", help="the command line to name in the output")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    groups_file: Path | None = args.groups_file

    def record(pgid: int) -> None:
        if groups_file is not None:
            with groups_file.open("a") as f:
                f.write(f"{pgid}\n")

    cases = cluster_cases(args.smoke)
    started = time.monotonic()
    results: dict[str, Any] = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": args.command
        or "python -m raftmq.cluster.tools.bench.cluster_compare " + shlex.join(argv),
        "smoke": args.smoke,
        "runs_per_case": args.runs,
        "machine": machine_details(REPO),
        "load_average_start": load_average(),
        "deployments": {
            **{name: f"{kind.version()}, {kind.config}" for name, kind in BROKERS.items()},
            "cluster": f"`raftmq cluster up --nodes {CLUSTER_NODES}` (its defaults)",
        },
    }
    with tempfile.TemporaryDirectory(prefix="raftmq-bench-cluster-") as workdir:
        outcome = ClusterSuite(args.runs, Path(workdir), record).run(cases)
    results["load_average_end"] = load_average()
    results["duration_s"] = round(time.monotonic() - started)
    results["cases"] = results_json(cases, outcome)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(render_markdown(results))
    clean = all(
        row["clean_runs"] == len(row["runs"])
        for case in results["cases"]
        for row in case["placements"]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
