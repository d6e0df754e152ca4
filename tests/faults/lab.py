"""The fault lab: a raftmq cluster of real `raftmq node` processes, one per network namespace.

``Lab`` is what a fault test holds (see /work/shared/helpers/i11-interfaces.md): it
builds the network (``labnet.LabNetwork``), writes each node's config, starts the
nodes, and answers who leads Raft. ``LabNode`` is one node's process: start on its
data dir, kill -9, pause (SIGSTOP) and resume. Clients stay in the root namespace
and reach node ``nI`` at ``10.77.0.(10+I):1883``.

Every node listens on the same fixed ports of its own address, which is what a
namespace per node buys: configs are known before any node starts, and a restarted
node comes back where its peers expect it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w
from labnet import DEFAULT_SUBNET, LabNetwork, unavailable_reason

from raftmq.cluster.admin.client import AdminCallFailed, AdminClient

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
MQTT_PORT = 1883
RAFT_PORT = 7000
GRPC_PORT = 7001
SECRET = "fault-lab-cluster-secret"
LISTENING = "listening on "
START_TIMEOUT = 30.0
"""A node's start (imports, Raft journal, listeners) on a loaded 2-core machine."""
STOP_TIMEOUT = 10.0
PAUSE_TIMEOUT = 5.0
LEADER_TIMEOUT = 30.0
STATUS_TIMEOUT = 2.0
"""Per admin call: a paused or cut-off node must not hold ``leader()`` up for long."""


class LabNode:
    """One `raftmq node` process in its namespace; its data dir survives kill and start."""

    def __init__(self, network: LabNetwork, node_id: str, workdir: Path) -> None:
        self.node_id = node_id
        self.address = network.address(node_id)
        self.mqtt_port = MQTT_PORT
        self.grpc_address = f"{self.address}:{GRPC_PORT}"
        self.data_dir = workdir / node_id
        self.config_file = workdir / f"{node_id}.toml"
        self.log_path = workdir / f"{node_id}.log"
        self._command = network.in_namespace(
            node_id, [RAFTMQ, "node", "--config", str(self.config_file)]
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists (a paused node is running)."""
        return self._proc is not None and self._proc.poll() is None

    def launch(self) -> None:
        """Start the process, appending to its log; ``wait_listening`` waits for it."""
        if self.running:
            raise RuntimeError(f"node {self.node_id} (pid {self.pid}) is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Until the node printed its "listening on" line (its MQTT listener is up)."""
        deadline = time.monotonic() + timeout
        while LISTENING not in self._new_output():
            if not self.running:
                raise RuntimeError(
                    f"node {self.node_id} exited with {self._exit_code()} before listening; "
                    f"{self.log_path}:\n{self._new_output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"node {self.node_id} did not listen within {timeout} s; "
                    f"{self.log_path}:\n{self._new_output()[-3000:]}"
                )
            time.sleep(0.02)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node on its data dir (again, after ``kill``), once it listens."""
        self.launch()
        self.wait_listening(timeout)

    def kill(self) -> None:
        """kill -9: no shutdown path runs (a paused node dies too)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)

    def pause(self, timeout: float = PAUSE_TIMEOUT) -> None:
        """SIGSTOP, returning once every thread is stopped.

        SIGSTOP is delivered asynchronously: until each thread's state is ``T`` some
        may still run, and the fault window must not start before they all stop.
        """
        proc = self._live_process("pause")
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _all_stopped(thread_states(proc.pid)):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.node_id} (pid {proc.pid}) not stopped {timeout} s after "
                    f"SIGSTOP: thread states {thread_states(proc.pid)}"
                )
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT; nothing when the node is not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def paused(self) -> bool:
        """Every thread is stopped (SIGSTOP, no SIGCONT since)."""
        return self.running and self.pid is not None and _all_stopped(thread_states(self.pid))

    def output(self) -> str:
        """Everything the node printed, over all its starts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _live_process(self, action: str) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"cannot {action} node {self.node_id}: it is not running")
        return self._proc

    def _new_output(self) -> str:
        """What the node printed since its last start."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _exit_code(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None


