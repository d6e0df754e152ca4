"""Node certificates: what `raftmq certs node` makes, the config keys that name them,
how a node loads them at startup, and the ones `raftmq cluster up` makes for its nodes.

The handshakes themselves (right certificate accepted, wrong id or CA refused)
are in test_forwarding.py with in-process forwarders, and in
tests/integration/test_cluster_tls.py with real nodes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from raftmq.cluster.assemble import build_cluster
from raftmq.cluster.certfiles import load_node_tls
from raftmq.cluster.cli.cluster_up import cluster_certs, node_config, plan_nodes
from raftmq.cluster.cli.main import main
from raftmq.cluster.tls import NodeTLS
from raftmq.cluster.tools import certgen
from raftmq.cluster.tools.certgen import (
    issue_node_files,
    make_ca,
    make_node_certificate,
    node_files,
    write_cert,
    write_issued,
    write_key,
)
from raftmq.node.config import ConfigError, load_config

SECRET = "unit-test-cluster-secret"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- making them --------------------------------------------------------------------


def test_a_node_certificate_names_its_node_and_serves_both_ends_of_a_stream(
    tmp_path: Path,
) -> None:
    written = issue_node_files(tmp_path, ["n1", "n2"], ["n1.example", "10.0.0.7"])
    assert [p.name for p in written] == ["ca.crt", "ca.key", "n1.crt", "n1.key", "n2.crt", "n2.key"]
    ca = load_cert(tmp_path / "ca.crt")
    cert = load_cert(tmp_path / "n1.crt")

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1", "n1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    # A full path validation against the CA, as each end of a stream does it.
    store = Store([ca])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName("n1")).verify(cert, [])
    client = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    assert x509.DNSName("n1") in client.subjects

    key = serialization.load_pem_private_key((tmp_path / "n1.key").read_bytes(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    assert (tmp_path / "n1.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "n1.crt").stat().st_mode & 0o777 == 0o644


def test_a_node_id_that_looks_like_an_ip_address_is_still_a_dns_name() -> None:
    """gRPC compares the peer name it expects with the SANs as text, whatever their type."""
    cert = make_node_certificate(make_ca(), "10.1.2.3").cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["10.1.2.3"]


@pytest.mark.parametrize(
    ("node_id", "config_refuses_it"),
    [("", True), ("n/1", True), ("n 1", True), ("n" * 65, True), ("nœud", True), ("ca", False)],
)
def test_node_ids_the_config_refuses_get_no_certificate(
    tmp_path: Path, node_id: str, config_refuses_it: bool
) -> None:
    with pytest.raises(ValueError, match="node id"):
        issue_node_files(tmp_path / "certs", ["n1", node_id])
    assert not (tmp_path / "certs").exists()
    if config_refuses_it:
        with pytest.raises(ConfigError, match="node_id"):
            load_config(overrides={"node_id": node_id})
    else:  # a valid id whose files would be the CA's
        with pytest.raises(ValueError, match="are the CA's files"):
            make_node_certificate(make_ca(), node_id)


def test_the_ca_of_certs_init_signs_the_node_certificates(tmp_path: Path) -> None:
    certgen.init(tmp_path)
    before = snapshot(tmp_path)
    written = issue_node_files(tmp_path, ["n1"])
    assert [p.name for p in written] == ["n1.crt", "n1.key"]
    assert {name: data for name, data in snapshot(tmp_path).items() if name in before} == before
    load_cert(tmp_path / "n1.crt").verify_directly_issued_by(load_cert(tmp_path / "ca.crt"))


def test_existing_node_files_are_refused_replaced_or_kept(tmp_path: Path) -> None:
    issue_node_files(tmp_path, ["n1"])
    before = snapshot(tmp_path)

    with pytest.raises(FileExistsError, match=r"n1\.crt, .*n1\.key already exist"):
        issue_node_files(tmp_path, ["n2", "n1"])
    assert snapshot(tmp_path) == before  # not even n2 was written

    assert [p.name for p in issue_node_files(tmp_path, ["n1", "n2"], if_exists="keep")] == [
        "n2.crt",
        "n2.key",
    ]
    assert (tmp_path / "n1.key").read_bytes() == before["n1.key"]

    replaced = issue_node_files(tmp_path, ["n1"], if_exists="replace")
    assert [p.name for p in replaced] == ["n1.crt", "n1.key"]
    assert (tmp_path / "n1.key").read_bytes() != before["n1.key"]
    assert (tmp_path / "ca.key").read_bytes() == before["ca.key"]

    # "keep" does not keep a certificate that this CA did not sign.
    write_cert(tmp_path / "n2.crt", make_node_certificate(make_ca(), "n2").cert)
    assert [p.name for p in issue_node_files(tmp_path, ["n2"], if_exists="keep")] == [
        "n2.crt",
        "n2.key",
    ]
    load_cert(tmp_path / "n2.crt").verify_directly_issued_by(load_cert(tmp_path / "ca.crt"))


def test_half_a_ca_or_a_mismatched_one_is_an_error_naming_the_file(tmp_path: Path) -> None:
    issue_node_files(tmp_path, ["n1"])
    write_key(tmp_path / "ca.key", make_ca().key)
    with pytest.raises(ValueError, match=r"ca\.key is not the key of .*ca\.crt"):
        issue_node_files(tmp_path, ["n2"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"ca\.key"):
        issue_node_files(tmp_path, ["n2"])
    assert not (tmp_path / "n2.crt").exists()


# -- the command --------------------------------------------------------------------


def test_certs_node_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "certs"
    assert main(["certs", "node", "--dir", str(directory), "n1", "n2"]) == 0
    out = capsys.readouterr().out
    for name in ("ca.crt", "ca.key", "n1.crt", "n1.key", "n2.crt", "n2.key"):
        assert f"wrote {directory / name}\n" in out
    assert f'cluster_tls_cert = "{directory.resolve() / "n1.crt"}"' in out
    assert "PRIVATE KEY" not in out

    assert main(["certs", "node", "--dir", str(directory), "n2"]) == 1
    assert "already exist (use --force to replace)" in capsys.readouterr().err
    assert main(["certs", "node", "--dir", str(directory), "--force", "n2"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {directory / 'n2.crt'}\n")

    assert main(["certs", "node", "--dir", str(directory), "n/3"]) == 1
    assert "invalid node id 'n/3'" in capsys.readouterr().err


# -- config keys and loading at startup ---------------------------------------------------


def cluster_overrides(tmp_path: Path, **tls: str) -> dict[str, object]:
    return {
        "node_id": "n1",
        "data_dir": str(tmp_path / "data"),
        "cluster_secret": SECRET,
        "raft_listen": "127.0.0.1:7001",
        "grpc_listen": "127.0.0.1:7002",
        "peers": ["n2=127.0.0.1:7003,127.0.0.1:7004"],
        **tls,
    }


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    issue_node_files(directory, ["n1", "n2"])
    return directory


def tls_keys(certs: Path, node_id: str) -> dict[str, str]:
    files = node_files(certs, node_id)
    return {
        "cluster_tls_ca": str(files.ca),
        "cluster_tls_cert": str(files.cert),
        "cluster_tls_key": str(files.key),
    }


@pytest.mark.parametrize(
    ("given", "error"),
    [
        (
            ("cluster_tls_ca",),
            "key 'cluster_tls_ca' needs 'cluster_tls_cert' and 'cluster_tls_key'",
        ),
        (("cluster_tls_cert", "cluster_tls_key"), "key 'cluster_tls_cert' needs 'cluster_tls_ca'"),
    ],
)
def test_the_tls_keys_come_all_three_or_none(
    tmp_path: Path, certs: Path, given: tuple[str, ...], error: str
) -> None:
    keys = {k: v for k, v in tls_keys(certs, "n1").items() if k in given}
    with pytest.raises(ConfigError, match=error):
        load_config(overrides=cluster_overrides(tmp_path, **keys))


def test_the_tls_keys_need_a_cluster(certs: Path) -> None:
    with pytest.raises(ConfigError, match="key 'cluster_tls_ca' needs 'cluster_secret'"):
        load_config(overrides=tls_keys(certs, "n1"))


def test_build_cluster_gives_the_forwarder_the_node_certificate(
    tmp_path: Path, certs: Path
) -> None:
    config = load_config(overrides=cluster_overrides(tmp_path, **tls_keys(certs, "n1")))
    files = node_files(certs, "n1")
    expected = NodeTLS(files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())
    assert build_cluster(config).peers.tls == expected  # type: ignore[attr-defined]
    plain = build_cluster(load_config(overrides=cluster_overrides(tmp_path)))
    assert plain.peers.tls is None  # type: ignore[attr-defined]


def test_a_missing_file_stops_the_node_naming_key_and_file(tmp_path: Path, certs: Path) -> None:
    missing = str(certs / "n9.crt")
    keys = {**tls_keys(certs, "n1"), "cluster_tls_cert": missing}
    config = load_config(overrides=cluster_overrides(tmp_path, **keys))
    error = re.escape(f"key 'cluster_tls_cert': cannot read '{missing}': No such file")
    with pytest.raises(ConfigError, match=error):
        build_cluster(config)


@pytest.mark.parametrize(
    ("config_key", "error"),
    [
        ("cluster_tls_ca", "key 'cluster_tls_ca': .*: no PEM certificate"),
        ("cluster_tls_cert", "key 'cluster_tls_cert': .*: no PEM certificate"),
        ("cluster_tls_key", "key 'cluster_tls_key': .*: not a PEM private key"),
    ],
)
def test_a_file_that_does_not_load_names_its_key(
    tmp_path: Path, certs: Path, config_key: str, error: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN NONSENSE-----\n")
    keys = {**tls_keys(certs, "n1"), config_key: str(garbage)}
    with pytest.raises(ConfigError, match=error):
        load_node_tls("n1", **{k.removeprefix("cluster_tls_"): v for k, v in keys.items()})


def test_a_key_that_is_not_the_certificates_or_is_encrypted_is_refused(certs: Path) -> None:
    files = node_files(certs, "n1")
    other_key = str(node_files(certs, "n2").key)
    with pytest.raises(ConfigError, match=r"key 'cluster_tls_key': .*n2\.key' is not the key of"):
        load_node_tls("n1", str(files.ca), str(files.cert), other_key)

    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    encrypted = certs / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    with pytest.raises(ConfigError, match=r"key 'cluster_tls_key': .*encrypted"):
        load_node_tls("n1", str(files.ca), str(files.cert), str(encrypted))


def test_another_nodes_certificate_or_another_ca_only_warns(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node runs, its peers refuse it; the warning says why before anyone looks there."""
    n2 = node_files(certs, "n2")
    with caplog.at_level(logging.WARNING, "raftmq.cluster"):
        load_node_tls("n1", str(n2.ca), str(n2.cert), str(n2.key))
    [record] = caplog.records
    assert "names ['n2'], not this node 'n1': peers will refuse its streams" in record.message

    caplog.clear()
    other = tmp_path / "other"
    other.mkdir()
    write_issued(other, "ca", make_ca())
    with caplog.at_level(logging.WARNING, "raftmq.cluster"):
        data = load_node_tls("n2", str(other / "ca.crt"), str(n2.cert), str(n2.key))
    [record] = caplog.records
    assert "is not signed by cluster_tls_ca" in record.message
    assert data == ((other / "ca.crt").read_bytes(), n2.cert.read_bytes(), n2.key.read_bytes())
    assert "PRIVATE KEY" not in caplog.text


# -- raftmq cluster up ------------------------------------------------------------------


def test_cluster_up_makes_certificates_once_and_names_them_in_each_config(
    tmp_path: Path,
) -> None:
    plans = plan_nodes(3, 30000, tmp_path)
    certs = tmp_path / "certs"
    files = cluster_certs(certs, plans)
    first = snapshot(certs)
    assert sorted(first) == sorted(
        ["ca.crt", "ca.key", *(f"n{i}.{ext}" for i in (1, 2, 3) for ext in ("crt", "key"))]
    )

    (certs / "n2.key").unlink()
    assert cluster_certs(certs, plans) == files
    again = snapshot(certs)
    assert {k: v for k, v in again.items() if not k.startswith("n2.")} == {
        k: v for k, v in first.items() if not k.startswith("n2.")
    }
    assert again["n2.crt"] != first["n2.crt"]

    config_file = tmp_path / "n3.toml"
    config_file.write_text(node_config(plans[2], plans, SECRET, files["n3"]))
    config = load_config(config_file)
    assert (config.cluster_tls_ca, config.cluster_tls_cert, config.cluster_tls_key) == (
        str(certs / "ca.crt"),
        str(certs / "n3.crt"),
        str(certs / "n3.key"),
    )
