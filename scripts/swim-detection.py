#!/usr/bin/env python3
"""How fast SWIM confirms a node dead, measured on real nodes on this machine (issue 12).

Starts N `raftmq node` processes on loopback, then for each trial takes one
node (in turn) and either kills it (``--fault kill``: kill -9, then restarts
it on the same data dir) or stops it (``--fault stop``: SIGSTOP until a
survivor confirms it dead, then SIGCONT), and times how long until every
survivor's log says "SWIM member nX suspect -> dead". ``--fault pause``
instead stops it for ``--pause`` seconds (1 s) and counts the survivors that
declared it dead anyway: false positives, which must be 0.

    .venv/bin/python scripts/swim-detection.py --fault kill --trials 20
    .venv/bin/python scripts/swim-detection.py --fault pause --trials 20

Prints each trial and then the median, p99 and max (kill, stop) or the false
positives (pause). Every process it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
SECRET = "swim-detection-script-cluster-secret"
DEAD = re.compile(
    r"^(\S+ \S+) WARNING raftmq\.cluster\.swim: node (\w+): SWIM member (\w+) \S+ -> dead"
)
ALIVE = re.compile(r"SWIM member (\w+) \S+ -> alive")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Node:
    def __init__(self, workdir: Path, node_id: str, raft: str, grpc: str, peers: list[str]):
        self.node_id = node_id
        self.log = workdir / f"{node_id}.log"
        self.config = workdir / f"{node_id}.toml"
        self.config.write_text(
            f'node_id = "{node_id}"\nlisten = ["tcp://127.0.0.1:0"]\n'
            f'data_dir = "{workdir / node_id}"\ncluster_secret = "{SECRET}"\n'
            f'raft_listen = "{raft}"\ngrpc_listen = "{grpc}"\nsys_interval = 0\n'
            f"peers = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in peers)}]\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [RAFTMQ, "node", "--config", str(self.config)], stdout=out, stderr=out
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def deaths_after(nodes: list[Node], victim: str, since: float) -> dict[str, float]:
    """Survivor -> when its log says ``victim`` is dead, for deaths logged after ``since``."""
    found = {}
    for node in nodes:
        if node.node_id == victim:
            continue
        for line in node.lines():
            match = DEAD.match(line)
            if match and match[3] == victim and stamp(match[1]) >= since:
                found.setdefault(node.node_id, stamp(match[1]))
    return found


def wait_all_alive(nodes: list[Node], timeout: float) -> None:
    """Until every node's log shows every other node alive (a cluster just started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all({n.node_id for n in nodes if n is not node} <= alive_in(node, 0) for node in nodes):
            return
        time.sleep(0.2)
    raise SystemExit(f"the nodes did not all see each other alive within {timeout:g} s")


def wait_back(nodes: list[Node], victim: Node, marks: dict[str, int], timeout: float) -> None:
    """Until every other node's log, after ``marks``, shows ``victim`` alive again."""
    deadline = time.monotonic() + timeout
    others = [n for n in nodes if n is not victim]
    while time.monotonic() < deadline:
        if all(victim.node_id in alive_in(n, marks[n.node_id]) for n in others):
            return
        time.sleep(0.2)
    raise SystemExit(f"{victim.node_id} was not seen alive again within {timeout:g} s")


def alive_in(node: Node, after_line: int) -> set[str]:
    return {m[1] for line in node.lines()[after_line:] if (m := ALIVE.search(line))}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def confirmed_dead(nodes: list[Node], victim: Node, began: float) -> float:
    """Seconds from ``began`` until every survivor logged ``victim`` dead."""
    survivors = len(nodes) - 1
    deadline = time.monotonic() + 30
    dead: dict[str, float] = {}
    while len(dead) < survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        dead = deaths_after(nodes, victim.node_id, began)
    if len(dead) < survivors:
        raise SystemExit(f"{victim.node_id} not confirmed dead by all within 30 s: {dead}")
    return max(dead.values()) - began


def trial(nodes: list[Node], victim: Node, fault: str, pause: float) -> float | int:
    """One fault on ``victim``: seconds to detection (kill, stop), or how many survivors
    declared it dead (pause), once it is back and seen alive."""
    marks = {n.node_id: len(n.lines()) for n in nodes}
    time.sleep(1.0)
    began = time.time()
    victim.signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    if fault == "pause":
        time.sleep(pause)
        victim.signal(signal.SIGCONT)
        time.sleep(10.0)
        return len(deaths_after(nodes, victim.node_id, began))
    took = confirmed_dead(nodes, victim, began)
    if fault == "kill":
        victim.start()
    else:
        victim.signal(signal.SIGCONT)
    wait_back(nodes, victim, marks, 60)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--fault", choices=("kill", "stop", "pause"), default="kill")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds a --fault pause lasts")
    args = parser.parse_args()
    ports = free_ports(2 * args.nodes)
    ids = [f"n{i + 1}" for i in range(args.nodes)]
    raft = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(ids)}
    grpc = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(ids)}
    with tempfile.TemporaryDirectory(prefix="raftmq-swim-") as tmp:
        workdir = Path(tmp)
        nodes = []
        for n in ids:
            peers = [f"{p}={raft[p]},{grpc[p]}" for p in ids if p != n]
            nodes.append(Node(workdir, n, raft[n], grpc[n], peers))
        try:
            for node in nodes:
                node.start()
            wait_all_alive(nodes, 60)
            results = []
            for i in range(args.trials):
                victim = nodes[i % len(nodes)]
                result = trial(nodes, victim, args.fault, args.pause)
                results.append(result)
                what = "survivors declared it dead" if args.fault == "pause" else "s to detect"
                print(f"trial {i + 1}: {args.fault} {victim.node_id}: {result:.2f} {what}")
        finally:
            for node in nodes:
                node.stop()
    if args.fault == "pause":
        wrong = int(sum(results))
        pauses = f"{args.trials} pauses of {args.pause:g} s on {args.nodes} nodes"
        print(f"\n{pauses}: {wrong} false positives")
        return 1 if wrong else 0
    times = [float(r) for r in results]
    print(
        f"\n{args.fault}, {args.nodes} nodes, {len(times)} trials: "
        f"median {statistics.median(times):.2f} s, p99 {percentile(times, 99):.2f} s, "
        f"max {max(times):.2f} s"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