def thread_states(pid: int) -> list[str]:
    """The scheduler state letter of each thread of ``pid`` (``/proc/PID/task/*/stat``)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        # "tid (comm) S ...": comm may hold spaces and parentheses, so split at the last ")".
        states.append(text.rsplit(")", 1)[1].split()[0])
    return states


def _all_stopped(states: list[str]) -> bool:
    """``T`` is a job-control stop; an empty list (the process is gone) is not stopped."""
    return bool(states) and all(state == "T" for state in states)


class Lab:
    """``nodes`` raftmq nodes ``n1..nN``, each in its own namespace; a context manager.

    ``config`` keys go into every node's config after the lab's own (durability disk,
    the cluster secret, fixed ports), so a test may override any of them.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: int = 3,
        subnet: str = DEFAULT_SUBNET,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.network = LabNetwork(ids, subnet)
        self.nodes = {node_id: LabNode(self.network, node_id, workdir) for node_id in ids}
        self._extra = dict(config or {})

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Node id -> the (host, port) its MQTT clients connect to, as ``Workload`` takes it."""
        return {node_id: (node.address, node.mqtt_port) for node_id, node in self.nodes.items()}

    @staticmethod
    def available() -> str | None:
        """None when the lab can run on this machine, else the reason to skip."""
        return unavailable_reason()

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the network, then start every node; all of it goes again on failure."""
        try:
            self.network.up()
            self.workdir.mkdir(parents=True, exist_ok=True)
            for node in self.nodes.values():
                node.config_file.write_text(tomli_w.dumps(self.node_config(node)))
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.wait_listening()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every node and tear the network down; idempotent."""
        try:
            for node in self.nodes.values():
                node.kill()
        finally:
            self.network.down()

    def node_config(self, node: LabNode) -> dict[str, Any]:
        peers = [
            f"{other.node_id}={other.address}:{RAFT_PORT},{other.grpc_address}"
            for other in self.nodes.values()
            if other is not node
        ]
        return {
            "node_id": node.node_id,
            "listen": [f"tcp://{node.address}:{node.mqtt_port}"],
            "data_dir": str(node.data_dir),
            "durability": "disk",
            # Clients come from the bridge address, not loopback: without this the node
            # would refuse anonymous clients on a non-loopback listener.
            "allow_anonymous": True,
            "sys_interval": 0,
            "cluster_secret": SECRET,
            "raft_listen": f"{node.address}:{RAFT_PORT}",
            "grpc_listen": node.grpc_address,
            "peers": peers,
            **self._extra,
        }

    # -- the network, for the nemeses -----------------------------------------------------

    def partition(self, grudge: dict[str, set[str]]) -> None:
        self.network.partition(grudge)

    def heal(self) -> None:
        self.network.heal()

    # -- Raft --------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The Raft leader a majority of the nodes names, else None.

        Each running, unpaused node is asked (admin Status, as `raftmq cluster status`
        asks); a cut-off old leader may still believe in itself, so one node's word
        is not enough.
        """
        asked = [n for n in self.nodes.values() if n.running and not n.paused]
        views = asyncio.run(_leaders_seen(asked))
        named = Counter(leader for leader in views if leader is not None)
        if not named:
            return None
        leader, votes = named.most_common(1)[0]
        return leader if votes > len(self.nodes) // 2 else None

    def wait_for_leader(self, timeout: float = LEADER_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (leader := self.leader()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Raft leader named by a majority within {timeout} s")
            time.sleep(0.2)
        return leader


async def _leaders_seen(nodes: list[LabNode]) -> list[str | None]:
    return await asyncio.gather(*(_leader_seen_by(node) for node in nodes))


async def _leader_seen_by(node: LabNode) -> str | None:
    """Whom ``node`` takes for the Raft leader; None when it knows none or cannot say."""
    try:
        async with AdminClient(
            node.node_id, node.grpc_address, SECRET.encode(), timeout=STATUS_TIMEOUT
        ) as client:
            status = await client.status()
    except AdminCallFailed:
        return None
    leader = status.get("leader")
    return leader if isinstance(leader, str) and leader else None
