"""`raftmq cluster up`: three nodes on loopback that act as one broker, all stopped by SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterkit import free_port_run
from rawmqtt import CONNACK, PUBACK, PUBLISH, SUBACK, RawClient, ack, connect, publish, subscribe

from raftmq.cluster.cli.cluster_up import LocalClusterError, plan_nodes

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
NODES = 3
UP_TIMEOUT = 40.0
NO_MATCHING_SUBSCRIBERS = 0x10


@pytest.fixture
def cluster_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    base = free_port_run(3 * NODES)
    command = [RAFTMQ, "cluster", "up", "--nodes", str(NODES), "--base-port", str(base)]
    proc = subprocess.Popen(
        [*command, "--dir", str(tmp_path / "cluster")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ports: dict[str, int] = {}
        assert proc.stdout is not None
        deadline = time.monotonic() + UP_TIMEOUT
        for line in proc.stdout:
            if line.startswith("node "):
                node_id, _, url = line.split()[1:4]
                ports[node_id] = int(url.rsplit(":", 1)[1])
            if "up; Ctrl-C stops it" in line or time.monotonic() > deadline:
                break
        assert sorted(ports) == ["n1", "n2", "n3"], f"cluster up printed {ports}"
        assert ports == {f"n{i + 1}": base + 3 * i for i in range(NODES)}
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def connected(port: int, client_id: str) -> RawClient:
    """A v5 client; retried while the new cluster elects its first leader."""
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        client = RawClient("127.0.0.1", port)
        client.send(connect(client_id))
        if client.expect(CONNACK, timeout=UP_TIMEOUT).reason_code == 0:
            return client
        client.close()
        assert time.monotonic() < deadline, f"CONNECT of {client_id!r} never accepted"
        time.sleep(0.2)


def test_cluster_up_serves_as_one_broker_and_stops_on_sigterm(
    cluster_up: tuple[subprocess.Popen[str], dict[str, int]], tmp_path: Path
) -> None:
    """Over mutual TLS between nodes: every generated config names the node's own
    certificate from DIR/certs."""
    proc, ports = cluster_up
    certs = tmp_path / "cluster" / "certs"
    for node_id in ports:
        config = tomllib.loads((tmp_path / "cluster" / node_id / "raftmq.toml").read_text())
        assert {key: config[key] for key in config if key.startswith("cluster_tls_")} == {
            "cluster_tls_ca": str(certs / "ca.crt"),
            "cluster_tls_cert": str(certs / f"{node_id}.crt"),
            "cluster_tls_key": str(certs / f"{node_id}.key"),
        }
        assert (certs / f"{node_id}.key").stat().st_mode & 0o777 == 0o600
    subscriber = connected(ports["n2"], "up-sub")
    publisher = connected(ports["n1"], "up-pub")
    try:
        subscriber.send(subscribe(1, [("up/#", 1)]))
        assert subscriber.expect(SUBACK, timeout=10).reason_codes == [1]
        deadline = time.monotonic() + 10
        for packet_id in range(1, 1000):
            # 0x10 until node 1 has applied node 2's route (see test_cluster.wait_for_route).
            publisher.send(publish("up/t", b"hello", qos=1, packet_id=packet_id))
            if publisher.expect(PUBACK, timeout=10).reason_code != NO_MATCHING_SUBSCRIBERS:
                break
            assert time.monotonic() < deadline, "node 1 never learnt node 2's route"
            time.sleep(0.05)
        got = subscriber.expect(PUBLISH)
        assert (got.topic, got.payload) == ("up/t", b"hello")
        assert got.packet_id is not None
        subscriber.send(ack(PUBACK, got.packet_id))
    finally:
        subscriber.close()
        publisher.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert proc.stdout is not None
    assert "cluster stopped" in proc.stdout.read()
    for port in ports.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize(
    ("count", "base", "error"),
    [
        (0, 20000, "--nodes must be at least 1"),
        (3, 65530, "needs ports 65530 to 65538"),
        (1, 0, "needs ports 0 to 2"),
    ],
)
def test_port_plan_errors(count: int, base: int, error: str, tmp_path: Path) -> None:
    with pytest.raises(LocalClusterError, match=error):
        plan_nodes(count, base, tmp_path)


def test_port_plan_gives_each_node_three_consecutive_ports(tmp_path: Path) -> None:
    plans = plan_nodes(2, 30000, tmp_path)
    assert [(p.node_id, p.mqtt_port, p.raft_address, p.grpc_address) for p in plans] == [
        ("n1", 30000, "127.0.0.1:30001", "127.0.0.1:30002"),
        ("n2", 30003, "127.0.0.1:30004", "127.0.0.1:30005"),
    ]
    assert plans[1].directory == tmp_path / "n2"
