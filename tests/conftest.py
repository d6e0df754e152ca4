"""Fixtures that run real broker processes for the integration tests.

Every broker is a separate OS process on loopback with a port the OS picked,
so tests never collide and a crashing broker cannot take pytest down with it.
Setting ``RAFTMQ_TEST_BROKER=mosquitto`` runs the same tests against
Mosquitto instead: that is how we check that a test encodes the MQTT
specification rather than raftmq's reading of it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
LISTENING = re.compile(r"listening on (\w+)://([\d.]+):(\d+)")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# raftmq config keys and the Mosquitto options that mean the same thing.
MOSQUITTO_EQUIVALENTS = {
    "max_packet_size": "max_packet_size",
    "max_keepalive": "max_keepalive",
    "max_inflight": "max_inflight_messages",
    "max_queued_messages": "max_queued_messages",
    "topic_alias_maximum": "max_topic_alias",
    "sys_interval": "sys_interval",
    "password_file": "password_file",
    "acl_file": "acl_file",
    "allow_anonymous": "allow_anonymous",
}
MOSQUITTO_GLOBAL = {"password_file", "acl_file", "allow_anonymous"}
"""Settings Mosquitto takes once for the whole broker (without per_listener_settings)."""


@dataclass
class RunningBroker:
    """A broker process and the addresses it listens on."""

    proc: subprocess.Popen[str]
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    ws_port: int = 0
    output: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    """The raftmq command line, so that restart() can run the node again; empty for Mosquitto."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the broker and wait for it; kill it if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no shutdown path runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Run the node again, after stop() or kill(), on the same data dir and ports."""
        assert self.command, "only raftmq nodes can be restarted"
        assert self.proc.poll() is not None, "restart() of a broker that is still running"
        listen = [f"tcp://{self.host}:{self.port}"]
        if self.ws_port:
            listen.append(f"ws://{self.host}:{self.ws_port}/mqtt")
        flags = [arg for url in listen for arg in ("--listen", url)]
        self.proc = subprocess.Popen(
            [*self.command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output = []
        _wait_listening(self, expected=len(listen))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _mosquitto_value(value: object) -> str:
    """A value as mosquitto.conf writes it: strings (paths) bare, the rest as in TOML."""
    return value if isinstance(value, str) else _toml_value(value)


def _pump_output(proc: subprocess.Popen[str], lines: list[str]) -> None:
    """Collect the broker's output so its pipe never fills and failures can show it."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))


def _start_raftmq(tmp: Path, config: dict[str, object]) -> RunningBroker:
    data_dir = tmp / "data"
    config_file = tmp / "raftmq.toml"
    listen = config.pop("listen", ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/mqtt"])
    body = {"listen": listen, "data_dir": str(data_dir), **config}
    config_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items()))
    return run_node_on_file(config_file, data_dir, len(listen))  # type: ignore[arg-type]


def run_node_on_file(config_file: Path, data_dir: Path, listeners: int) -> RunningBroker:
    """`raftmq node --config FILE`, returned once it printed ``listeners`` listening lines
    of different schemes; the caller stops it."""
    command = [RAFTMQ, "node", "--config", str(config_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    broker = RunningBroker(proc=proc, data_dir=data_dir, command=command)
    _wait_listening(broker, expected=listeners)
    return broker


def _start_mosquitto(tmp: Path, config: dict[str, object]) -> RunningBroker:
    unknown = set(config) - set(MOSQUITTO_EQUIVALENTS)
    if unknown:
        pytest.skip(f"raftmq-only settings {sorted(unknown)} have no Mosquitto equivalent")
    port, ws_port = _free_port(), _free_port()
    # Mosquitto applies some options (max_topic_alias...) per listener, so those
    # follow each listener line; security files may be named once only, up front.
    config.setdefault("allow_anonymous", True)
    written = {k: f"{MOSQUITTO_EQUIVALENTS[k]} {_mosquitto_value(v)}" for k, v in config.items()}
    once = [line for key, line in written.items() if key in MOSQUITTO_GLOBAL]
    settings = [line for key, line in written.items() if key not in MOSQUITTO_GLOBAL]
    lines = [
        *once,
        # As root Mosquitto would drop to the "mosquitto" user, which cannot read
        # the files the test made in its private temporary directory.
        "user root",
        "persistence false",
        f"listener {port} 127.0.0.1",
        *settings,
        f"listener {ws_port} 127.0.0.1",
        "protocol websockets",
        *settings,
    ]
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        ["mosquitto", "-v", "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    broker = RunningBroker(proc=proc, data_dir=tmp, port=port, ws_port=ws_port)
    _collect_output(broker)
    deadline = time.monotonic() + START_TIMEOUT
    waiting = [port, ws_port]
    while waiting and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2).close()
            waiting.pop(0)
        except OSError:
            time.sleep(0.05)
    if waiting:
        broker.kill()
        raise RuntimeError(f"mosquitto did not start listening on port {waiting[0]}")
    return broker


def _collect_output(broker: RunningBroker) -> None:
    threading.Thread(target=_pump_output, args=(broker.proc, broker.output), daemon=True).start()


def _wait_listening(broker: RunningBroker, expected: int) -> None:
    _collect_output(broker)
    deadline = time.monotonic() + START_TIMEOUT
    found: dict[str, int] = {}
    while time.monotonic() < deadline and len(found) < expected:
        for line in list(broker.output):
            m = LISTENING.search(line)
            if m:
                found[m.group(1)] = int(m.group(3))
        if broker.proc.poll() is not None:
            break
        time.sleep(0.02)
    if len(found) < expected:
        broker.kill()
        output = "\n".join(broker.output)
        raise RuntimeError(f"raftmq node did not start listening; its output:\n{output}")
    broker.port = found.get("tcp", 0)
    broker.ws_port = found.get("ws", 0)


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., RunningBroker]]:
    """Start brokers with given config keys; all are stopped and their dirs removed after."""
    started: list[RunningBroker] = []
    tmp_dirs: list[Path] = []
    which = os.environ.get("RAFTMQ_TEST_BROKER", "raftmq")

    def start(**config: object) -> RunningBroker:
        tmp = Path(tempfile.mkdtemp(prefix="raftmq-test-"))
        tmp_dirs.append(tmp)
        starter = _start_mosquitto if which == "mosquitto" else _start_raftmq
        broker = starter(tmp, dict(config))
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
    for tmp in tmp_dirs:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def node_on_file() -> Iterator[Callable[[Path], RunningBroker]]:
    """Run `raftmq node --config FILE` on config files the test wrote; all stopped after.

    The test owns the file's paths (data_dir included) and removes them.
    """
    from raftmq.node.config import load_config

    started: list[RunningBroker] = []

    def start(config_file: Path) -> RunningBroker:
        config = load_config(config_file)
        schemes = {address.scheme for address in config.listen}
        started.append(run_node_on_file(config_file, Path(config.data_dir), len(schemes)))
        return started[-1]

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A loopback TCP port nobody listens on right now."""
    return _free_port


@pytest.fixture
def broker(broker_factory: Callable[..., RunningBroker]) -> RunningBroker:
    """One broker with default settings on loopback TCP and WebSocket."""
    return broker_factory()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "raftmq_only: checks a raftmq choice that Mosquitto makes differently"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("RAFTMQ_TEST_BROKER") != "mosquitto":
        return
    skip = pytest.mark.skip(reason="raftmq-specific behaviour; Mosquitto differs here")
    for item in items:
        if "raftmq_only" in item.keywords:
            item.add_marker(skip)
