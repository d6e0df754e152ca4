"""The config checks that span several keys, run once every key has passed its own.

Kept apart from ``config_schema`` (each key and its own check) so that each
file has one job: these are the rules between keys, such as TLS files that
only make sense together, or a cluster described in full or not at all.
"""

from raftmq.node.config_schema import CLUSTER_TLS_KEYS, MIN_CLUSTER_SECRET, Config
from raftmq.node.config_types import ConfigError, check_host_port


def check_config(config: Config, origin: str) -> None:
    """The checks that span several keys, run once every key has passed its own."""
    _check_tls_keys(config, origin)
    _check_cluster_keys(config, origin)


def _check_tls_keys(config: Config, origin: str) -> None:
    """Keys that only make sense together: caught here rather than at the first TLS client."""
    tls = [address.url() for address in config.listen if address.is_tls]
    if tls and (config.tls_cert is None or config.tls_key is None):
        raise ConfigError(f"{origin}: listener {tls[0]} needs both 'tls_cert' and 'tls_key'")
    if config.tls_require_client_cert and config.tls_ca is None:
        raise ConfigError(
            f"{origin}: key 'tls_require_client_cert' needs 'tls_ca', "
            "the CA that signs the client certificates"
        )
    if config.tls_cert_as_username != "off" and not config.tls_require_client_cert:
        raise ConfigError(
            f"{origin}: key 'tls_cert_as_username' needs 'tls_require_client_cert = true'"
        )


def _check_cluster_keys(config: Config, origin: str) -> None:
    """A node is either alone (no cluster keys) or fully described: half a cluster
    config would otherwise surface as a node that silently runs alone."""
    if config.cluster_secret is None:
        cluster_only = ("raft_listen", "grpc_listen", *CLUSTER_TLS_KEYS)
        given = [k for k in cluster_only if getattr(config, k) is not None]
        if config.peers:
            given.append("peers")
        if given:
            raise ConfigError(f"{origin}: key {given[0]!r} needs 'cluster_secret'")
        return
    tls_given = [k for k in CLUSTER_TLS_KEYS if getattr(config, k) is not None]
    if tls_given and len(tls_given) < len(CLUSTER_TLS_KEYS):
        missing = " and ".join(repr(k) for k in CLUSTER_TLS_KEYS if k not in tls_given)
        raise ConfigError(f"{origin}: key {tls_given[0]!r} needs {missing} too")
    if len(config.cluster_secret) < MIN_CLUSTER_SECRET:
        raise ConfigError(
            f"{origin}: key 'cluster_secret' must be at least {MIN_CLUSTER_SECRET} characters, "
            f"got {len(config.cluster_secret)}"
        )
    for key in ("raft_listen", "grpc_listen"):
        value = getattr(config, key)
        if value is None:
            raise ConfigError(f"{origin}: key 'cluster_secret' needs {key!r} (HOST:PORT)")
        try:
            check_host_port(value, "address")
        except ValueError as exc:
            raise ConfigError(f"{origin}: key {key!r}: {exc}") from None
    if config.swim_probe_timeout >= config.swim_probe_interval:
        raise ConfigError(
            f"{origin}: key 'swim_probe_timeout' ({config.swim_probe_timeout:g} s) must be "
            f"below 'swim_probe_interval' ({config.swim_probe_interval:g} s)"
        )
    if config.raft_listen == config.grpc_listen:
        raise ConfigError(
            f"{origin}: keys 'raft_listen' and 'grpc_listen' are both {config.raft_listen}"
        )
    for peer in config.peers:
        if peer.node_id == config.node_id:
            raise ConfigError(
                f"{origin}: key 'peers': {peer.spec()!r} is this node ({config.node_id!r})"
            )
        for address in (peer.raft, peer.grpc):
            if address in (config.raft_listen, config.grpc_listen):
                raise ConfigError(
                    f"{origin}: key 'peers': {peer.spec()!r} uses this node's address {address}"
                )
