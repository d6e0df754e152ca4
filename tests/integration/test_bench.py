"""``raftmq bench`` end to end, as a user runs it, against a real Mosquitto.

Mosquitto rather than raftmq: these tests are about the load generator, so the
broker under it must be one whose behaviour is not in question. It is started
here, not through ``broker_factory``, because that fixture picks its broker
from a process-wide environment variable. Every process is bounded by a
timeout and killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RAFTMQ = str(Path(sys.executable).parent / "raftmq")

START_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0
BENCH_TIMEOUT = "30"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]


@dataclass(frozen=True)
class Mosquitto:
    port: int
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (tmp_path / "mosquitto.log").open("w")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"mosquitto did not start: {(tmp_path / 'mosquitto.log').read_text()}"
                    )
                time.sleep(0.05)
        yield Mosquitto(port, proc.pid)
    finally:
        proc.kill()
        proc.wait(START_TIMEOUT)
        log.close()


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    """Run ``raftmq bench ARGS --json``; its exit status and report."""
    done = subprocess.run(
        [RAFTMQ, "bench", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.stdout, f"no report; stderr:\n{done.stderr}"
    return done.returncode, json.loads(done.stdout)


def test_pairs_qos1_delivers_every_message_once(mosquitto: Mosquitto) -> None:
    status, report = bench(
        "pairs",
        "--port", str(mosquitto.port),
        "--clients", "2",
        "--messages", "200",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["delivered"] == report["expected"] == 400
    assert report["published"] == 400
    assert report["lost"] == report["duplicates"] == report["out_of_order"] == 0
    assert [row["delivered"] for row in report["per_subscriber"]] == [200, 200]
    assert report["stopped_by"] == "completion"
    assert report["msgs_per_s"] > 0
    assert report["ok"] and status == 0, report["errors"]


def test_conns_opens_every_connection_and_measures_the_broker(mosquitto: Mosquitto) -> None:
    status, report = bench(
        "conns",
        "--port", str(mosquitto.port),
        "--clients", "50",
        "--broker-pid", str(mosquitto.pid),
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["connected"] == 50
    assert report["failed"] == 0
    assert report["conns_per_s"] > 0
    assert report["broker_rss_after"] > 0
    assert report["broker_rss_per_conn"] is not None
    assert report["ok"] and status == 0, report["errors"]


def test_timeout_ends_a_stuck_run_with_a_failing_report() -> None:
    """A broker that never answers CONNECT: --timeout ends the run, which reports and fails."""
    port = _free_port()
    with socket.socket() as server:
        # Accepts TCP but never answers CONNECT: the setup cannot finish.
        server.bind(("127.0.0.1", port))
        server.listen()
        done = subprocess.run(
            [RAFTMQ, "bench", "pairs", "--port", str(port),
             "--clients", "1", "--timeout", "2", "--json", "--quiet"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )  # fmt: skip
    assert done.returncode != 0
    report = json.loads(done.stdout)
    assert report["stopped_by"] == "timeout during setup"
    assert not report["ok"]


def test_self_test_ceiling_runs_clean() -> None:
    status, report = bench("ceiling", "--clients", "2", "--messages", "2000")
    assert report["broker"].startswith("self-test sink")
    assert report["delivered"] == 4000
    assert report["ok"] and status == 0, report["errors"]


def test_latency_report_carries_a_cdf(mosquitto: Mosquitto) -> None:
    status, report = bench(
        "latency",
        "--port", str(mosquitto.port),
        "--clients", "2",
        "--rate", "400",
        "--duration", "1",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    cdf = report["latency_cdf_ms"]
    percentiles = [q for q, _ in cdf]
    assert percentiles == [*range(1, 100), 99.5, 99.9, 99.99, 100]
    values = [ms for _, ms in cdf]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(report["latency_ms"]["max"], abs=0.001)
    assert dict(cdf)[50] == pytest.approx(report["latency_ms"]["p50"], abs=0.001)
    assert report["latency_samples"] == report["delivered"] == 400


class _Transport:
    """Collects what a client writes; enough of a transport for Publisher."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


