"""Teardown leaves no namespace, veth, bridge, nft table, route or process behind: after
a test that raises, after SIGTERM, and (with the script) after a SIGKILLed runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab import Lab
from labnet import TEARDOWN_SCRIPT, leftovers, teardown
from probes import mqtt_connack

HERE = Path(__file__).parent
INNER_RUN_TIMEOUT = 60.0
INNER_TESTS = """
import time
from labnet import leftovers

def test_raises(lab):
    raise RuntimeError("a test that raises inside the lab")

def test_nothing_left_after_the_raise():
    assert leftovers() == []

def test_waits_for_sigterm(lab):
    print("READY", flush=True)
    time.sleep(60)
"""
CRASHING_RUNNER = """
import sys, time
from pathlib import Path
from lab import Lab
lab = Lab(Path(sys.argv[1]), nodes=2)
lab.start()
print(" ".join(str(node.pid) for node in lab.nodes.values()), flush=True)
time.sleep(60)
"""


def test_a_lab_that_raises_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="inside"), Lab(tmp_path / "lab", nodes=2) as lab:
        pids = [node.pid for node in lab.nodes.values()]
        assert len(leftovers()) > 0
        raise RuntimeError("inside the lab")
    assert leftovers() == []
    assert not any(_alive(pid) for pid in pids if pid is not None)


def test_sigterm_mid_test_still_tears_the_lab_down(tmp_path: Path) -> None:
    """A nested pytest with the lab fixtures: a test that raises, then one killed by
    SIGTERM while its lab runs; both labs go."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    command = [sys.executable, "-m", "pytest", "-p", "labfixtures", "-p", "no:cacheprovider"]
    command += ["-s", "-v", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    inner = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert inner.stdout is not None
    lines = []
    try:
        for line in inner.stdout:
            lines.append(line)
            if "READY" in line:
                break
        assert leftovers() != [], "".join(lines)
        inner.send_signal(signal.SIGTERM)
        rest, _ = inner.communicate(timeout=INNER_RUN_TIMEOUT)
    finally:
        inner.kill()
        inner.wait()
    output = "".join(lines) + rest
    assert "test_inner.py::test_raises FAILED" in output, output
    assert "test_inner.py::test_nothing_left_after_the_raise PASSED" in output, output
    assert "KeyboardInterrupt" in output, output
    assert inner.returncode == pytest.ExitCode.INTERRUPTED, output
    assert leftovers() == []


def test_the_script_cleans_up_after_a_killed_runner(tmp_path: Path) -> None:
    """kill -9 of the process that built a lab leaves everything, its nodes included;
    scripts/fault-teardown.sh removes it all, and runs again on nothing just as well."""
    pids = _lab_of_a_killed_runner(tmp_path / "lab")
    for _ in range(2):
        done = subprocess.run(["bash", str(TEARDOWN_SCRIPT)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert leftovers() == []
    _wait_until_gone(pids)
    teardown()  # and the Python entry point, on nothing


def test_a_new_lab_starts_over_a_killed_runners_leftovers(tmp_path: Path) -> None:
    pids = _lab_of_a_killed_runner(tmp_path / "crashed")
    with Lab(tmp_path / "lab", nodes=2) as lab:
        _wait_until_gone(pids)
        assert all(node.running for node in lab.nodes.values())
        assert mqtt_connack(lab.nodes["n1"], "probe-after-crash") == 0
    assert leftovers() == []


def _lab_of_a_killed_runner(workdir: Path) -> list[int]:
    """The node pids of a 2-node lab whose runner died by kill -9, leaving it all up."""
    runner = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUNNER, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    assert runner.stdout is not None
    pids = [int(pid) for pid in runner.stdout.readline().split()]
    runner.kill()
    runner.wait()
    assert len(pids) == 2 and all(_alive(pid) for pid in pids), pids
    assert leftovers() != []
    return pids


def _wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
