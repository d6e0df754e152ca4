"""Running the same bench cases against several brokers, interleaved, and keeping every figure.

For each case, round after round, each broker is started fresh, measured
once by a ``raftmq bench`` subprocess and stopped (A B C A B C ...), so a
burst of load elsewhere on the machine hurts every broker alike and no run
inherits the queues or heap of the one before. The headline figure of a
case is the median of its runs; every run stays in the results.

A broker too slow for a full-size run (amqtt) is never cut silently: its
first run is at full size with its own timeout, and only if that run is
stopped by the timeout are its runs made smaller, to what it delivered in
that time scaled to ``REDUCED_SHARE`` of it. The timed-out run is kept as
the evidence (``probe``) and BENCHMARKS.md names the sizes.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from raftmq.cluster.tools.bench.brokers import (
    BrokerKind,
    BrokerStartError,
    RunningBroker,
    RunningCluster,
    kill_group,
    start_broker,
)

Report = dict[str, Any]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
# A reduced run aims at this share of the broker's timeout.
REDUCED_SHARE = 0.4
# Smallest reduced sizes: below these a run measures its own setup. 20
# messages fill a QoS 1/2 publisher's in-flight window once.
REDUCED_FLOOR = {"--messages": 20.0, "--clients": 1000.0, "--duration": 1.0}
# What a run may take beyond its bench --timeout (process start, stop, report).
BENCH_GRACE = 60.0
# Report keys dropped from the stored results: per-client rows (fine in one
# run's --json, too big times a hundred runs).
_DROPPED_KEYS = ("per_publisher", "per_subscriber")


@dataclass(frozen=True, slots=True)
class Case:
    """One line of the comparison: a bench command line without the broker address.

    ``size_option`` is the option a reduced run shrinks (``--messages``,
    ``--duration`` or ``--clients``); ``duration`` is how long the run
    lasts by design, added to every broker's timeout.
    """

    name: str
    title: str
    args: tuple[str, ...]
    size_option: str | None = None
    duration: float = 0.0

    @property
    def scenario(self) -> str:
        return self.args[0]

    @property
    def size(self) -> float | None:
        if self.size_option is None:
            return None
        return float(self.args[self.args.index(self.size_option) + 1])

    def resized(self, size: float | None) -> tuple[str, ...]:
        """The bench arguments with ``size`` for the size option."""
        if size is None or self.size_option is None:
            return self.args
        args = list(self.args)
        args[args.index(self.size_option) + 1] = _fmt_size(size)
        return tuple(args)


def _fmt_size(size: float) -> str:
    return str(int(size)) if size == int(size) else f"{size:g}"


def _pairs(clients: int, qos: int, messages: int) -> Case:
    return Case(
        f"pairs-{clients}-q{qos}",
        f"pairs {clients} -> {clients}, {messages:,} msgs each, QoS {qos}",
        ("pairs", "--clients", str(clients), "--messages", str(messages), "--qos", str(qos)),
        "--messages",
    )


def full_cases(conns: int, smoke: bool = False) -> list[Case]:
    """The BENCHMARKS.md table: pairs 2/10/100 x QoS 0/1/2, fanin, fanout, latency, conns,
    connect-rate.

    fanin runs at QoS 0 only: at QoS 1 the one subscriber's 20-message
    window is slower than fifty publishers, and Mosquitto (like raftmq,
    with the same defaults) drops what overflows its 1,000-message queue,
    which measures a queue limit rather than speed.

    ``smoke`` keeps every case but at a size that takes a second or two:
    it checks the whole pipeline, its figures mean nothing.
    """
    messages, burst, seconds = (100, 100, 1) if smoke else (10_000, 1000, None)
    clients = (2, 10) if smoke else (2, 10, 100)
    if smoke:
        conns = min(conns, 200)
    latency_s = seconds or 10
    cycle_s = seconds or 5
    cases = [_pairs(n, qos, messages) for n in clients for qos in (0, 1, 2)]
    cases += [
        Case(
            "fanin-q0",
            f"fanin 50 -> 1, {2 * burst:,} msgs each, QoS 0",
            ("fanin", "--clients", "50", "--messages", str(2 * burst), "--qos", "0"),
            "--messages",
        ),
        Case(
            "fanout-q0",
            f"fanout 1 -> 100, {burst:,} msgs, QoS 0",
            ("fanout", "--clients", "100", "--messages", str(burst), "--qos", "0"),
            "--messages",
        ),
        Case(
            "fanout-q1",
            f"fanout 1 -> 100, {burst:,} msgs, QoS 1",
            ("fanout", "--clients", "100", "--messages", str(burst), "--qos", "1"),
            "--messages",
        ),
        Case(
            "latency",
            f"10 pairs, 5,000 msgs/s in total, QoS 1, {latency_s} s",
            (
                "latency",
                "--clients",
                "10",
                "--rate",
                "5000",
                "--qos",
                "1",
                "--duration",
                str(latency_s),
            ),
            "--duration",
            duration=latency_s,
        ),
        Case(
            "conns",
            f"{conns:,} idle connections",
            ("conns", "--clients", str(conns)),
            "--clients",
        ),
        Case(
            "connect-rate",
            f"10 clients, {cycle_s} s",
            ("connect-rate", "--clients", "10", "--duration", str(cycle_s)),
            duration=cycle_s,
        ),
    ]
    return cases


# -- figures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = True

    def read(self, report: Report) -> float | None:
        if "." in self.key:
            group, name = self.key.split(".", 1)
            value = (report.get(group) or {}).get(name)
        else:
            value = report.get(self.key)
        return None if value is None else float(value)


THROUGHPUT = Metric("msgs_per_s", "msgs/s")
METRICS: dict[str, list[Metric]] = {
    "latency": [
        Metric(f"latency_ms.{p}", f"{p} ms", higher_is_better=False)
        for p in ("p50", "p90", "p99", "p99.9", "max")
    ],
    "conns": [
        Metric("elapsed_s", "time s", higher_is_better=False),
        Metric("conns_per_s", "conns/s"),
        Metric("broker_rss_per_conn", "RSS B/conn", higher_is_better=False),
    ],
    "connect-rate": [Metric("cycles_per_s", "cycles/s")],
}


def metrics_for(scenario: str) -> list[Metric]:
    """The figures of a scenario; the first one is its headline."""
    return METRICS.get(scenario, [THROUGHPUT])


def headline(scenario: str) -> Metric:
    """The figure that decides "faster": p99 for latency, the rate elsewhere."""
    if scenario == "latency":
        return METRICS["latency"][2]
    if scenario == "conns":
        return METRICS["conns"][1]
    return metrics_for(scenario)[0]


# -- running ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunRecord:
    broker: str
    round: int
    size: float | None
    wall_s: float
    report: Report | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.report is not None and bool(self.report.get("ok"))

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "round": self.round,
            "size": self.size,
            "wall_s": round(self.wall_s, 3),
            "error": self.error,
            "report": self.report,
        }


@dataclass(slots=True)
class BrokerResult:
    size: float | None
    timeout: float
    runs: list[RunRecord] = field(default_factory=list)
    probe: RunRecord | None = None

    def median(self, metric: Metric) -> float | None:
        values = [v for r in self.runs if r.report and (v := metric.read(r.report)) is not None]
        return statistics.median(values) if values else None

    def total(self, key: str) -> int:
        return sum(int(r.report.get(key) or 0) for r in self.runs if r.report)

    def to_json(self, case: Case) -> dict[str, Any]:
        return {
            "size": self.size,
            "full_size": case.size,
            "size_option": case.size_option,
            "timeout": self.timeout,
            "reduced": self.size != case.size,
            "probe": self.probe.to_json() if self.probe else None,
            "runs": [r.to_json() for r in self.runs],
            "clean_runs": sum(r.clean for r in self.runs),
            "lost": self.total("lost"),
            "duplicates": self.total("duplicates"),
            "out_of_order": self.total("out_of_order"),
            "failed": self.total("failed"),
            "median": {m.key: self.median(m) for m in metrics_for(case.scenario)},
        }


def trim_report(report: Report) -> Report:
    """A report without its per-client rows, to be stored with many others."""
    return {k: v for k, v in report.items() if k not in _DROPPED_KEYS}


def bench_process(
    command: list[str], limit: float, on_group: Callable[[int], None]
) -> tuple[Report | None, str | None]:
    """Run one ``raftmq bench ... --json`` in a process group of its own; its report, or
    why there is none. ``on_group`` gets the group id as soon as it exists."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    on_group(process.pid)
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        kill_group(process.pid, signal.SIGKILL)
        process.communicate()
        return None, f"raftmq bench did not return within {limit:g} s"
    finally:
        kill_group(process.pid, signal.SIGKILL)  # stray workers, if any
    try:
        return json.loads(out), None
    except ValueError:
        tail = " ".join(err.strip().splitlines()[-3:])
        return None, f"raftmq bench exited {process.returncode} with no report: {tail}"


