"""Mutual TLS between the nodes of a real three-node cluster, with node certificates
made by the real `raftmq certs node` command.

Nodes holding their own certificates forward to each other. A node whose
certificate names another node, or comes from another CA, is refused by its
peers: its forwarding streams never come up, so a QoS 1 message it takes for
another node is never acknowledged (the publisher is disconnected "server
unavailable" once the link gives up) and never delivered. Raft is not TLS
(it is encrypted with the cluster secret), so the refused node still sees the
cluster's routes: what fails is exactly the forwarding.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from clusterkit import (
    NO_MATCHING_SUBSCRIBERS,
    SERVER_UNAVAILABLE,
    NodeClients,
    published,
    received,
    start_cluster,
    subscribed,
    wait_for_route,
)
from rawmqtt import DISCONNECT, PUBACK, RawClient, publish

from raftmq.cluster.forwarding.transport import ForwardingSettings

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(120), pytest.mark.raftmq_only]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
BrokerFactory = Callable[..., "RunningBroker"]
GIVE_UP = ForwardingSettings().unreachable_timeout
"""How long a node waits for a stream to a peer before failing what it holds for it."""
LOG_TIMEOUT = 20.0
"""For a refusal to show in a node's output: the dialer retries every 2 s at most."""


def certs_node(directory: Path, *node_ids: str) -> None:
    result = subprocess.run(
        [RAFTMQ, "certs", "node", "--dir", str(directory), *node_ids],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def tls_keys(directory: Path, cert_of: str) -> dict[str, str]:
    """The cluster_tls_* keys of a node holding ``cert_of``'s certificate from ``directory``."""
    return {
        "cluster_tls_ca": str(directory / "ca.crt"),
        "cluster_tls_cert": str(directory / f"{cert_of}.crt"),
        "cluster_tls_key": str(directory / f"{cert_of}.key"),
    }


def server_certificate(address: str, certs: Path, expected_name: str) -> dict[str, Any]:
    """The certificate a node's gRPC port presents to a TLS client holding a node
    certificate, verified against ``certs/ca.crt`` and for ``expected_name``."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "n2.crt"), str(certs / "n2.key"))
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=expected_name) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    return cert


def wait_for_output(node: RunningBroker, text: str) -> str:
    """The first line of the node's output containing ``text``, waited for."""
    deadline = time.monotonic() + LOG_TIMEOUT
    while time.monotonic() < deadline:
        for line in list(node.output):
            if text in line:
                return line
        time.sleep(0.1)
    output = "\n".join(node.output[-40:])
    raise AssertionError(f"{text!r} never appeared in the node's output; its last lines:\n{output}")


def test_nodes_with_their_own_certificates_forward_over_mutual_tls(
    broker_factory: BrokerFactory, node_clients: NodeClients, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs_node(certs, "n1", "n2", "n3")
    cluster = start_cluster(broker_factory, per_node=lambda node_id: tls_keys(certs, node_id))

    subscriber = node_clients(cluster["n2"], "mtls-sub")
    subscribed(subscriber, "mtls/#", 1)
    publisher = node_clients(cluster["n1"], "mtls-pub")
    wait_for_route(publisher, subscriber, "mtls/probe")
    assert published(publisher, "mtls/a", b"over mutual TLS", 1) == 0
    [message] = received(subscriber, 1)
    assert (message.topic, message.payload) == ("mtls/a", b"over mutual TLS")

    # The forwarding port speaks TLS and presents the node's own certificate.
    cert = server_certificate(cluster.grpc["n1"], certs, "n1")
    assert (("commonName", "n1"),) in cert["subject"]
    for node in cluster.nodes.values():
        assert not [line for line in node.output if "refused a stream" in line]
        assert "PRIVATE KEY" not in "\n".join(node.output)


def publish_until_routed(client: RawClient, topic: str) -> Any:
    """Publish QoS 1 until the node knows a route for ``topic``; the first other answer."""
    deadline = time.monotonic() + 30
    packet_id = 0
    while True:
        packet_id += 1
        client.send(publish(topic, b"refused?", qos=1, packet_id=packet_id))
        answer = client.read(timeout=GIVE_UP + 20)
        if answer.type != PUBACK or answer.reason_code != NO_MATCHING_SUBSCRIBERS:
            return answer
        assert time.monotonic() < deadline, f"the route for {topic!r} never arrived"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("refused", "cert_of", "other_ca", "sign_of_refusal"),
    [
        pytest.param(
            "n1",
            "n2",
            False,
            dict.fromkeys(("n2", "n3"), "node 'n1' presented a certificate for ['n2']"),
            id="node-dialing-with-another-nodes-certificate",
        ),
        pytest.param(
            "n3",
            "n1",
            False,
            dict.fromkeys(("n1", "n2"), "Hostname Verification Check failed"),
            id="node-dialed-with-another-nodes-certificate",
        ),
        pytest.param(
            "n3",
            "n3",
            True,
            dict.fromkeys(("n1", "n2"), "CERTIFICATE_VERIFY_FAILED"),
            id="node-with-a-certificate-from-another-ca",
        ),
    ],
)
def test_peers_refuse_a_node_whose_certificate_is_not_its_own(
    broker_factory: BrokerFactory,
    node_clients: NodeClients,
    tmp_path: Path,
    refused: str,
    cert_of: str,
    other_ca: bool,
    sign_of_refusal: dict[str, str],
) -> None:
    certs, foreign = tmp_path / "certs", tmp_path / "other-ca"
    certs_node(certs, "n1", "n2", "n3")
    certs_node(foreign, "n3")  # a CA of its own, made by the command

    def keys(node_id: str) -> dict[str, str]:
        if node_id != refused:
            return tls_keys(certs, node_id)
        return tls_keys(foreign if other_ca else certs, cert_of)

    cluster = start_cluster(broker_factory, per_node=keys)
    good = [node_id for node_id in cluster.nodes if node_id != refused]

    # The other two nodes forward to each other: the refusal is of that node alone.
    subscriber = node_clients(cluster[good[0]], "refusal-sub")
    subscribed(subscriber, "refusal/#", 1)
    publisher = node_clients(cluster[good[1]], "refusal-good-pub")
    wait_for_route(publisher, subscriber, "refusal/probe")

    for node_id, text in sign_of_refusal.items():
        wait_for_output(cluster[node_id], text)
    if not other_ca:  # the refused node was told at startup why this would happen
        wait_for_output(cluster[refused], f"names ['{cert_of}'], not this node '{refused}'")

    # A message taken by the refused node never reaches the subscriber on another node.
    impostor = node_clients(cluster[refused], "refusal-pub")
    answer = publish_until_routed(impostor, "refusal/from-refused-node")
    assert (answer.type, answer.reason_code) == (DISCONNECT, SERVER_UNAVAILABLE), answer
    subscriber.assert_silent(1.0)
    for node in cluster.nodes.values():
        assert "PRIVATE KEY" not in "\n".join(node.output)
