"""The brokers ``bench compare`` measures, each started fresh on a free loopback port.

Every broker runs in a process group of its own (``start_new_session``), so
stopping it stops whatever it forked, and the group id is handed to
``on_group`` at once: ``scripts/bench-compare.sh`` keeps those ids and kills
the groups on exit even if the Python process driving the runs was itself
killed. Each broker gets its own defaults, with only what a loopback
benchmark needs on top (an anonymous listener, no persistence file, no
per-packet logging); ``config`` says exactly what, for BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from raftmq.cluster.cli.cluster_up import PORTS_PER_NODE
from raftmq.cluster.tools.bench.machine import port_range
from raftmq.cluster.tools.bench.plan import Address
from raftmq.node.codec import encode
from raftmq.node.packets import Connect

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class BrokerStartError(Exception):
    """A broker exited or did not accept connections within START_TIMEOUT."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_line(command: list[str]) -> str:
    """First non-empty line a command prints, or "unknown" if it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


@dataclass(frozen=True, slots=True)
class BrokerKind(ABC):
    """How to run one broker.

    ``timeout`` is what a full-size run may take (bench ``--timeout``, plus
    a scenario's own duration). A ``reducible`` broker that cannot finish a
    full-size run within it gets smaller runs, and the report says so.
    """

    name: str
    timeout: float
    reducible: bool = False

    @abstractmethod
    def command(self, port: int, workdir: Path) -> list[str]:
        """The command line that runs this broker on 127.0.0.1:``port``."""

    @abstractmethod
    def version(self) -> str:
        """The version of the installed broker, for the machine details."""

    @property
    @abstractmethod
    def config(self) -> str:
        """What the broker runs with, in a sentence of Markdown."""


@dataclass(frozen=True, slots=True)
class Mosquitto(BrokerKind):
    executable: str = "mosquitto"
    extra_config: str = ""

    def command(self, port: int, workdir: Path) -> list[str]:
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            + (self.extra_config + "\n" if self.extra_config else "")
        )
        return [self.executable, "-c", str(conf)]

    def version(self) -> str:
        # "mosquitto version 2.0.11" is the first line of its usage text.
        return _first_line([self.executable, "-h"]).removeprefix("mosquitto version ")

    @property
    def config(self) -> str:
        extra = f", {self.extra_config!r}" if self.extra_config else ""
        return (
            "defaults (max_inflight_messages 20, max_queued_messages 1000, unlimited "
            "connections, set_tcp_nodelay false: Nagle's algorithm on) + "
            f"`persistence false`{extra}"
        )


@dataclass(frozen=True, slots=True)
class Amqtt(BrokerKind):
    executable: str = "amqtt"

    def command(self, port: int, workdir: Path) -> list[str]:
        # The default config also loads two logging plugins (one logs every
        # packet) and the $SYS plugin; a benchmark wants neither.
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        return [self.executable, "-c", str(conf)]

    def version(self) -> str:
        return _first_line([self.executable, "--version"])

    @property
    def config(self) -> str:
        return (
            "`amqtt -c` with one TCP listener and the anonymous-auth plugin only "
            "(no logging or $SYS plugins)"
        )


@dataclass(frozen=True, slots=True)
class Raftmq(BrokerKind):
    executable: str = str(Path(sys.executable).parent / "raftmq")
    extra_args: tuple[str, ...] = ()
    """More `raftmq node` options, e.g. ("--acl-file", PATH) to measure what an ACL costs."""

    def command(self, port: int, workdir: Path) -> list[str]:
        return [
            self.executable,
            "node",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--data-dir",
            str(workdir / "raftmq-data"),
            *self.extra_args,
        ]

    def version(self) -> str:
        from importlib.metadata import version

        return version("raftmq")

    @property
    def config(self) -> str:
        extra = f" + `{' '.join(self.extra_args)}`" if self.extra_args else ""
        return f"`raftmq node` defaults (max_inflight 20, max_queued_messages 1000){extra}"


@dataclass(eq=False)
class RunningBroker:
    kind: BrokerKind
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        stop_group(self.process)
        self._log.close()


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process group led by ``process``, SIGKILL it if it lingers."""
    kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)
    # A forked child could outlive the leader: the group goes too.
    kill_group(process.pid, signal.SIGKILL)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def start_broker(kind: BrokerKind, workdir: Path, on_group: Callable[[int], None]) -> RunningBroker:
    """Start ``kind`` on a free loopback port and wait until it accepts connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"{kind.name}.log"
    log = log_path.open("wb")
    command = kind.command(port, workdir)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise BrokerStartError(f"{kind.name}: cannot run {command[0]}: {exc}") from None
    on_group(process.pid)
    broker = RunningBroker(kind, port, process, log_path, log)
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(port):
        if process.poll() is not None or time.monotonic() > deadline:
            broker.stop()
            state = (
                f"exited with status {process.returncode}"
                if process.returncode is not None
                else f"did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:g} s"
            )
            raise BrokerStartError(f"{kind.name} {state}; its log:\n{broker.log_tail()}")
        time.sleep(0.05)
    return broker


# -- a local cluster -----------------------------------------------------------------

# `raftmq cluster up` prints one "node ID mqtt ADDRESS" line per node once all listen.
_NODE_LINE = re.compile(r"^node (\S+) mqtt (\S+)$", re.MULTILINE)
_PLAIN_SCHEMES = ("tcp", "mqtt")
READY_TIMEOUT = 30.0
"""Leader election and a first committed claim on every node, on a loaded machine."""


@dataclass(eq=False)
class RunningCluster:
    """``raftmq cluster up`` and its nodes, one process group; MQTT addresses in node order."""

    process: subprocess.Popen[bytes]
    addresses: list[Address]
    log_path: Path
    _log: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        stop_group(self.process)
        self._log.close()


def free_port_run(length: int) -> int:
    """A base port whose ``length`` consecutive ports are free now, below the ephemeral range.

    Below it, no outgoing connection (a bench run opens thousands) takes one
    of them between this check and the nodes' bind.
    """
    low = (port_range() or (32768, 60999))[0]
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, low - length)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + length):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise BrokerStartError(f"no run of {length} free ports found below {low}")


def parse_mqtt_address(node_id: str, text: str) -> Address:
    """``tcp://host:port`` (or a bare ``host:port``) as printed by ``cluster up``."""
    if "://" in text:
        url = urlsplit(text)
        if url.scheme not in _PLAIN_SCHEMES or url.hostname is None or url.port is None:
            raise BrokerStartError(
                f"node {node_id}: cannot bench {text!r}: raftmq bench speaks plain MQTT over TCP"
            )
        return url.hostname, url.port
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise BrokerStartError(f"node {node_id}: cannot read the MQTT address {text!r}")
    return host.strip("[]"), int(port)