def bench_then_stop(
    target: RunningBroker | RunningCluster,
    name: str,
    args: list[str],
    timeout: float,
    on_group: Callable[[int], None],
) -> tuple[Report | None, str | None]:
    """``raftmq bench ARGS`` against a started ``target``, which is stopped afterwards.

    The report comes back trimmed for storing; with no report from a target
    that died, the error carries the end of ``name``'s log.
    """
    command = [RAFTMQ, "bench", *args, "--timeout", f"{timeout:g}", "--json", "--quiet"]
    try:
        report, error = bench_process(command, timeout + BENCH_GRACE, on_group)
        if report is None and target.process.poll() is not None:
            error = f"{error}; {name} exited: {target.log_tail(5)}"
    finally:
        target.stop()
    return (trim_report(report) if report else None), error


def _share_done_in(report: Report, seconds: float) -> float:
    """The share of a stopped run's work the broker would get through in ``seconds``.

    From its rate once running (so the time its clients took to connect
    does not count against it), or from what it got through before the
    timeout when there is no rate.
    """
    if report.get("scenario") == "conns":
        done, total, rate = report.get("connected"), report.get("clients"), "conns_per_s"
    else:
        done, total, rate = report.get("delivered"), report.get("expected"), "msgs_per_s"
    if not total:
        return 0.0
    if report.get(rate) and report.get("scenario") != "latency":
        return min(1.0, float(report[rate]) * seconds / float(total))
    return min(1.0, float(done or 0) / float(total))