async def test_paced_publisher_stamps_the_release_time_not_the_late_send() -> None:
    """A message the QoS window holds back carries the time it was due (coordinated omission)."""
    import asyncio
    import struct

    from raftmq.cluster.bench.client import Publisher

    def stamps(data: bytes, count: int) -> list[int]:
        # 3.1.1 QoS 1 PUBLISH of this topic and a 16-byte payload: fixed-size packets.
        size = len(data) // count
        return [struct.unpack_from(">Q", data, i * size + size - 8)[0] for i in range(count)]

    publisher = Publisher("p", 4, 0, "t", 4, 1, 16, 2, lambda: None)
    transport = _Transport()
    publisher.connection_made(transport)  # type: ignore[arg-type]
    transport.writes.clear()  # the CONNECT
    publisher.paced = True
    publisher.start(4)  # all four due now, but the window is 2
    released = publisher._releases[0][1]
    assert publisher.sent == 2
    await asyncio.sleep(0.05)
    publisher.data_received(b"\x40\x02\x00\x01\x40\x02\x00\x02")  # PUBACK 1, 2
    await asyncio.sleep(0)  # the pump runs on the next loop turn
    assert publisher.sent == 4
    late = transport.writes[-1]
    assert stamps(late, 2) == [released, released]

    unpaced = Publisher("q", 4, 0, "t", 1, 0, 16, 2, lambda: None)
    unpaced.connection_made(transport)  # type: ignore[arg-type]
    before = time.monotonic_ns()
    unpaced.start(1)
    assert stamps(transport.writes[-1], 1)[0] >= before


