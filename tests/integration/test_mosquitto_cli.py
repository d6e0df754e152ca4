"""Eclipse's mosquitto_pub / mosquitto_sub against the broker, for MQTT 3.1.1 and 5.

These are the tools operators reach for first, written in C on libmosquitto, so
they exercise a third packet encoder. mosquitto_sub runs with ``-d`` so the test
can see its SUBACK before publishing, and with a ``-F`` format that prints topic,
QoS, retain flag, user properties and payload on one parseable line.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from clients import unique

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0
VERSIONS = ["mqttv311", "mqttv5"]
FORMAT = "MSG|%t|%q|%r|%P|%p"


@dataclass(frozen=True)
class CliMessage:
    topic: str
    qos: int
    retain: bool
    user_properties: str
    payload: str


class CliProcess:
    """A background mosquitto_sub whose output is read line by line as it appears."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))

    def wait_for(self, fragment: str, timeout: float = TIMEOUT) -> None:
        """Block until a debug line containing ``fragment`` shows up."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {fragment!r} within {timeout} s: {self.output}") from None
            self.output.append(line)
            if fragment in line:
                return

    def messages(self, timeout: float = TIMEOUT + 2) -> list[CliMessage]:
        """Wait for exit (``-C`` reached or ``-W`` expired); parse what it printed."""
        self.proc.wait(timeout)
        self._pump_thread.join(TIMEOUT)  # the pipe is at EOF once the process is gone
        while not self._lines.empty():
            self.output.append(self._lines.get_nowait())
        parsed = []
        for line in self.output:
            if line.startswith("MSG|"):
                _, topic, qos, retain, props, payload = line.split("|", 5)
                parsed.append(CliMessage(topic, int(qos), retain == "1", props, payload))
        return parsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def cli(broker: RunningBroker) -> Iterator[Callable[..., CliProcess]]:
    """Start mosquitto_sub for this test's broker; every process is killed at teardown."""
    started: list[CliProcess] = []

    def start(*args: str, version: str = "mqttv311") -> CliProcess:
        # stdbuf: writing into a pipe, mosquitto_sub would buffer its "Subscribed" line.
        stdbuf = ["stdbuf", "-oL"]
        base = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version]
        started.append(CliProcess([*stdbuf, *base, "-d", "-F", FORMAT, *args]))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def pub(broker: RunningBroker, *args: str, version: str = "mqttv311") -> None:
    """Run mosquitto_pub to completion; it exits 0 only after its QoS flow finished."""
    result = subprocess.run(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", version, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("version", VERSIONS)
def test_publish_round_trip(
    broker: RunningBroker, cli: Callable[..., CliProcess], version: str, qos: int
) -> None:
    """Each QoS flow works between two independent libmosquitto clients, in both versions."""
    topic = unique("cli")
    sub = cli("-t", topic, "-q", "2", "-C", "1", "-W", "5", "-i", unique("sub"), version=version)
    sub.wait_for("Subscribed (mid")
    pub(
        broker, "-t", topic, "-q", str(qos), "-m", "hello cli", "-i", unique("pub"), version=version
    )
    assert sub.messages() == [CliMessage(topic, qos, False, "", "hello cli")]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_message_reaches_later_subscriber(
    broker: RunningBroker, cli: Callable[..., CliProcess], version: str
) -> None:
    """``-r`` stores the message; a subscriber that comes later sees it with retain set."""
    topic = unique("cli-retained")
    pub(broker, "-t", topic, "-q", "1", "-r", "-m", "stored", version=version)
    sub = cli("-t", topic, "-q", "1", "-C", "1", "-W", "5", version=version)
    assert sub.messages() == [CliMessage(topic, 1, True, "", "stored")]


@pytest.mark.parametrize("version", VERSIONS)
def test_will_of_killed_client_is_published(
    broker: RunningBroker, cli: Callable[..., CliProcess], version: str
) -> None:
    """SIGKILL leaves the kernel to close the socket: no DISCONNECT, so the will must go out."""
    will_topic = unique("cli-will")
    watcher = cli("-t", will_topic, "-q", "1", "-C", "1", "-W", "5", version=version)
    watcher.wait_for("Subscribed (mid")
    victim = cli(
        "-t",
        unique("unused"),
        "--will-topic",
        will_topic,
        "--will-payload",
        "victim died",
        "--will-qos",
        "1",
        version=version,
    )
    victim.wait_for("received CONNACK")
    victim.kill()
    assert watcher.messages() == [CliMessage(will_topic, 1, False, "", "victim died")]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_id_identifies_persistent_session(
    broker: RunningBroker, cli: Callable[..., CliProcess], version: str
) -> None:
    """``-c -i`` names a session that outlives the process and collects QoS 1 messages."""
    topic, client_id = unique("cli-session"), unique("cli-persistent")
    first = cli("-c", "-i", client_id, "-t", topic, "-q", "1", "-E", version=version)
    assert first.messages() == []
    assert first.proc.returncode == 0, first.output
    pub(broker, "-t", topic, "-q", "1", "-m", "while away", version=version)
    resumed = cli(
        "-c", "-i", client_id, "-t", topic, "-q", "1", "-C", "1", "-W", "5", version=version
    )
    assert resumed.messages() == [CliMessage(topic, 1, False, "", "while away")]


def test_v5_user_properties_reach_subscribers(
    broker: RunningBroker, cli: Callable[..., CliProcess]
) -> None:
    """User properties pass through unchanged, repeated keys and order included.

    A 3.1.1 subscriber has no way to receive them but still gets the message.
    """
    topic = unique("cli-props")
    v5 = cli("-t", topic, "-q", "1", "-C", "1", "-W", "5", version="mqttv5")
    v311 = cli("-t", topic, "-q", "1", "-C", "1", "-W", "5", version="mqttv311")
    v5.wait_for("Subscribed (mid")
    v311.wait_for("Subscribed (mid")
    properties = [("zeta", "1"), ("alpha", "2"), ("zeta", "3")]
    defines = [a for k, v in properties for a in ("-D", "publish", "user-property", k, v)]
    pub(broker, "-t", topic, "-q", "1", "-m", "with props", *defines, version="mqttv5")
    assert v5.messages() == [CliMessage(topic, 1, False, "zeta:1 alpha:2 zeta:3", "with props")]
    assert v311.messages() == [CliMessage(topic, 1, False, "", "with props")]
