"""`raftmq certs init`: the files it writes, and the first TLS run of docs/security.md with them."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clients import unique
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from securitykit import listener_port

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = pytest.mark.raftmq_only  # a raftmq command and raftmq TLS keys
RAFTMQ = str(Path(sys.executable).parent / "raftmq")
TIMEOUT = 10.0
BrokerFactory = Callable[..., "RunningBroker"]
KEYS = ("ca.key", "server.key", "client.key")
CERTS = ("ca.crt", "server.crt", "client.crt")


def certs_init(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAFTMQ, "certs", "init", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def load(directory: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / name).read_bytes())


def test_init_writes_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    result = certs_init(directory, "--name", "node1.example", "--name", "10.1.2.3")
    assert result.returncode == 0, result.stderr
    for name in KEYS:
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
        key = serialization.load_pem_private_key((directory / name).read_bytes(), None)
        assert key is not None
    for name in CERTS:
        assert (directory / name).stat().st_mode & 0o777 == 0o644, name
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    ca, server, client = (load(directory, name) for name in CERTS)
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_constraints.ca is True
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    ]
    server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(server_usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "client"

    # OpenSSL agrees, with the purposes checked too.
    for leaf, purpose in (("server.crt", "sslserver"), ("client.crt", "sslclient")):
        ca_file, leaf_file = str(directory / "ca.crt"), str(directory / leaf)
        check = subprocess.run(
            ["openssl", "verify", "-purpose", purpose, "-CAfile", ca_file, leaf_file],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_init_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    assert certs_init(directory).returncode == 0
    before = {name: (directory / name).read_bytes() for name in KEYS + CERTS}
    again = certs_init(directory)
    assert again.returncode == 1
    assert "already exist (use --force to replace)" in again.stderr
    assert {name: (directory / name).read_bytes() for name in before} == before
    forced = certs_init(directory, "--force", "--client-name", "alice")
    assert forced.returncode == 0, forced.stderr
    assert (directory / "ca.key").read_bytes() != before["ca.key"]
    client = load(directory, "client.crt")
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def test_first_tls_run_as_the_docs_show(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    """`raftmq certs init`, a node with server.crt, then mosquitto_sub --cafile ca.crt."""
    directory = tmp_path / "certs"
    assert certs_init(directory).returncode == 0
    node = broker_factory(
        listen=["mqtts://127.0.0.1:0"],
        tls_cert=str(directory / "server.crt"),
        tls_key=str(directory / "server.key"),
        tls_ca=str(directory / "ca.crt"),
    )
    port = str(listener_port(node, "mqtts"))
    topic = unique("first-run")
    tls = ["--cafile", str(directory / "ca.crt"), "-h", "localhost", "-p", port, "-t", topic]
    publish = subprocess.run(
        ["mosquitto_pub", *tls, "-m", "hello", "-r", "-q", "1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert publish.returncode == 0, publish.stderr
    # The same node also identifies clients that present the generated client certificate.
    mtls = ["--cert", str(directory / "client.crt"), "--key", str(directory / "client.key")]
    received = subprocess.run(
        ["mosquitto_sub", *tls, *mtls, "-C", "1", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert received.returncode == 0, received.stderr
    assert received.stdout.strip() == "hello"


def openssl_verify(directory: Path, cert: str, *options: str) -> subprocess.CompletedProcess[str]:
    ca_file, cert_file = str(directory / "ca.crt"), str(directory / cert)
    return subprocess.run(
        ["openssl", "verify", *options, "-CAfile", ca_file, cert_file],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_node_certificates_from_the_ca_of_init_verify_for_both_purposes(tmp_path: Path) -> None:
    """`raftmq certs node` signs with the CA `init` made; OpenSSL accepts each node
    certificate as a server for its node id (and no other) and as a client."""
    directory = tmp_path / "certs"
    assert certs_init(directory).returncode == 0
    ca = (directory / "ca.crt").read_bytes()
    result = subprocess.run(
        [RAFTMQ, "certs", "node", "--dir", str(directory), "n1", "n2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert (directory / "ca.crt").read_bytes() == ca
    for node_id in ("n1", "n2"):
        cert = f"{node_id}.crt"
        assert (directory / f"{node_id}.key").stat().st_mode & 0o777 == 0o600
        for options in (
            ("-purpose", "sslserver", "-verify_hostname", node_id),
            ("-purpose", "sslclient"),
        ):
            check = openssl_verify(directory, cert, *options)
            assert check.returncode == 0, check.stdout + check.stderr
    wrong = openssl_verify(directory, "n1.crt", "-purpose", "sslserver", "-verify_hostname", "n2")
    assert wrong.returncode != 0, "n1's certificate passed as n2's"
