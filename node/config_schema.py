"""The config keys: each one described exactly once, and the checks of their values.

Each key is a field of :class:`Config`: its annotation is the type, its
default is the default, and its metadata holds the check and the help text.
Validation, ``raftmq node --help`` and the key table of
docs/configuration.md (``config_reference``) are all derived from those
fields, so they cannot drift apart.

Errors are :class:`ConfigError` with a one-line message that names the file
(or "command line"), the key and what is wrong, because the CLI shows it to
the user as is.
"""

# No ``from __future__ import annotations``: the field annotations must stay
# types, since they are looked up in ``TYPES``.
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from raftmq.node.config_types import (
    DEFAULT_LISTEN,
    DEFAULT_WS_PATH,
    HOST_PORT_PATTERN,
    NODE_ID_ALLOWED,
    NODE_ID_PATTERN,
    TYPES,
    ConfigError,
    ListenAddress,
    PeerAddress,
    describe,
    parse_listen,
)

CERT_USERNAME_SOURCES = ("off", "cn", "san")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
QUEUE_OVERFLOW_POLICIES = ("drop_new", "drop_oldest")
DURABILITY_MODES = ("disk", "memory")
FAILURE_DETECTION_MODES = ("swim", "off")
MIN_CLUSTER_SECRET = 16  # what raftmq.cluster.raft also demands; checked here to fail early
CLUSTER_TLS_KEYS = ("cluster_tls_ca", "cluster_tls_cert", "cluster_tls_key")
"""Mutual TLS between nodes: all three or none. The files are loaded when the cluster starts."""