def accepts_connect(address: Address, client_id: str) -> bool:
    """Whether the broker answers an MQTT 3.1.1 CONNECT with CONNACK 0 (a cluster node:
    only once it can commit the claim)."""
    try:
        with socket.create_connection(address, timeout=5.0) as sock:
            sock.sendall(encode(Connect(client_id, protocol_level=4, keepalive=10), 4))
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return connack[0] == 0x20 and connack[3] == 0


def start_cluster(nodes: int, workdir: Path, on_group: Callable[[int], None]) -> RunningCluster:
    """``raftmq cluster up --nodes N`` on free loopback ports, used as a black box: the
    addresses it prints, once every node accepts a CONNECT."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = free_port_run(PORTS_PER_NODE * nodes)
    log_path = workdir / "cluster-up.log"
    log = log_path.open("wb")
    command = [
        str(Path(sys.executable).parent / "raftmq"),
        "cluster",
        "up",
        "--nodes",
        str(nodes),
        "--base-port",
        str(base),
        "--dir",
        str(workdir / "cluster"),
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    on_group(process.pid)
    cluster = RunningCluster(process, [], log_path, log)
    deadline = time.monotonic() + START_TIMEOUT + READY_TIMEOUT
    try:
        while len(cluster.addresses) < nodes:
            found = _NODE_LINE.findall(log_path.read_text(errors="replace"))
            cluster.addresses = [parse_mqtt_address(n, a) for n, a in found[:nodes]]
            _check_alive(cluster, deadline, f"print {nodes} node addresses")
            time.sleep(0.05)
        for index, address in enumerate(cluster.addresses, 1):
            while not accepts_connect(address, f"bench-ready-{index}"):
                _check_alive(cluster, deadline, f"accept a CONNECT on node {index}")
                time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _check_alive(cluster: RunningCluster, deadline: float, what: str) -> None:
    if cluster.process.poll() is not None:
        raise BrokerStartError(
            f"raftmq cluster up exited with status {cluster.process.returncode}; "
            f"its output:\n{cluster.log_tail()}"
        )
    if time.monotonic() > deadline:
        raise BrokerStartError(
            f"raftmq cluster up did not {what} within {START_TIMEOUT + READY_TIMEOUT:g} s; "
            f"its output:\n{cluster.log_tail()}"
        )