def _compare(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m raftmq.cluster.bench.compare`` with the results written under tmp_path."""
    return subprocess.run(
        [
            sys.executable, "-m", "raftmq.cluster.bench.compare",
            "--groups-file", str(tmp_path / "groups"),
            "--results", str(tmp_path / "results.json"),
            "--markdown", str(tmp_path / "BENCHMARKS.md"),
            "--charts-dir", str(tmp_path / "charts"),
            "--amqtt", str(Path(sys.executable).parent / "amqtt"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip


def _assert_all_stopped(groups_file: Path) -> None:
    """Every process group the comparison started is gone (zombies aside)."""
    import psutil

    groups = [int(line) for line in groups_file.read_text().split()]
    assert groups
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) in groups:
                assert process.info["status"] == psutil.STATUS_ZOMBIE, process
        except ProcessLookupError:
            continue


@pytest.mark.timeout(300)
def test_compare_all_writes_results_and_benchmarks_md(tmp_path: Path) -> None:
    """--all at smoke size with three brokers: results JSON, BENCHMARKS.md, nothing left running."""
    done = _compare(
        tmp_path,
        "--all", "--smoke", "--runs", "1",
        "--brokers", "mosquitto,amqtt,raftmq",
        "--only", "pairs-2-q1,latency,conns",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [c["name"] for c in results["cases"]] == ["pairs-2-q1", "latency", "conns"]
    assert set(results["brokers"]) == {"mosquitto", "amqtt", "raftmq"}
    assert results["brokers"]["mosquitto"]["version"][0].isdigit()
    pairs, latency, conns = results["cases"]
    for case in results["cases"]:
        for broker, result in case["brokers"].items():
            assert len(result["runs"]) == 1, (case["name"], broker)
            assert result["clean_runs"] == 1, (case["name"], broker, result["runs"])
    assert pairs["brokers"]["raftmq"]["median"]["msgs_per_s"] > 0
    assert pairs["brokers"]["raftmq"]["runs"][0]["report"]["delivered"] == 200
    assert latency["brokers"]["mosquitto"]["runs"][0]["report"]["latency_cdf_ms"]
    assert conns["brokers"]["raftmq"]["median"]["broker_rss_per_conn"] is not None

    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert "**Smoke run" in page
    assert results["command"] in page
    assert "## Targets (issue 3)" in page
    assert "| CPU |" in page and "| amqtt |" in page
    assert "| latency p99 <= 2x Mosquitto's | raftmq " in page
    assert "](charts/throughput.png)" in page
    _assert_all_stopped(tmp_path / "groups")


def test_compare_shrinks_a_broker_that_cannot_finish_and_says_so(tmp_path: Path) -> None:
    """amqtt gets --slow-timeout for a full-size run; past it, smaller runs, named as such."""
    done = _compare(
        tmp_path,
        "--brokers", "amqtt", "--runs", "1", "--slow-timeout", "2",
        "pairs", "--clients", "10", "--messages", "20000", "--qos", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    note = next(line for line in done.stdout.splitlines() if "at full size" in line)
    assert "amqtt, pairs --clients 10 --messages 20000 --qos 1: at full size it delivered" in note
    assert "before its 2 s timeout, so its runs use --messages " in note
    reduced = int(note.split("--messages ")[-1].split()[0])
    assert 0 < reduced < 20000
    row = next(line for line in done.stdout.splitlines() if line.startswith("amqtt "))
    assert "1/1" in row  # the reduced run is complete and clean
    _assert_all_stopped(tmp_path / "groups")


def _case(name: str, scenario: str, medians: dict[str, dict[str, float]], **extra: Any) -> dict:
    brokers = {}
    for broker, median in medians.items():
        lost = extra.get("lost", {}).get(broker, 0)
        brokers[broker] = {
            "median": median,
            "runs": [{"report": {"ok": not lost, "lost": lost}}],
            "clean_runs": 0 if lost else 1,
            "lost": lost,
            "reduced": broker in extra.get("reduced", ()),
        }
    headline = {"latency": "latency_ms.p99", "conns": "conns_per_s"}.get(scenario, "msgs_per_s")
    return {
        "name": name,
        "title": name,
        "scenario": scenario,
        "headline": headline,
        "brokers": brokers,
    }


def test_targets_are_judged_from_ratios_and_clean_runs() -> None:
    from raftmq.cluster.bench.targets import MET, NOT_MEASURED, NOT_MET, evaluate

    rate = {"mosquitto": 100.0, "amqtt": 10.0}
    results = {
        "cases": [
            # 0.6x Mosquitto and 6x amqtt: both met.
            _case("pairs-10-q0", "pairs", {b: {"msgs_per_s": v} for b, v in
                                           {**rate, "raftmq": 60.0}.items()}),
            # 0.4x Mosquitto: not met; 4x amqtt (reduced): not met.
            _case("pairs-10-q1", "pairs", {b: {"msgs_per_s": v} for b, v in
                                           {**rate, "raftmq": 40.0}.items()}, reduced={"amqtt"}),
            # Fast but lossy where Mosquitto lost nothing: ratio targets and no-loss not met.
            _case("pairs-100-q0", "pairs", {b: {"msgs_per_s": v} for b, v in
                                            {**rate, "raftmq": 90.0}.items()},
                  lost={"raftmq": 5}),
            _case("latency", "latency", {"mosquitto": {"latency_ms.p99": 10.0},
                                         "raftmq": {"latency_ms.p99": 19.0}}),
            _case("conns", "conns", {"mosquitto": {"elapsed_s": 1.0, "conns_per_s": 100.0,
                                                   "broker_rss_per_conn": 700.0},
                                     "raftmq": {"elapsed_s": 2.5, "conns_per_s": 40.0,
                                                "broker_rss_per_conn": 8000.0}}),
        ]
    }  # fmt: skip
    found = {(t.target.split(":")[0], t.measured.split(":")[0]): t for t in evaluate(results)}

    def status(target: str, measured: str) -> str:
        return found[(target, measured)].status

    mosquitto = ">= 0.5x Mosquitto msgs/s"
    assert status(mosquitto, "pairs-10-q0") == MET
    assert status(mosquitto, "pairs-10-q1") == NOT_MET
    assert status(mosquitto, "pairs-100-q0") == NOT_MET
    assert "not clean" in found[(mosquitto, "pairs-100-q0")].measured
    assert status(mosquitto, "fanin-q0") == NOT_MEASURED
    amqtt = ">= 5x amqtt (msgs/s)"
    assert status(amqtt, "pairs-10-q0") == MET
    assert status(amqtt, "pairs-10-q1") == NOT_MET
    assert "amqtt at reduced size" in found[(amqtt, "pairs-10-q1")].measured
    assert status(">= 5x amqtt (p99 latency)", "latency") == NOT_MEASURED
    assert status("latency p99 <= 2x Mosquitto's", "raftmq 19.00 ms, Mosquitto 10.00 ms") == MET
    assert status("conns conns", "raftmq 2.50 s, Mosquitto 1.00 s") == NOT_MET
    assert status("conns conns", "8,000 B (Mosquitto 700 B)") == MET
    no_loss = found[("no message lost where Mosquitto loses none", "lost in 1 of 4")]
    assert no_loss.status == NOT_MET and "pairs-100-q0 (5 lost)" in no_loss.measured
