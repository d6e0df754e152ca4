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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clusterkit import Cluster, NodeClients

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
    ports: tuple[int, ...]
    pid: int

    @property
    def port(self) -> int:
        return self.ports[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _running_mosquitto(workdir: Path, listeners: int) -> Iterator[Mosquitto]:
    """Mosquitto listening on ``listeners`` loopback ports: one broker, several addresses."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = tuple(_free_port() for _ in range(listeners))
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "".join(f"listener {port} 127.0.0.1\n" for port in ports)
        + "allow_anonymous true\npersistence false\n"
    )
    log = (workdir / "mosquitto.log").open("w")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(
                            f"mosquitto did not start: {(workdir / 'mosquitto.log').read_text()}"
                        )
                    time.sleep(0.05)
        yield Mosquitto(ports, proc.pid)
    finally:
        proc.kill()
        proc.wait(START_TIMEOUT)
        log.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with _running_mosquitto(tmp_path / "mosquitto", 1) as broker:
        yield broker


@pytest.fixture
def mosquitto_two_listeners(tmp_path: Path) -> Iterator[Mosquitto]:
    """Two addresses of one broker: subscribers on one and publishers on the other take
    the probing path of a cluster, against a broker whose routes are there at SUBACK."""
    with _running_mosquitto(tmp_path / "mosquitto-2", 2) as broker:
        yield broker


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

    from raftmq.cluster.tools.bench.client import Publisher

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
    """``python -m raftmq.cluster.tools.bench.compare`` with the results written under tmp_path."""
    return subprocess.run(
        [
            sys.executable, "-m", "raftmq.cluster.tools.bench.compare",
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


def test_compare_writes_its_files_into_this_checkout_by_default() -> None:
    from raftmq.cluster.tools.bench.compare import REPO

    assert (REPO / "pyproject.toml").is_file() and (REPO / "scripts" / "bench-charts.py").is_file()
    assert Path(__file__).resolve().parents[2] == REPO


def test_targets_are_judged_from_ratios_and_clean_runs() -> None:
    from raftmq.cluster.tools.bench.targets import MET, NOT_MEASURED, NOT_MET, evaluate

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


# -- placement: subscribers elsewhere, connections spread ---------------------------------


def test_subscribers_at_the_publishers_address_need_no_probe(mosquitto: Mosquitto) -> None:
    """--sub-host/--sub-port equal to --host/--port: one address, no probing, as before."""
    status, report = bench(
        "pairs",
        "--port", str(mosquitto.port),
        "--sub-host", "127.0.0.1",
        "--sub-port", str(mosquitto.port),
        "--clients", "2",
        "--messages", "200",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["broker"] == f"127.0.0.1:{mosquitto.port}"
    assert report["delivered"] == report["expected"] == 400
    assert report["probes_sent"] == 0 and report["route_wait_ms"] is None


@pytest.mark.parametrize("protocol", ["4", "5"])
def test_subscribers_on_another_address_are_probed_and_probes_count_nowhere(
    mosquitto_two_listeners: Mosquitto, protocol: str
) -> None:
    pub_port, sub_port = mosquitto_two_listeners.ports
    status, report = bench(
        "latency",
        "--port", str(pub_port),
        "--sub-port", str(sub_port),
        "--protocol", protocol,
        "--clients", "3",
        "--rate", "300",
        "--duration", "1",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["broker"] == f"publishers 127.0.0.1:{pub_port}, subscribers 127.0.0.1:{sub_port}"
    assert report["probes_sent"] >= 3  # one topic per pair, at least once
    assert report["route_wait_ms"] is not None
    # Probes are neither messages, nor unexpected, nor latency samples.
    assert report["delivered"] == report["expected"] == report["published"] == 300
    assert report["latency_samples"] == 300
    assert report["unexpected"] == report["lost"] == report["duplicates"] == 0


def test_fanout_subscribers_elsewhere_are_probed_once_per_topic(
    mosquitto_two_listeners: Mosquitto,
) -> None:
    pub_port, sub_port = mosquitto_two_listeners.ports
    status, report = bench(
        "fanout",
        "--port", str(pub_port),
        "--sub-port", str(sub_port),
        "--clients", "4",
        "--messages", "100",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["delivered"] == 400 and report["unexpected"] == 0
    assert report["probes_sent"] >= 1


def test_subscribers_the_publishers_broker_never_reaches_hold_the_run_back(
    tmp_path: Path,
) -> None:
    """Two unrelated brokers: no probe ever arrives, so no message is published."""
    with (
        _running_mosquitto(tmp_path / "a", 1) as publishers,
        _running_mosquitto(tmp_path / "b", 1) as subscribers,
    ):
        status, report = bench(
            "pairs",
            "--port", str(publishers.port),
            "--sub-port", str(subscribers.port),
            "--clients", "1",
            "--qos", "1",
            "--timeout", "3",
        )  # fmt: skip
    assert status != 0 and not report["ok"]
    assert report["stopped_by"] == "timeout during setup"
    assert report["published"] == 0


def test_connect_rate_round_robins_over_targets(mosquitto_two_listeners: Mosquitto) -> None:
    first, second = (f"127.0.0.1:{port}" for port in mosquitto_two_listeners.ports)
    status, report = bench(
        "connect-rate",
        "--target", first,
        "--target", second,
        "--clients", "3",
        "--duration", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["broker"] == f"{first}, {second}"
    assert set(report["per_target"]) == {first, second}
    assert sum(report["per_target"].values()) == report["cycles"] > 0
    # Each client takes the next address every cycle: the counts differ by at most the clients.
    assert abs(report["per_target"][first] - report["per_target"][second]) <= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pairs", "--target", "127.0.0.1:1883"], "--target spreads conns and connect-rate"),
        (["connect-rate", "--sub-port", "1884"], "connect-rate has none"),
        (["connect-rate", "--target", "127.0.0.1"], "--target '127.0.0.1': expected HOST:PORT"),
        (["ceiling", "--sub-port", "1884"], "the self-test sink is the only broker"),
    ],
)
def test_placement_options_that_cannot_apply_are_usage_errors(
    args: list[str], message: str
) -> None:
    done = subprocess.run(
        [RAFTMQ, "bench", *args], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.raftmq_only
def test_cross_node_runs_in_a_cluster(cluster: Cluster, node_clients: NodeClients) -> None:
    """Publishers on n1, subscribers on n2; connect-rate over n1, n2, n3. Small and clean."""
    nodes = [cluster[node_id] for node_id in ("n1", "n2", "n3")]
    for node in nodes:  # every node can commit a claim: the cluster has a leader
        node_clients(node, f"ready-{node.port}")
    n1, n2 = nodes[0], nodes[1]
    status, report = bench(
        "pairs",
        "--port", str(n1.port),
        "--sub-port", str(n2.port),
        "--clients", "2",
        "--messages", "300",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["delivered"] == report["expected"] == 600
    assert report["lost"] == report["duplicates"] == report["out_of_order"] == 0
    assert report["probes_sent"] >= 2

    status, report = bench(
        "latency",
        "--port", str(n1.port),
        "--sub-port", str(n2.port),
        "--clients", "2",
        "--rate", "200",
        "--duration", "1",
        "--qos", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert report["latency_samples"] == report["delivered"] == 200

    targets = [f"127.0.0.1:{node.port}" for node in nodes]
    status, report = bench(
        "connect-rate",
        *(arg for target in targets for arg in ("--target", target)),
        "--clients", "3",
        "--duration", "1",
        "--timeout", BENCH_TIMEOUT,
    )  # fmt: skip
    assert report["ok"] and status == 0, report["errors"]
    assert list(report["per_target"]) == targets
    assert all(count > 0 for count in report["per_target"].values())


def test_cluster_addresses_are_read_as_cluster_up_prints_them() -> None:
    from raftmq.cluster.tools.bench.brokers import BrokerStartError, parse_mqtt_address

    assert parse_mqtt_address("n1", "tcp://127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_mqtt_address("n2", "127.0.0.1:1886") == ("127.0.0.1", 1886)
    with pytest.raises(BrokerStartError, match="node n3: cannot bench 'mqtts://"):
        parse_mqtt_address("n3", "mqtts://127.0.0.1:8883")


@pytest.mark.timeout(300)
@pytest.mark.raftmq_only
def test_bench_cluster_smoke_writes_every_row_and_stops_everything(tmp_path: Path) -> None:
    """The script's engine at smoke size: 3 cases x 4 placements, clean, JSON and table."""
    out = tmp_path / "cluster.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "raftmq.cluster.tools.bench.cluster_compare",
            "--smoke", "--runs", "1", "--json", str(out),
            "--groups-file", str(tmp_path / "groups"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    cases = {case["name"]: case for case in results["cases"]}
    assert list(cases) == ["pairs-q1", "latency-q1", "connect-rate"]
    for case in cases.values():
        for row in case["placements"]:
            assert row["clean_runs"] == len(row["runs"]) == 1, (case["name"], row)
        assert case["placements"][0]["ratio_to_mosquitto"][case["figures"][0]["key"]] == 1.0
    pairs = {row["placement"]: row for row in cases["pairs-q1"]["placements"]}
    assert set(pairs) == {"mosquitto", "raftmq", "cluster-same", "cluster-cross"}
    cross = pairs["cluster-cross"]["runs"][0]["report"]
    assert cross["probes_sent"] >= 2 and "subscribers" in cross["broker"]
    assert pairs["cluster-same"]["runs"][0]["report"]["probes_sent"] == 0
    spread = {row["placement"]: row for row in cases["connect-rate"]["placements"]}
    assert len(spread["cluster-spread"]["runs"][0]["report"]["per_target"]) == 3
    assert "| pairs 2 -> 2, 200 msgs each, QoS 1 | Mosquitto | msgs/s |" in done.stdout
    assert "cluster: pub n1 -> sub n2" in done.stdout
    _assert_all_stopped(tmp_path / "groups")