@dataclass(frozen=True, slots=True)
class _Rule:
    """The check and help of one key; kept in the field's metadata."""

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    allowed: str = ""  # what the pattern accepts

    def text(self) -> str:
        """The allowed values, as shown in help and docs."""
        if self.allowed:
            return self.allowed
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.ge is not None and self.le is not None:
            return f"{self.ge} to {self.le}"
        if self.ge is not None:
            return f"at least {self.ge}"
        if self.gt is not None:
            return f"more than {self.gt}"
        return ""

    def problem(self, value: object) -> str | None:
        """What is wrong with an already well-typed value, or None.

        None is an optional key left unset (its type admitted it): no rule applies.
        """
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {describe(value)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"must be {self.allowed}, got {describe(value)}"
        if isinstance(value, int | float):
            too_low = (self.ge is not None and value < self.ge) or (
                self.gt is not None and value <= self.gt
            )
            if too_low or (self.le is not None and value > self.le):
                bound = self.text()
                if self.ge is not None and self.le is not None:
                    bound = f"between {self.ge} and {self.le}"
                return f"must be {bound}, got {value}"
        return None


def _rule(help: str, **checks: Any) -> dict[str, _Rule]:
    """Field metadata that makes a Config field a documented, checked key."""
    return {"rule": _Rule(help, **checks)}


@dataclass(slots=True)
class Config:
    """Everything a node needs to know at startup. Field order is the documented order."""

    listen: list[ListenAddress] = field(
        default_factory=lambda: [parse_listen(DEFAULT_LISTEN)],
        metadata=_rule(
            help="Addresses clients connect to: tcp://HOST:PORT (mqtt:// is the same and is "
            "shown as tcp://) or ws://HOST:PORT/PATH "
            f"(WebSocket path defaults to {DEFAULT_WS_PATH}), and their TLS forms "
            "mqtts:// and wss://. Port 0 picks a free port.",
        ),
    )
    data_dir: str = field(
        default="./raftmq-data",
        metadata=_rule(
            help="Directory for this node's durable state (sessions, queued messages, Raft log).",
            pattern=r".+",
            allowed="a non-empty path",
        ),
    )
    durability: str = field(
        default="disk",
        metadata=_rule(
            help="Where persistent sessions (subscriptions, queued and in-flight QoS 1/2 "
            "messages) and retained messages live: disk (SQLite in data_dir; they survive "
            "kill -9 of the node) or memory (faster; lost when the node stops).",
            choices=DURABILITY_MODES,
        ),
    )
    node_id: str = field(
        default="node1",
        metadata=_rule(
            help="Name of this node, unique within its cluster.",
            pattern=NODE_ID_PATTERN,
            allowed=NODE_ID_ALLOWED,
        ),
    )
    cluster_secret: str | None = field(
        default=None,
        metadata=_rule(
            help="Secret shared by every node of the cluster: it keys the encryption of the "
            "Raft port and authenticates forwarding streams. Unset: the node is a cluster of "
            "one and the other cluster keys must be unset too. Prefer the config file to "
            "the flag, which other local users can see.",
            allowed=f"at least {MIN_CLUSTER_SECRET} characters",  # checked without echoing it
        ),
    )
    raft_listen: str | None = field(
        default=None,
        metadata=_rule(
            help="HOST:PORT of this node's Raft port, as its peers reach it; needed with "
            "cluster_secret.",
            pattern=HOST_PORT_PATTERN,
            allowed="HOST:PORT",
        ),
    )
    grpc_listen: str | None = field(
        default=None,
        metadata=_rule(
            help="HOST:PORT of this node's forwarding (gRPC) port, as its peers reach it; "
            "needed with cluster_secret.",
            pattern=HOST_PORT_PATTERN,
            allowed="HOST:PORT",
        ),
    )
    peers: list[PeerAddress] = field(
        default_factory=list,
        metadata=_rule(
            help="The other nodes of the cluster (static membership), each as "
            "NODE_ID=RAFT_HOST:PORT,GRPC_HOST:PORT; every node lists all the others.",
        ),
    )
    cluster_tls_ca: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM CA certificate(s) that sign every node's certificate. With "
            "cluster_tls_cert and cluster_tls_key (all three or none; needs cluster_secret) "
            "forwarding streams between nodes use mutual TLS, and a peer is accepted only "
            "with a certificate naming its node id. Made by `raftmq certs node`.",
        ),
    )
    cluster_tls_cert: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM certificate of this node for mutual TLS between nodes: CN or DNS SAN "
            "its node_id, signed by cluster_tls_ca.",
        ),
    )
    cluster_tls_key: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM private key of cluster_tls_cert (unencrypted; keep it mode 0600).",
        ),
    )
    cluster_lease: float = field(
        default=3.0,
        metadata=_rule(
            help="Seconds a node goes on serving its clients without hearing from a Raft "
            "majority. Past it, it disconnects them with 0x88 and refuses new ones until a "
            "majority is heard again, so that the majority may give their client ids to "
            "other nodes (see cluster_lease_margin).",
            gt=0,
        ),
    )
    cluster_lease_margin: float = field(
        default=1.0,
        metadata=_rule(
            help="Seconds on top of cluster_lease (and of Raft's 3.5 s to notice a silent "
            "peer) that a CONNECT taking over a client id waits when the node holding it "
            "does not let go at once: by then that node has surely stopped serving it.",
            ge=0,
        ),
    )
    route_barrier_timeout: float = field(
        default=1.0,
        metadata=_rule(
            help="Seconds a new route waits for each live peer to say it routes by it "
            "(a SUBACK waits for that, and so does a session letting go of its old node). "
            "A peer silent for longer is passed over, counted and logged.",
            gt=0,
        ),
    )
    failure_detection: str = field(
        default="swim",
        metadata=_rule(
            help="How a cluster finds out that a node died: 'swim' (SWIM over UDP on the "
            "raft_listen address, encrypted and authenticated with cluster_secret; the Raft "
            "leader then declares a dead node down on its own) or 'off' (only "
            "`raftmq cluster node-down` does).",
            choices=FAILURE_DETECTION_MODES,
        ),
    )
    swim_probe_interval: float = field(
        default=0.5,
        metadata=_rule(
            help="Seconds between two SWIM probes of a node, each of one other node in turn. "
            "With the defaults a killed node is confirmed dead in about 3 s and declared down "
            "once its cluster_lease has surely run out.",
            gt=0,
        ),
    )
    swim_probe_timeout: float = field(
        default=0.25,
        metadata=_rule(
            help="Seconds a SWIM probe waits for the direct answer before asking other "
            "nodes to probe too; below swim_probe_interval.",
            gt=0,
        ),
    )
    swim_suspicion_mult: float = field(
        default=4.0,
        metadata=_rule(
            help="A suspected node has at least swim_suspicion_mult x swim_probe_interval "
            "seconds (x log10 of the node count, from 10 nodes on) to refute before it is "
            "confirmed dead; three times that while nobody else confirms the suspicion.",
            gt=0,
        ),
    )
    allow_anonymous: bool | None = field(
        default=None,
        metadata=_rule(
            help="Accept clients without credentials. Unset: only when every listener "
            "is on a loopback address.",
        ),
    )
    password_file: str | None = field(
        default=None,
        metadata=_rule(
            help="File of users and salted scrypt hashes, made with `raftmq passwd`; "
            "reloaded on SIGHUP. Unset: usernames are not checked and count as anonymous.",
        ),
    )
    acl_file: str | None = field(
        default=None,
        metadata=_rule(
            help="File of topic access rules (Mosquitto syntax: user, topic, pattern); "
            "reloaded on SIGHUP. Unset: every client may publish and subscribe anywhere.",
        ),
    )
    tls_cert: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM server certificate (chain) for mqtts:// and wss:// listeners.",
        ),
    )
    tls_key: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM private key of tls_cert.",
        ),
    )
    tls_ca: str | None = field(
        default=None,
        metadata=_rule(
            help="PEM CA certificate(s) that client certificates must be signed by.",
        ),
    )
    tls_require_client_cert: bool = field(
        default=False,
        metadata=_rule(
            help="Mutual TLS: refuse the TLS handshake of clients without a valid "
            "certificate signed by tls_ca.",
        ),
    )
    tls_cert_as_username: str = field(
        default="off",
        metadata=_rule(
            help="Take the username of TLS clients from their certificate: its subject "
            "CN (cn) or its first DNS/email/URI subject alternative name (san); "
            "needs tls_require_client_cert.",
            choices=CERT_USERNAME_SOURCES,
        ),
    )
    max_packet_size: int = field(
        default=1_048_576,
        metadata=_rule(
            help="Largest MQTT packet accepted from or sent to a client, in bytes.",
            ge=2,
            le=268_435_460,
        ),
    )
    receive_maximum: int = field(
        default=100,
        metadata=_rule(
            help="Incoming QoS 1/2 PUBLISHes a client may have unacknowledged at once "
            "(advertised in the v5 CONNACK).",
            ge=1,
            le=65535,
        ),
    )
    max_inflight: int = field(
        default=20,
        metadata=_rule(
            help="Outgoing QoS 1/2 messages unacknowledged at once per client; "
            "also capped by the client's own Receive Maximum.",
            ge=1,
            le=65535,
        ),
    )
    max_queued_messages: int = field(
        default=1000,
        metadata=_rule(
            help="Messages a session may hold waiting for delivery "
            "(client offline or in-flight window full).",
            ge=1,
        ),
    )
    max_queued_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata=_rule(
            help="Payload bytes a session may hold waiting for delivery; a message that "
            "does not fit overflows per queue_overflow. 0: no byte limit.",
            ge=0,
        ),
    )
    queue_overflow: str = field(
        default="drop_new",
        metadata=_rule(
            help="What a full session queue discards: the arriving message (drop_new) "
            "or the oldest queued one (drop_oldest).",
            choices=QUEUE_OVERFLOW_POLICIES,
        ),
    )
    queue_qos0: bool = field(
        default=False,
        metadata=_rule(
            help="Whether QoS 0 messages are queued for offline persistent sessions "
            "(Mosquitto's queue_qos0_messages).",
        ),
    )
    max_keepalive: int = field(
        default=65535,
        metadata=_rule(
            help="Longest keep alive granted, in seconds; v5 clients asking for more, "
            "or for 0, get this as Server Keep Alive.",
            ge=0,
            le=65535,
        ),
    )
    max_topic_levels: int = field(
        default=128,
        metadata=_rule(
            help="Most '/'-separated levels a topic name or filter may have.",
            ge=1,
        ),
    )
    max_client_id_length: int = field(
        default=256,
        metadata=_rule(
            help="Longest client id accepted, in UTF-8 bytes; longer ones get "
            "CONNACK 0x85 (v3: return code 2).",
            ge=23,
            le=65535,
        ),
    )
    max_retained_messages: int = field(
        default=100_000,
        metadata=_rule(
            help="Retained messages this node stores; a retained PUBLISH on a new topic "
            "beyond it is not stored. 0: no limit.",
            ge=0,
        ),
    )
    max_retained_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=_rule(
            help="Topic plus payload bytes of all retained messages together; a retained "
            "PUBLISH that would pass it is not stored. 0: no limit.",
            ge=0,
        ),
    )
    topic_alias_maximum: int = field(
        default=10,
        metadata=_rule(
            help="Topic aliases per v5 connection, in each direction; 0 disables them.",
            ge=0,
            le=65535,
        ),
    )
    max_connections: int = field(
        default=100_000,
        metadata=_rule(
            help="Most client connections this node holds at once; more get CONNACK 0x97 "
            "(v3: 3). Sockets past it by a tenth (at least 16) are closed when accepted.",
            ge=1,
        ),
    )
    max_publish_rate: float = field(
        default=0.0,
        metadata=_rule(
            help="PUBLISH packets per second one client may send on average, in bursts of up "
            "to one second's worth; faster clients are disconnected (v5: 0x96). 0: no limit.",
            ge=0,
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=_rule(
            help="Seconds a new connection has to send CONNECT before it is closed. A "
            "CONNECT still being handled (its claim waiting for the cluster) is not cut short.",
            gt=0,
        ),
    )
    write_stall_timeout: float = field(
        default=5.0,
        metadata=_rule(
            help="Seconds a client that stopped reading may hold back the publishers "
            "feeding it; after that its messages queue and overflow per queue_overflow.",
            gt=0,
        ),
    )
    close_linger: float = field(
        default=2.0,
        metadata=_rule(
            help="Seconds a connection the node ends with a DISCONNECT or a refusing CONNACK "
            "stays half-closed, its input read and discarded, so that a client still sending "
            "reads the reason code instead of a reset; it counts against max_connections "
            "until it closes. 0: close at once. TLS closes at once; WebSocket has its own "
            "closing handshake.",
            ge=0,
        ),
    )
    sys_interval: float = field(
        default=10.0,
        metadata=_rule(
            help="Seconds between $SYS topic updates; 0 disables them.",
            ge=0,
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_rule(
            help="Least severe log messages written to stderr.",
            choices=LOG_LEVELS,
        ),
    )
    log_client: str = field(
        default="",
        metadata=_rule(
            help="Client id whose packets are logged, one debug line each (direction, type, "
            "packet id, topic, QoS, retain, payload size; never payloads or passwords), "
            'when log_level = "debug". Empty: no client.',
        ),
    )

    @property
    def anonymous_allowed(self) -> bool:
        """Open by default only where nobody else can connect: a safe first run."""
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return all(address.is_loopback for address in self.listen)


def default_config() -> Config:
    return Config()


RULES: dict[str, _Rule] = {f.name: f.metadata["rule"] for f in fields(Config)}
_PARSERS: dict[str, Callable[[object], object]] = {f.name: TYPES[f.type][1] for f in fields(Config)}


def _parse_value(name: str, raw: object, origin: str) -> object:
    where = f"{origin}: key {name!r}"
    try:
        value = _PARSERS[name](raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: expected {exc}, got {describe(raw)}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    problem = RULES[name].problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return value


def parse_table(table: Mapping[str, object], origin: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, raw in table.items():
        if name not in _PARSERS:
            close = difflib.get_close_matches(name, _PARSERS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(_PARSERS)}"
            raise ConfigError(f"{origin}: unknown key {name!r} ({hint})")
        values[name] = _parse_value(name, raw, origin)
    return values
