"""``raftmq bench`` end to end, as a user runs it, against a real Mosquitto.

Mosquitto rather than raftmq: these tests are about the load generator, so the
broker under it must be one whose behaviour is not in question. It is started
here, not through ``broker_factory``, because that fixture picks its broker
from a process-wide environment variable. Every process is bounded by a
timeout and killed in a ``finally``.
"""

from __future__ import annotations

import json
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
