"""Small probes of a lab, for the tests that prove the lab does what it claims.

Each answers one question with real traffic: does a node answer MQTT from the root
namespace, can one node's namespace open a TCP connection to another node.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lab import Lab, LabNode

PROBE_TIMEOUT = 1.0
CONNACK_TIMEOUT = 10.0
"""A CONNECT waits for its claim's Raft commit: generous on a loaded machine."""
PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"
_CONNECT_FROM_INSIDE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
    "except OSError as exc:\n"
    "    sys.exit(f'{exc!r}')\n"
)


class MqttProbe:
    """A raw MQTT 3.1.1 connection from the root namespace to one node (``mqtt_probe``).

    Raw, not paho: a probe must see a missing answer as a ``TimeoutError`` right away,
    with no client library retrying behind its back.
    """

    def __init__(self, node: LabNode, sock: socket.socket) -> None:
        self.node = node
        self.sock = sock

    def connect(self, client_id: str, timeout: float = CONNACK_TIMEOUT) -> int:
        """CONNECT with a clean session; the CONNACK's return code."""
        name = client_id.encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name
        self.sock.sendall(bytes([0x10, len(body)]) + body)
        connack = self._read(4, timeout)
        if connack[:2] != b"\x20\x02":
            raise AssertionError(f"node {self.node.node_id} answered CONNECT with {connack!r}")
        return connack[3]

    def ping(self, timeout: float = PROBE_TIMEOUT) -> None:
        """PINGREQ, and its PINGRESP within ``timeout`` (a node answers it by itself)."""
        self.sock.sendall(PINGREQ)
        answer = self._read(2, timeout)
        assert answer == PINGRESP, f"node {self.node.node_id} answered PINGREQ with {answer!r}"

    def _read(self, size: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(size, socket.MSG_WAITALL)
        if len(data) < size:
            raise ConnectionError(f"node {self.node.node_id} closed the probe after {data!r}")
        return data


@contextmanager
def mqtt_probe(node: LabNode, timeout: float = PROBE_TIMEOUT) -> Iterator[MqttProbe]:
    """A TCP connection to ``node``'s MQTT port, closed at the end of the ``with``."""
    with socket.create_connection((node.address, node.mqtt_port), timeout=timeout) as sock:
        yield MqttProbe(node, sock)


def mqtt_connack(node: LabNode, client_id: str, timeout: float = CONNACK_TIMEOUT) -> int:
    """A fresh connection's CONNACK return code; ``TimeoutError`` when none comes."""
    with mqtt_probe(node) as probe:
        return probe.connect(client_id, timeout)


def tcp_reaches(lab: Lab, source: str, target: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether node ``source``'s namespace can open a TCP connection to ``target``'s MQTT
    port (the one node-to-node path a probe can use without the broker's secrets)."""
    node = lab.nodes[target]
    argv = [sys.executable, "-I", "-c", _CONNECT_FROM_INSIDE]
    argv += [node.address, str(node.mqtt_port), str(timeout)]
    done = subprocess.run(
        lab.network.in_namespace(source, argv),
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    return done.returncode == 0
