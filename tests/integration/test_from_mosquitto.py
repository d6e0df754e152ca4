"""`raftmq config from-mosquitto` on real Mosquitto configs, and a node run on each result.

Each test writes a Mosquitto config (paths moved into its tmp dir, ports
picked free on loopback), runs the real command, checks stdout loads with
raftmq's own loader and stderr names the lines it could not convert, then
starts one `raftmq node --config` on the output and checks with paho
clients that it behaves as the Mosquitto config said: listeners, TLS and
client certificates, passwords (made by mosquitto_passwd) and the ACL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from clients import ClientPool, MqttClient, unique
from securitykit import CertSet, make_cert_set

from raftmq.node.config import load_config

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # converts to and runs raftmq's config
RAFTMQ = str(Path(sys.executable).parent / "raftmq")
TIMEOUT = 10.0
BAD_CREDENTIALS = 0x86
NOT_AUTHORIZED = 0x87
SUBSCRIBE_REFUSED = 0x87
NodeOnFile = Callable[[Path], "RunningBroker"]

DEBIAN_STOCK = """\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""
"""/etc/mosquitto/mosquitto.conf of Debian's mosquitto 2.0 package, as shipped."""


@dataclass(frozen=True)
class Address:
    """Where paho connects: ``host`` is the name the server certificate carries."""

    host: str
    port: int
    ws_port: int = 0


@dataclass(frozen=True)
class Converted:
    returncode: int
    toml: str
    warnings: list[str]


def from_mosquitto(conf: Path, *flags: str) -> Converted:
    result = subprocess.run(
        [RAFTMQ, "config", "from-mosquitto", *flags, str(conf)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return Converted(result.returncode, result.stdout, result.stderr.splitlines())


def write_converted(conf: Path, tmp_path: Path) -> tuple[Path, Converted]:
    """Convert ``conf``, check raftmq loads the output, and return its file."""
    converted = from_mosquitto(conf)
    assert converted.returncode == 0, converted.warnings
    out = tmp_path / "raftmq.toml"
    out.write_text(converted.toml)
    load_config(out)
    return out, converted


def auth_files(tmp_path: Path, user: str, password: str, acl_text: str) -> tuple[Path, Path]:
    """A password file made by Mosquitto's own mosquitto_passwd, and an ACL file."""
    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), user, password],
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )
    acl.write_text(acl_text)
    return passwords, acl


def connect_v5(
    clients: ClientPool, address: Address, user: str | None, password: str | None, **kw: object
) -> MqttClient:
    client = clients.client(address, protocol=mqtt.MQTTv5, **kw)  # type: ignore[arg-type]
    if user is not None:
        client.paho.username_pw_set(user, password)
    return client


def assert_pubsub(subscriber: MqttClient, publisher: MqttClient, topic: str) -> None:
    assert subscriber.subscribe(topic, qos=1) == [1]
    publisher.publish(topic, b"hello", qos=1)
    got = subscriber.get()
    assert (got.topic, got.payload) == (topic, b"hello")


