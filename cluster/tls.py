"""A node's TLS at run time: its certificate, key and CA, as gRPC credentials.

``NodeTLS.of_node`` reads and checks the files a config names
(``certfiles.load_node_tls``); making certificates is ``tools/certgen.py``'s
business, not a running node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from raftmq.node.config import Config


@dataclass(slots=True, frozen=True)
class NodeTLS:
    """This node's certificate and key, and the CA that signs every node's."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def of_node(cls, config: Config) -> NodeTLS | None:
        """The node TLS ``config`` names (cluster_tls_*), checked; None when it names none."""
        if not (config.cluster_tls_ca and config.cluster_tls_cert and config.cluster_tls_key):
            return None
        # Imported here: only nodes with node TLS load cryptography.
        from .certfiles import load_node_tls

        files = (config.cluster_tls_ca, config.cluster_tls_cert, config.cluster_tls_key)
        return cls(*load_node_tls(config.node_id, *files))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
