"""``raftmq cluster up``: a whole cluster on this machine's loopback, for trying things out.

Node ``i`` (from 0) of ``--nodes N`` gets three consecutive ports from
``--base-port P``: MQTT on ``P+3i``, Raft on ``P+3i+1`` and forwarding (gRPC)
on ``P+3i+2``. Each node has its own directory ``D/n<i+1>`` holding its config
file (with the cluster secret, kept out of ``ps``), its data and its log
(``node.log``). The secret is made once and kept in ``D/cluster.secret``, so a
cluster brought up again on the same ``D`` finds its Raft log readable. So are
a CA and a certificate per node in ``D/certs`` (``raftmq certs node``), with
which the nodes' forwarding streams use mutual TLS.

Once every node listens, the MQTT addresses are printed, one line per node.
Ctrl-C or SIGTERM stops every node gracefully (SIGTERM, then SIGKILL after
``STOP_TIMEOUT``); so does any node exiting on its own, since a cluster with a
node missing is not what was asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

if TYPE_CHECKING:
    from ..tools.certgen import NodeFiles

PORTS_PER_NODE = 3
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SECRET_FILE = "cluster.secret"
CERTS_DIR = "certs"
LISTENING = "listening on "
NODE_COMMAND = (
    sys.executable,
    "-c",
    "import sys; from raftmq.cluster.cli.main import main; sys.exit(main())",
    "node",
)
"""Runs this very installation's ``raftmq node``, whatever is first on PATH."""