def reduced_size(case: Case, probe: Report, timeout: float) -> float | None:
    """The size a broker can finish in REDUCED_SHARE of ``timeout``, judged by its probe.

    None when the probe got nowhere, so nothing sensible can be scaled from it.
    """
    full = case.size
    share = _share_done_in(probe, timeout * REDUCED_SHARE)
    if full is None or share <= 0:
        return None
    size = full * share
    if case.size_option == "--duration":
        size = round(size, 1)
    else:
        # Two significant digits: 2,300 messages, not 2,287.
        digits = max(0, int(math.log10(max(size, 1))) - 1)
        size = float(int(size // 10**digits) * 10**digits)
    return min(full, max(REDUCED_FLOOR.get(case.size_option or "", 1.0), size))


class Suite:
    """Runs cases against brokers and collects the results.

    ``on_group`` gets the id of every process group started (brokers and
    bench runs), for a caller that must be able to kill them all.
    """

    def __init__(
        self,
        brokers: Sequence[BrokerKind],
        runs: int,
        workdir: Path,
        on_group: Callable[[int], None],
        log: TextIO = sys.stderr,
    ) -> None:
        self.brokers = list(brokers)
        self.runs = runs
        self.workdir = workdir
        self.on_group = on_group
        self.log = log

    def say(self, message: str) -> None:
        print(f"bench-compare: {message}", file=self.log, flush=True)

    def run_case(self, case: Case, label: str = "") -> dict[str, BrokerResult]:
        results = {b.name: BrokerResult(case.size, b.timeout + case.duration) for b in self.brokers}
        for round_ in range(1, self.runs + 1):
            for broker in self.brokers:
                result = results[broker.name]
                run = self._run(case, broker, result.size, round_, label)
                if (
                    round_ == 1
                    and broker.reducible
                    and run.report is not None
                    and run.report.get("stopped_by") == "timeout"
                    and (size := reduced_size(case, run.report, broker.timeout)) is not None
                    and size < (case.size or 0)
                ):
                    self.say(
                        f"{broker.name} did not finish {case.name} at full size within its "
                        f"{result.timeout:g} s timeout; its runs use "
                        f"{case.size_option} {_fmt_size(size)}"
                    )
                    result.probe = run
                    result.size = size
                    run = self._run(case, broker, size, round_, label)
                result.runs.append(run)
        return results

    def _run(
        self, case: Case, broker: BrokerKind, size: float | None, round_: int, label: str
    ) -> RunRecord:
        began = time.monotonic()
        workdir = self.workdir / f"{case.name}-{broker.name}-{round_}"
        try:
            running = start_broker(broker, workdir, self.on_group)
        except BrokerStartError as exc:
            self.say(f"{label}{case.name} run {round_}: {exc}")
            return RunRecord(broker.name, round_, size, time.monotonic() - began, error=str(exc))
        args = [*case.resized(size), "--host", "127.0.0.1", "--port", str(running.port)]
        if case.scenario == "conns":
            args += ["--broker-pid", str(running.pid)]
        report, error = bench_then_stop(
            running, broker.name, args, broker.timeout + case.duration, self.on_group
        )
        run = RunRecord(broker.name, round_, size, time.monotonic() - began, report, error)
        where = f"{label}{case.name} run {round_}/{self.runs} {broker.name}"
        self.say(f"{where}: {describe(case, run)}")
        return run


def describe(case: Case, run: RunRecord) -> str:
    """One run in a few words, for the progress log."""
    if run.report is None:
        return f"FAILED ({run.error})"
    report = run.report
    figures = ", ".join(
        f"{m.label} {fmt_number(v)}" for m in metrics_for(case.scenario) if (v := m.read(report))
    )
    state = "clean" if run.clean else problems(run.report)
    return f"{figures} [{state}] ({run.wall_s:.1f} s)"


def reduction_note(case_title: str, broker: str, result: dict[str, Any]) -> str | None:
    """Why a broker ran smaller runs, from ``BrokerResult.to_json``; None if it did not."""
    probe = result.get("probe")
    if not probe:
        return None
    report = probe["report"] or {}
    if report.get("scenario") == "conns":
        got = f"opened {report.get('connected', 0):,} of {report.get('clients', 0):,} connections"
    else:
        got = f"delivered {report.get('delivered', 0):,} of {report.get('expected', 0):,} messages"
    return (
        f"{broker}, {case_title}: at full size it {got} before its {result['timeout']:g} s "
        f"timeout, so its runs use {result['size_option']} {result['size']:g} instead of "
        f"{result['full_size']:g}."
    )


def problems(report: Report) -> str:
    """What made a run not clean."""
    parts = [] if report.get("complete") else [f"stopped by {report.get('stopped_by')}"]
    for key in ("lost", "duplicates", "out_of_order", "failed", "dropped_connections"):
        if report.get(key):
            parts.append(f"{key.replace('_', ' ')} {report[key]:,}")
    parts += [str(e) for e in report.get("errors", [])[:2]]
    return "; ".join(parts) or "not clean"


def fmt_number(value: float) -> str:
    return f"{value:,.3f}" if value < 100 and value != int(value) else f"{value:,.0f}"