def test_debian_stock_config_with_a_listener_in_conf_d(
    tmp_path: Path, node_on_file: NodeOnFile, free_port: Callable[[], int], clients: ClientPool
) -> None:
    port = free_port()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "b-listener.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    (conf_d / "a-limits.conf").write_text("max_queued_messages 50\nuser mosquitto\n")
    (conf_d / "README").write_text("not a .conf file: never read\n")
    stock = (
        DEBIAN_STOCK.replace("/run/mosquitto", str(tmp_path / "run"))
        .replace("/var/lib/mosquitto", str(tmp_path / "data"))
        .replace("/var/log/mosquitto", str(tmp_path / "log"))
        .replace("/etc/mosquitto/conf.d", str(conf_d))
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(stock)
    out, converted = write_converted(conf, tmp_path)
    assert [w.split(": ")[0:2] for w in converted.warnings] == [
        ["warning", f"{conf}:6"],
        ["warning", f"{conf}:11"],
        ["warning", f"{conf_d}/a-limits.conf:2"],
    ]
    assert "pid_file: not needed" in converted.warnings[0]
    assert "log_dest: not supported" in converted.warnings[1]
    strict = from_mosquitto(conf, "--strict")
    assert (strict.returncode, strict.toml) == (1, converted.toml)
    config = load_config(out)
    assert [a.url() for a in config.listen] == [f"tcp://127.0.0.1:{port}"]
    assert (config.durability, config.max_queued_messages) == ("disk", 50)

    node = node_on_file(out)
    address = Address("127.0.0.1", port)
    subscriber = clients.connect(address)
    assert_pubsub(subscriber, clients.connect(address), unique("debian"))
    assert any(Path(config.data_dir).iterdir()), "persistence true: the node keeps its state"
    assert node.proc.poll() is None


def test_tls_mtls_websocket_password_and_acl(
    tmp_path: Path, node_on_file: NodeOnFile, free_port: Callable[[], int], clients: ClientPool
) -> None:
    certs: CertSet = make_cert_set(tmp_path / "certs")
    alice_cert = certs.issue_client("alice", "alice")
    plain, mtls, ws = free_port(), free_port(), free_port()
    passwords, acl = auth_files(
        tmp_path,
        "bob",
        "bob-secret",
        "user alice\ntopic readwrite alice/#\n\nuser bob\ntopic readwrite bob/#\n",
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"password_file {passwords}\nacl_file {acl}\n\n"
        f"listener {plain} 127.0.0.1\n\n"
        f"listener {mtls} 127.0.0.1\ncafile {certs.ca_file}\n"
        f"certfile {certs.directory / 'server.crt'}\nkeyfile {certs.directory / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\n\n"
        f"listener {ws} 127.0.0.1\nprotocol websockets\n"
        f"persistence false\npersistence_location {tmp_path / 'data'}\n"
    )
    out, converted = write_converted(conf, tmp_path)
    assert converted.warnings == []
    config = load_config(out)
    assert [a.url() for a in config.listen] == [
        f"tcp://127.0.0.1:{plain}",
        f"mqtts://127.0.0.1:{mtls}",
        f"ws://127.0.0.1:{ws}/mqtt",
    ]
    assert (config.tls_require_client_cert, config.tls_cert_as_username) == (True, "cn")
    assert config.allow_anonymous is False

    node_on_file(out)
    tcp, web = Address("127.0.0.1", plain), Address("127.0.0.1", 0, ws)
    tls = Address("localhost", mtls)  # the name in the server certificate
    # Passwords from mosquitto_passwd, over TCP and WebSocket; a wrong one is refused.
    bob_ws = connect_v5(clients, web, "bob", "bob-secret", transport="websockets")
    assert bob_ws.connect().reason_code == 0
    bob = connect_v5(clients, tcp, "bob", "bob-secret")
    assert bob.connect().reason_code == 0
    assert_pubsub(bob_ws, bob, "bob/" + unique("t"))
    wrong = connect_v5(clients, tcp, "bob", "not-it")
    assert wrong.connect().reason_code == BAD_CREDENTIALS
    anonymous = connect_v5(clients, web, None, None, transport="websockets")
    assert anonymous.connect().reason_code == NOT_AUTHORIZED
    # mTLS: the certificate's CN is the username the ACL knows; no certificate, no handshake.
    alice = connect_v5(clients, tls, None, None)
    alice.paho.tls_set(
        ca_certs=str(certs.ca_file), certfile=str(alice_cert[0]), keyfile=str(alice_cert[1])
    )
    assert alice.connect().reason_code == 0
    assert alice.subscribe("alice/#", qos=1) == [1]
    assert alice.subscribe("bob/#", qos=1) == [SUBSCRIBE_REFUSED]
    bob.publish("alice/from-bob", b"denied", qos=1)  # bob may not write there
    alice.publish("alice/sentinel", b"end", qos=1)
    assert alice.collect_until("alice/sentinel") == []
    no_cert = connect_v5(clients, tls, None, None)
    no_cert.paho.tls_set(ca_certs=str(certs.ca_file))
    # TLS 1.3 ends the connection after the handshake, TLS 1.2 during it: never a CONNACK.
    with pytest.raises((OSError, AssertionError)):
        no_cert.connect()
    assert no_cert.connack is None


def test_per_listener_settings_keep_the_stricter_choice(
    tmp_path: Path, node_on_file: NodeOnFile, free_port: Callable[[], int], clients: ClientPool
) -> None:
    first, second = free_port(), free_port()
    passwords, acl = auth_files(
        tmp_path, "carol", "carol-secret", "user carol\ntopic readwrite carol/#\n"
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings true\n"
        f"listener {first} 127.0.0.1\npassword_file {passwords}\nacl_file {acl}\n"
        f"listener {second} 127.0.0.1\nprotocol websockets\npassword_file {passwords}\n"
        f"acl_file {acl}\nallow_anonymous true\n"
        f"persistence_location {tmp_path / 'data'}\n"
    )
    out, converted = write_converted(conf, tmp_path)
    assert len(converted.warnings) == 1
    assert converted.warnings[0].startswith(f"warning: {conf}:9: allow_anonymous: raftmq's")
    config = load_config(out)
    assert (config.password_file, config.acl_file) == (str(passwords), str(acl))

    node_on_file(out)
    web = Address("127.0.0.1", 0, second)
    anonymous = connect_v5(clients, web, None, None, transport="websockets")
    assert anonymous.connect().reason_code == NOT_AUTHORIZED  # as warned
    carol = connect_v5(clients, web, "carol", "carol-secret", transport="websockets")
    assert carol.connect().reason_code == 0
    assert carol.subscribe("elsewhere/#", qos=1) == [SUBSCRIBE_REFUSED]
    carol_tcp = connect_v5(clients, Address("127.0.0.1", first), "carol", "carol-secret")
    assert carol_tcp.connect().reason_code == 0
    assert_pubsub(carol, carol_tcp, "carol/" + unique("t"))


def test_unsupported_directives_warn_and_strict_fails(
    tmp_path: Path, node_on_file: NodeOnFile, free_port: Callable[[], int], clients: ClientPool
) -> None:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmount_point site/\n"
        "max_qos 1\nautosave_interval 60\nconnection upstream\naddress 10.0.0.1:1883\n"
        "topic # both 0\nmax_keepalive 30\n"
        f"persistence_location {tmp_path / 'data'}\n"
    )
    strict = from_mosquitto(conf, "--strict")
    assert strict.returncode == 1
    assert [w.split(": ")[1:3] for w in strict.warnings] == [
        [f"{conf}:3", "mount_point"],
        [f"{conf}:4", "max_qos"],
        [f"{conf}:5", "autosave_interval"],
        [f"{conf}:6", "connection"],
    ]
    out, converted = write_converted(conf, tmp_path)
    assert converted.toml == strict.toml
    assert load_config(out).max_keepalive == 30  # lines after the bridge still count

    node_on_file(out)
    client = clients.client(Address("127.0.0.1", port), protocol=mqtt.MQTTv5, keepalive=300)
    assert client.connect().reason_code == 0
    assert client.connack is not None and client.connack.properties is not None
    assert client.connack.properties.ServerKeepAlive == 30


def test_unreadable_and_invalid_files_exit_2(tmp_path: Path) -> None:
    missing = from_mosquitto(tmp_path / "nope.conf")
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope.conf'}: cannot read file" in missing.warnings[0]
    bad = tmp_path / "bad.conf"
    bad.write_text("listener 1883\nallow_anonymous yes\n")
    invalid = from_mosquitto(bad)
    assert (invalid.returncode, invalid.toml) == (2, "")
    assert invalid.warnings == [
        f"raftmq config: error: {bad}:2: allow_anonymous: expected true or false, got 'yes'"
    ]