class LocalClusterError(Exception):
    """The cluster could not be brought up; the message says which node and why."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    node_id: str
    mqtt_port: int
    raft_address: str
    grpc_address: str
    directory: Path


def plan_nodes(count: int, base_port: int, directory: Path) -> list[NodePlan]:
    if count < 1:
        raise LocalClusterError(f"--nodes must be at least 1, got {count}")
    last = base_port + PORTS_PER_NODE * count - 1
    if base_port < 1 or last > 65535:
        raise LocalClusterError(
            f"--base-port {base_port} with --nodes {count} needs ports {base_port} to {last}, "
            "which must lie within 1 to 65535"
        )
    plans = []
    for index in range(count):
        port = base_port + PORTS_PER_NODE * index
        node_id = f"n{index + 1}"
        plans.append(
            NodePlan(
                node_id,
                port,
                f"127.0.0.1:{port + 1}",
                f"127.0.0.1:{port + 2}",
                directory / node_id,
            )
        )
    return plans


def cluster_secret(directory: Path) -> str:
    """The secret of the cluster kept in ``directory``, made on first use."""
    path = directory / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def cluster_certs(directory: Path, plans: list[NodePlan]) -> dict[str, NodeFiles]:
    """Each node's TLS files in ``directory``: a CA and node certificates, made on
    first use; later runs keep those still signed by the CA and add what is missing."""
    # Imported here: only `cluster up` pays for loading cryptography.
    from ..tools.certgen import issue_node_files, node_files

    ids = [plan.node_id for plan in plans]
    try:
        issue_node_files(directory, ids, if_exists="keep")
    except (OSError, ValueError) as exc:
        raise LocalClusterError(f"cannot make node certificates in {directory}: {exc}") from None
    return {node_id: node_files(directory, node_id) for node_id in ids}


def node_config(plan: NodePlan, plans: list[NodePlan], secret: str, tls: NodeFiles) -> str:
    peers = [f"{p.node_id}={p.raft_address},{p.grpc_address}" for p in plans if p is not plan]
    lines = [
        f"node_id = {_toml_string(plan.node_id)}",
        f"listen = [{_toml_string(f'tcp://127.0.0.1:{plan.mqtt_port}')}]",
        f"data_dir = {_toml_string(str(plan.directory / 'data'))}",
        f"cluster_secret = {_toml_string(secret)}",
        f"raft_listen = {_toml_string(plan.raft_address)}",
        f"grpc_listen = {_toml_string(plan.grpc_address)}",
        "peers = [" + ", ".join(_toml_string(peer) for peer in peers) + "]",
        f"cluster_tls_ca = {_toml_string(str(tls.ca))}",
        f"cluster_tls_cert = {_toml_string(str(tls.cert))}",
        f"cluster_tls_key = {_toml_string(str(tls.key))}",
    ]
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalNodes:
    """The node processes of one ``cluster up``."""

    def __init__(self, plans: list[NodePlan], secret: str, certs: Path) -> None:
        self.plans = plans
        self.secret = secret
        self.certs = certs
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.addresses: dict[str, str] = {}

    async def start(self) -> None:
        tls = cluster_certs(self.certs, self.plans)
        for plan in self.plans:
            plan.directory.mkdir(parents=True, exist_ok=True)
            config = plan.directory / "raftmq.toml"
            config.touch(mode=0o600)
            config.write_text(node_config(plan, self.plans, self.secret, tls[plan.node_id]))
            with open(plan.directory / "node.log", "ab") as log:
                self.procs[plan.node_id] = await asyncio.create_subprocess_exec(
                    *NODE_COMMAND,
                    "--config",
                    str(config),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
        waits = (self._wait_listening(plan) for plan in self.plans)
        await asyncio.gather(*waits)

    async def _wait_listening(self, plan: NodePlan) -> None:
        proc = self.procs[plan.node_id]
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = (await proc.stdout.readline()).decode(errors="replace")
                    if not line:
                        log = plan.directory / "node.log"
                        raise LocalClusterError(f"node {plan.node_id} exited; see {log}")
                    if LISTENING in line:
                        self.addresses[plan.node_id] = line.split(LISTENING, 1)[1].strip()
                        return
        except TimeoutError:
            raise LocalClusterError(
                f"node {plan.node_id} did not listen within {START_TIMEOUT:.0f} s"
            ) from None

    async def wait_any_exit(self) -> str:
        """The id of the first node process to end."""
        waits = {
            asyncio.ensure_future(proc.wait()): node_id for node_id, proc in self.procs.items()
        }
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]

    async def stop(self) -> None:
        running = [proc for proc in self.procs.values() if proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in running:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def run_cluster(count: int, base_port: int, directory: Path) -> int:
    plans = plan_nodes(count, base_port, directory)
    directory.mkdir(parents=True, exist_ok=True)
    cluster = LocalNodes(plans, cluster_secret(directory), directory / CERTS_DIR)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cluster.start()
        for plan in plans:
            print(f"node {plan.node_id} mqtt {cluster.addresses[plan.node_id]}", flush=True)
        print(f"cluster of {count} up; Ctrl-C stops it", flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(cluster.wait_any_exit())
        done, _ = await asyncio.wait((stopped, exited), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        exited.cancel()
        if exited in done:
            node_id = exited.result()
            print(
                f"raftmq: error: node {node_id} exited; see {directory / node_id / 'node.log'}",
                file=sys.stderr,
            )
            return 1
        return 0
    except LocalClusterError as exc:
        print(f"raftmq: error: {exc}", file=sys.stderr)
        return 1
    finally:
        await cluster.stop()
        print("cluster stopped", flush=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``cluster`` (with ``up``) on the given subparsers."""
    cluster = subparsers.add_parser("cluster", help="run and operate clusters")
    commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="run a local cluster on loopback until Ctrl-C",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--nodes", type=int, default=3, metavar="N", help="how many nodes (3)")
    up.add_argument(
        "--base-port", type=int, required=True, metavar="P", help="first of the 3*N ports used"
    )
    up.add_argument(
        "--dir", type=Path, required=True, metavar="D", help="directory for the nodes' files"
    )
    up.set_defaults(handler=_run_up)
    from ..admin.cli import add_commands as add_admin_commands  # status, node-down

    add_admin_commands(commands)


def _run_up(args: argparse.Namespace) -> int:
    try:
        plan_nodes(args.nodes, args.base_port, args.dir)
    except LocalClusterError as exc:
        print(f"raftmq: error: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_cluster(args.nodes, args.base_port, args.dir))
