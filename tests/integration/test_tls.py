"""mqtts:// and wss:// listeners, mutual TLS and certificate names as user names.

Every test makes its own CA and certificates, and talks to a real node with
real clients: mosquitto_sub/pub (libmosquitto's OpenSSL use), paho (Python's
ssl module, over TCP and WebSocket) and a raw TLS socket for exact bytes.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from clients import ClientPool, unique
from rawmqtt import CONNACK, PUBACK, PUBLISH, SUBACK, Closed, publish, subscribe
from securitykit import (
    CertSet,
    TlsRawClient,
    client_context,
    connect_packet,
    listener_port,
    listening_lines,
    make_cert_set,
)

from raftmq.node.config import load_config
from raftmq.node.tls import MINIMUM_VERSION, build_server_context

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # the Mosquitto run has no TLS listener setup
TIMEOUT = 5.0
RAFTMQ = str(Path(sys.executable).parent / "raftmq")
BrokerFactory = Callable[..., "RunningBroker"]


@dataclass
class TlsAddress:
    """What ``ClientPool`` needs, pointing at the TLS listeners."""

    host: str
    port: int
    ws_port: int


@pytest.fixture
def certs(tmp_path: Path) -> CertSet:
    return make_cert_set(tmp_path / "certs")


def tls_node(broker_factory: BrokerFactory, keys: dict[str, object], *listen: str) -> RunningBroker:
    return broker_factory(listen=list(listen), **keys)


# -- server TLS ------------------------------------------------------------


class MosquittoSub:
    """mosquitto_sub in the background; its debug output tells when it has subscribed."""

    def __init__(self, args: list[str]) -> None:
        # stdbuf: writing into a pipe, mosquitto_sub would hold its "SUBACK" line back.
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, fragment: str) -> str:
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub never printed {fragment!r}: {seen}") from None
            seen.append(line)
            if fragment in line:
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_round_trip_over_mqtts(
    broker_factory: BrokerFactory, certs: CertSet, version: str
) -> None:
    node = tls_node(broker_factory, certs.node_keys(), "mqtts://127.0.0.1:0")
    port = listener_port(node, "mqtts")
    topic = unique("tls") + "/temp"
    common = ["-V", version, "--cafile", str(certs.ca_file), "-h", "localhost", "-p", str(port)]
    sub = MosquittoSub([*common, "-t", topic, "-q", "1", "-C", "1", "-F", "MSG|%t|%p"])
    try:
        sub.wait_for("Subscribed (mid")
        subprocess.run(
            ["mosquitto_pub", *common, "-t", topic, "-m", "21.5", "-q", "1"],
            check=True,
            timeout=TIMEOUT,
        )
        assert sub.wait_for("MSG|") == f"MSG|{topic}|21.5"
    finally:
        sub.stop()


def test_mosquitto_client_refuses_a_server_from_another_ca(
    broker_factory: BrokerFactory, certs: CertSet, tmp_path: Path
) -> None:
    """The other half of --cafile: the client really checks the node's certificate."""
    node = tls_node(broker_factory, certs.node_keys(), "mqtts://127.0.0.1:0")
    stranger = make_cert_set(tmp_path / "stranger")
    result = subprocess.run(
        [
            *("mosquitto_pub", "-d", "--cafile", str(stranger.ca_file), "-h", "localhost"),
            *("-p", str(listener_port(node, "mqtts")), "-t", "x", "-m", "y"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr + result.stdout


@pytest.mark.parametrize("protocol", [4, 5])
def test_paho_with_tls_set_over_mqtts_and_wss(
    broker_factory: BrokerFactory, certs: CertSet, clients: ClientPool, protocol: int
) -> None:
    node = tls_node(
        broker_factory, certs.node_keys(), "mqtts://127.0.0.1:0", "wss://127.0.0.1:0/mqtt"
    )
    address = TlsAddress("localhost", listener_port(node, "mqtts"), listener_port(node, "wss"))
    topic = unique("tls")
    subscriber = clients.client(address, protocol=protocol, transport="websockets")
    subscriber.paho.tls_set(ca_certs=str(certs.ca_file))
    assert subscriber.connect().reason_code == 0
    assert subscriber.subscribe(topic, qos=1) == [1]
    publisher = clients.client(address, protocol=protocol)
    publisher.paho.tls_set(ca_certs=str(certs.ca_file))
    assert publisher.connect().reason_code == 0
    publisher.publish(topic, b"over tls", qos=1)
    got = subscriber.get()
    assert (got.topic, got.payload, got.qos) == (topic, b"over tls", 1)


def test_tls_only_node_opens_no_plain_port(broker_factory: BrokerFactory, certs: CertSet) -> None:
    node = tls_node(broker_factory, certs.node_keys(), "mqtts://127.0.0.1:0")
    port = listener_port(node, "mqtts")
    assert len(listening_lines(node)) == 1
    listening = {
        conn.laddr.port
        for conn in psutil.Process(node.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {port}
    # And that one port speaks only TLS: a plain MQTT CONNECT gets no CONNACK.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as plain:
        plain.sendall(connect_packet(unique("plain")))
        received = b""
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert not received.startswith(bytes([CONNACK << 4]))


@pytest.mark.parametrize(
    ("cert", "problem"),
    [
        ("missing.crt", "No such file or directory"),
        ("client.crt", "KEY_VALUES_MISMATCH"),  # a certificate that is not server.key's
    ],
)
def test_node_refuses_to_start_with_an_unusable_certificate(
    certs: CertSet, tmp_path: Path, cert: str, problem: str
) -> None:
    config = tmp_path / "raftmq.toml"
    config.write_text(
        'listen = "mqtts://127.0.0.1:0"\n'
        f'tls_cert = "{certs.directory / cert}"\ntls_key = "{certs.files("server")[1]}"\n'
    )
    result = subprocess.run(
        [RAFTMQ, "node", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith("raftmq: error: key 'tls_cert'/'tls_key': cannot load")
    assert problem in result.stderr


def test_silent_client_is_closed_during_the_handshake(
    broker_factory: BrokerFactory, certs: CertSet
) -> None:
    """A socket that never starts TLS is held for connect_timeout at most, like one that
    never sends CONNECT."""
    node = tls_node(broker_factory, certs.node_keys(connect_timeout=1.0), "mqtts://127.0.0.1:0")
    with socket.create_connection(("127.0.0.1", listener_port(node, "mqtts")), timeout=10) as s:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1) == b""
        assert 0.5 < time.monotonic() - started < 5


def assert_connects(port: int, context: ssl.SSLContext, prefix: str) -> None:
    """A client with ``context`` completes the handshake and its CONNECT succeeds."""
    client = TlsRawClient(port, context)
    try:
        client.send(connect_packet(unique(prefix)))
        assert client.expect(CONNACK).reason_code == 0
    finally:
        client.close()


def test_server_context_floor_is_tls_1_2(certs: CertSet) -> None:
    config = load_config(None, {"listen": "mqtts://127.0.0.1:0", **certs.node_keys()})
    assert build_server_context(config).minimum_version == MINIMUM_VERSION
    assert ssl.TLSVersion.TLSv1_2 == MINIMUM_VERSION


def test_tls_1_1_client_is_refused(broker_factory: BrokerFactory, certs: CertSet) -> None:
    node = tls_node(broker_factory, certs.node_keys(), "mqtts://127.0.0.1:0")
    port = listener_port(node, "mqtts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_context(certs, tls_max=ssl.TLSVersion.TLSv1_1)
        old.minimum_version = ssl.TLSVersion.TLSv1
    # Security level 0 lets this client really send a TLS 1.1 ClientHello, so the
    # refusal comes from the node, not from our own OpenSSL (NO_PROTOCOLS_AVAILABLE).
    # uvloop closes a failed handshake without flushing the alert: hence the EOF.
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as info:
        TlsRawClient(port, old)
    refusal = str(info.value)
    assert "ALERT_PROTOCOL_VERSION" in refusal or "UNEXPECTED_EOF" in refusal, refusal
    # The same client allowed TLS 1.2 gets in.
    assert_connects(port, client_context(certs, tls_max=ssl.TLSVersion.TLSv1_2), "tls12")


# -- mutual TLS --------------------------------------------------------------


TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def assert_handshake_refused(port: int, context: ssl.SSLContext) -> None:
    """The node ends the connection during the TLS handshake; MQTT never starts.

    With TLS 1.2 the node checks the client certificate before its Finished
    message, so the client's own handshake fails. With TLS 1.3 the client's
    side of the handshake completes first and the refusal shows at the first
    read. (uvloop closes without flushing the TLS alert, so clients see EOF
    rather than, say, "unknown ca".)
    """
    version = context.maximum_version
    try:
        client = TlsRawClient(port, context)
    except (ssl.SSLError, ConnectionError):
        assert version == ssl.TLSVersion.TLSv1_2
        return
    assert version == ssl.TLSVersion.TLSv1_3, "a TLS 1.2 handshake should have failed"
    try:
        client.send(connect_packet(unique("mtls")))
        reply = client.read(TIMEOUT)
    except (ssl.SSLError, Closed, ConnectionError):
        return
    finally:
        client.close()
    raise AssertionError(f"the node accepted the client: {reply}")


@pytest.fixture
def mtls_port(broker_factory: BrokerFactory, certs: CertSet) -> int:
    node = tls_node(broker_factory, certs.mtls_keys(), "mqtts://127.0.0.1:0")
    return listener_port(node, "mqtts")


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_client_certificate_from_the_ca_is_accepted(
    mtls_port: int, certs: CertSet, version: ssl.TLSVersion
) -> None:
    assert_connects(
        mtls_port, client_context(certs, certs.files("client"), tls_max=version), "mtls"
    )


def test_mosquitto_client_certificate_is_accepted(mtls_port: int, certs: CertSet) -> None:
    cert, key = certs.files("client")
    topic = unique("mtls")
    common = ["--cafile", str(certs.ca_file), "--cert", str(cert), "--key", str(key)]
    common += ["-h", "localhost", "-p", str(mtls_port), "-t", topic]
    subprocess.run(["mosquitto_pub", *common, "-m", "kept", "-r", "-q", "1"], check=True, timeout=5)
    result = subprocess.run(
        ["mosquitto_sub", *common, "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=10
    )
    assert result.stdout.strip() == "kept", result


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_no_client_certificate_fails_the_handshake(
    mtls_port: int, certs: CertSet, version: ssl.TLSVersion
) -> None:
    assert_handshake_refused(mtls_port, client_context(certs, tls_max=version))


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_certificate_from_another_ca_fails_the_handshake(
    mtls_port: int, certs: CertSet, version: ssl.TLSVersion
) -> None:
    stranger = certs.issue_client("stranger", "client", other_ca=True)
    assert_handshake_refused(mtls_port, client_context(certs, stranger, tls_max=version))


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_expired_certificate_fails_the_handshake(
    mtls_port: int, certs: CertSet, version: ssl.TLSVersion
) -> None:
    expired = certs.issue_client("expired", "client", expired=True)
    assert_handshake_refused(mtls_port, client_context(certs, expired, tls_max=version))


# -- the certificate's name as the user name ---------------------------------


def test_certificate_cn_is_the_user_name_for_the_acl(
    broker_factory: BrokerFactory, certs: CertSet, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n")
    keys = certs.mtls_keys(tls_cert_as_username="cn", acl_file=str(acl), allow_anonymous=False)
    node = tls_node(broker_factory, keys, "mqtts://127.0.0.1:0")
    port = listener_port(node, "mqtts")
    alice_cert = certs.issue_client("alice", "alice")
    alice = TlsRawClient(port, client_context(certs, alice_cert))
    try:
        # The CONNECT's own user name does not matter: the certificate says alice.
        alice.send(connect_packet(unique("alice"), username="bob", password=b"whatever"))
        assert alice.expect(CONNACK).reason_code == 0
        alice.send(subscribe(1, [("alice/#", 1), ("bob/#", 1)]))
        assert alice.expect(SUBACK).reason_codes == [1, 0x87]
        alice.send(publish("bob/x", b"no", qos=1, packet_id=2))
        assert alice.expect(PUBACK).reason_code == 0x87
        alice.send(publish("alice/x", b"yes", qos=1, packet_id=3))
        first, second = alice.read(), alice.read()
        by_type = {first.type: first, second.type: second}
        assert by_type[PUBACK].packet_id == 3 and by_type[PUBACK].reason_code == 0
        assert (by_type[PUBLISH].topic, by_type[PUBLISH].payload) == ("alice/x", b"yes")
    finally:
        alice.close()
    # Another client's certificate (CN "client") gets nothing under alice/.
    other = TlsRawClient(port, client_context(certs, certs.files("client")))
    try:
        other.send(connect_packet(unique("other")))
        assert other.expect(CONNACK).reason_code == 0
        other.send(publish("alice/x", b"no", qos=1, packet_id=1))
        assert other.expect(PUBACK).reason_code == 0x87
    finally:
        other.close()
