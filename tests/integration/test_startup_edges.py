"""Mosquitto users' first minutes: an ``mqtt://`` listener, and a node nobody can log in to.

The listener is served by a real ``raftmq node`` process and used by paho and
``mosquitto_pub``; the start-up warning is read from the process's log, and
its variants (which listeners, which settings silence it) from a node run in
this process with ``caplog``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clients import ClientPool, unique
from securitykit import make_cert_set

from raftmq.node.broker import Broker
from raftmq.node.config import load_config

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # raftmq's listen URLs and its start-up log
BrokerFactory = Callable[..., "RunningBroker"]
TIMEOUT = 5.0
NOT_AUTHORIZED = 0x87
WARNING_START = "WARNING raftmq.broker: nobody can log in on "


def test_mqtt_scheme_listener_serves_paho(
    broker_factory: BrokerFactory, clients: ClientPool
) -> None:
    broker = broker_factory(listen=["mqtt://127.0.0.1:0"])
    listening = [line for line in broker.output if "listening on" in line]
    # Normalised to tcp:// when read: the node reports the transport's one name.
    assert listening == [f"raftmq node node1 listening on tcp://127.0.0.1:{broker.port}"]

    topic = unique("edges/mqtt")
    sub = clients.connect(broker, subscribe=topic, qos=1)
    pub = clients.connect(broker)
    pub.publish(topic, b"over mqtt://", qos=1)
    message = sub.get(TIMEOUT)
    assert (message.topic, message.payload) == (topic, b"over mqtt://")


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="needs mosquitto-clients")
def test_mqtt_scheme_listener_serves_mosquitto_clients(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(listen=["mqtt://127.0.0.1:0"])
    topic = unique("edges/mosq")
    address = ["-h", broker.host, "-p", str(broker.port)]
    sub = subprocess.Popen(
        ["mosquitto_sub", *address, "-t", topic, "-C", "1", "-W", "10", "-q", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # -C 1 ends mosquitto_sub at its first message; publish until it has subscribed.
        for _ in range(50):
            subprocess.run(
                ["mosquitto_pub", *address, "-t", topic, "-m", "hello", "-q", "1"],
                check=True,
                timeout=TIMEOUT,
            )
            try:
                out, err = sub.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError("mosquitto_sub got nothing through the mqtt:// listener")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    assert out == "hello\n"


def test_node_nobody_can_log_in_to_warns_at_start(
    broker_factory: BrokerFactory, clients: ClientPool
) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"], allow_anonymous=False)
    warnings = [line for line in broker.output if WARNING_START in line]
    assert len(warnings) == 1, broker.output
    [line] = warnings
    assert f"nobody can log in on tcp://127.0.0.1:{broker.port}: " in line
    assert "allow_anonymous = false and no password_file is set" in line
    for key in ("set password_file", "allow_anonymous = true", "tls_cert_as_username"):
        assert key in line

    # And the warning is true: an anonymous client is refused.
    client = clients.client(broker)
    assert client.connect().reason_code == NOT_AUTHORIZED


def test_default_node_starts_without_the_warning(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(listen=["tcp://127.0.0.1:0"])
    assert broker.port
    assert not [line for line in broker.output if "WARNING" in line], broker.output


async def _start_warnings(caplog: pytest.LogCaptureFixture, **keys: object) -> list[str]:
    """Start a node with ``keys`` in this process; the warnings its start logged."""
    config = load_config(overrides={"durability": "memory", **keys})
    with caplog.at_level(logging.WARNING, "raftmq.broker"):
        async with Broker(config) as broker:
            addresses = list(broker.addresses)
    lines = [r.getMessage() for r in caplog.records if r.name == "raftmq.broker"]
    return [line.replace(addresses[0], "FIRST") for line in lines]


async def test_unset_allow_anonymous_on_a_public_listener_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 0.0.0.0 is reachable from outside, so anonymous clients are refused by default.
    lines = await _start_warnings(caplog, listen=["tcp://0.0.0.0:0"], data_dir=str(tmp_path / "d"))
    assert len(lines) == 1
    assert lines[0].startswith("nobody can log in on FIRST: allow_anonymous is unset and not ")


async def test_a_password_file_silences_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    lines = await _start_warnings(
        caplog,
        listen=["tcp://127.0.0.1:0"],
        allow_anonymous=False,
        password_file=str(passwords),
        data_dir=str(tmp_path / "d"),
    )
    assert lines == []


async def test_certificate_login_counts_only_on_tls_listeners(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tls_cert_as_username lets TLS clients in; the plain listener beside it stays locked."""
    certs = make_cert_set(tmp_path / "certs")
    keys = certs.mtls_keys(tls_cert_as_username="cn", allow_anonymous=False)
    lines = await _start_warnings(
        caplog,
        listen=["mqtts://127.0.0.1:0", "tcp://127.0.0.1:0"],
        data_dir=str(tmp_path / "d"),
        **keys,
    )
    assert len(lines) == 1
    assert "FIRST" not in lines[0]  # the mqtts:// listener is not named
    assert lines[0].startswith("nobody can log in on tcp://127.0.0.1:")
    assert "move these clients to an mqtts:// or wss:// listener" in lines[0]
