"""Node configuration: the TOML file, command-line overrides and their validation.

Each key is described exactly once, by a field of :class:`Config`: its
annotation is the type, its default is the default, and its metadata holds
the check and the help text. Validation, ``raftmq node --help`` and the
README table are all derived from those fields, so they cannot drift apart.

Errors are :class:`ConfigError` with a one-line message that names the file
(or "command line"), the key and what is wrong, because the CLI shows it to
the user as is.
"""

import difflib
import ipaddress
import math
import os
import re
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

LISTEN_SCHEMES = ("tcp", "ws", "mqtts", "wss")
TLS_SCHEMES = ("mqtts", "wss")
CERT_USERNAME_SOURCES = ("off", "cn", "san")
DEFAULT_LISTEN = "tcp://127.0.0.1:1883"
DEFAULT_WS_PATH = "/mqtt"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
QUEUE_OVERFLOW_POLICIES = ("drop_new", "drop_oldest")
DURABILITY_MODES = ("disk", "memory")
OVERRIDES_ORIGIN = "command line"
UNSET = "unset"  # how a default of None is documented


class ConfigError(Exception):
    """A configuration problem, phrased to be shown to the user unchanged."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address clients connect to, as parsed from a listen URL."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can reach it.

        Host names other than ``localhost`` count as reachable from outside:
        resolving them here would be slow and could change after startup.
        """
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_tls(self) -> bool:
        return self.scheme in TLS_SCHEMES

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


NODE_ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
NODE_ID_ALLOWED = "1 to 64 letters, digits, '.', '_' or '-'"
HOST_PORT_PATTERN = r"[A-Za-z0-9._-]+:[0-9]{1,5}"
MIN_CLUSTER_SECRET = 16  # what raftmq.cluster.raft also demands; checked here to fail early
CLUSTER_TLS_KEYS = ("cluster_tls_ca", "cluster_tls_cert", "cluster_tls_key")
"""Mutual TLS between nodes: all three or none. The files are loaded when the cluster starts."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Another node of a static cluster: its id and where its Raft and gRPC ports are."""

    node_id: str
    raft: str
    grpc: str

    def spec(self) -> str:
        return f"{self.node_id}={self.raft},{self.grpc}"


def parse_peer(spec: str) -> PeerAddress:
    """Parse ``NODE_ID=RAFT_HOST:PORT,GRPC_HOST:PORT``; ValueError names what is wrong."""
    expected = "expected NODE_ID=RAFT_HOST:PORT,GRPC_HOST:PORT"
    node_id, sep, addresses = spec.partition("=")
    parts = addresses.split(",")
    if not sep or len(parts) != 2:
        raise ValueError(f"invalid peer {spec!r}: {expected}")
    if not re.fullmatch(NODE_ID_PATTERN, node_id):
        raise ValueError(f"invalid peer {spec!r}: node id must be {NODE_ID_ALLOWED}")
    for what, address in zip(("Raft", "gRPC"), parts, strict=True):
        _check_host_port(address, f"peer {spec!r}: {what} address")
    return PeerAddress(node_id, parts[0], parts[1])


def _check_host_port(address: str, what: str) -> None:
    if not re.fullmatch(HOST_PORT_PATTERN, address) or not 0 < int(address.rsplit(":")[1]) < 65536:
        raise ValueError(f"{what} {address!r} must be HOST:PORT with a port from 1 to 65535")


def parse_listen(url: str, *, source: str = "--listen") -> ListenAddress:
    """Parse ``tcp|mqtts://HOST:PORT`` or ``ws|wss://HOST:PORT[/PATH]``; errors name ``source``."""
    try:
        return _parse_listen_url(url)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse_listen_url(url: str) -> ListenAddress:
    """Raise ValueError naming the problem, for the caller to say where it was.

    The port is required: MQTT over WebSocket has no standard port, and one
    rule for both schemes is easier to remember than a default for one.
    """
    if "://" not in url:
        raise ValueError(
            f"invalid listen URL {url!r}: expected SCHEME://HOST:PORT, e.g. {DEFAULT_LISTEN}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid listen URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in LISTEN_SCHEMES:
        supported = ", ".join(LISTEN_SCHEMES)
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {url!r} (supported: {supported})")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"listen URL {url!r} must not have user info, a query or a fragment")
    if not parts.hostname:
        raise ValueError(f"missing host in listen URL {url!r}")
    if port is None:
        raise ValueError(f"missing port in listen URL {url!r} (use port 0 to pick a free one)")
    path = parts.path
    if scheme in ("tcp", "mqtts"):
        if path not in ("", "/"):
            raise ValueError(f"{scheme} listen URL {url!r} cannot have a path")
        path = ""
    elif not path:
        path = DEFAULT_WS_PATH
    return ListenAddress(scheme, parts.hostname, port, path)


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
        """What is wrong with an already well-typed value, or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {_describe(value)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return f"must be {self.allowed}, got {_describe(value)}"
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
            help="Addresses clients connect to: tcp://HOST:PORT or ws://HOST:PORT/PATH "
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
            help="Seconds a new connection has to send CONNECT before it is closed.",
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

    @property
    def anonymous_allowed(self) -> bool:
        """Open by default only where nobody else can connect: a safe first run."""
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return all(address.is_loopback for address in self.listen)


def default_config() -> Config:
    return Config()


def _describe(value: object) -> str:
    """Name a raw value the way a TOML user thinks of it."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{'integer' if isinstance(value, int) else 'float'} {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _as_int(value: object) -> int:
    # bool is an int subclass; `max_inflight = true` is a mistake, not 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError("an integer")


def _as_float(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise TypeError("a finite number")


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("a string")


def _as_optional_bool(value: object) -> bool | None:
    # None only arrives through overrides (TOML has no null): it means "unset".
    if value is None or isinstance(value, bool):
        return value
    raise TypeError("a boolean")


def _as_optional_str(value: object) -> str | None:
    # None only arrives through overrides (TOML has no null): it means "unset".
    if value is None or isinstance(value, str):
        return value
    raise TypeError("a string")


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("a boolean")


def _as_peers(value: object) -> list[PeerAddress]:
    specs = [value] if isinstance(value, str) else value
    if not isinstance(specs, list | tuple) or not all(isinstance(p, str) for p in specs):
        raise TypeError("a peer string or an array of peer strings")
    peers = [parse_peer(spec) for spec in specs]
    seen: dict[str, str] = {}
    for peer in peers:
        if peer.node_id in seen:
            raise ValueError(f"node id {peer.node_id!r} is listed twice")
        for address in (peer.raft, peer.grpc):
            if address in seen:
                raise ValueError(f"address {address} is listed twice")
            seen[address] = peer.node_id
        seen[peer.node_id] = peer.node_id
    return peers


def _as_listen(value: object) -> list[ListenAddress]:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise TypeError("a URL string or an array of URL strings")
    if not urls:
        raise ValueError("must list at least one address")
    addresses = [_parse_listen_url(url) for url in urls]
    seen: set[tuple[str, int]] = set()
    for address in addresses:
        # Port 0 asks for a fresh port each time, so it can repeat.
        if address.port and (address.host, address.port) in seen:
            raise ValueError(f"{address.host}:{address.port} is listed twice")
        seen.add((address.host, address.port))
    return addresses


# How each annotation in Config is read from raw values, named in the docs, and
# what it accepts when the key adds no check of its own.
_TYPES: dict[object, tuple[str, Callable[[object], object], str]] = {
    int: ("integer", _as_int, "any integer"),
    float: ("number", _as_float, "any finite number"),
    str: ("string", _as_str, "any string"),
    bool: ("boolean", _as_bool, "true or false"),
    bool | None: ("boolean", _as_optional_bool, "true or false"),
    str | None: ("string", _as_optional_str, "a file path"),
    list[ListenAddress]: (
        "URL or array of URLs",
        _as_listen,
        "tcp://, ws://, mqtts:// or wss:// URLs with host and port, at least one",
    ),
    list[PeerAddress]: (
        "string or array of strings",
        _as_peers,
        "NODE_ID=RAFT_HOST:PORT,GRPC_HOST:PORT entries with distinct ids and addresses",
    ),
}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One config key as documented: every text shown to users comes from here."""

    name: str
    type: str
    default: str
    check: str
    help: str


def _toml_literal(value: object) -> str:
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        items = (a.url() if isinstance(a, ListenAddress) else a.spec() for a in value)
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"
    return str(value)


def _default_of(f: Field[Any]) -> object:
    return f.default_factory() if f.default is MISSING else f.default


_RULES: dict[str, _Rule] = {f.name: f.metadata["rule"] for f in fields(Config)}
_PARSERS: dict[str, Callable[[object], object]] = {
    f.name: _TYPES[f.type][1] for f in fields(Config)
}
KEYS: tuple[KeyInfo, ...] = tuple(
    KeyInfo(
        name=f.name,
        type=_TYPES[f.type][0],
        default=_toml_literal(_default_of(f)),
        check=_RULES[f.name].text() or _TYPES[f.type][2],
        help=_RULES[f.name].help,
    )
    for f in fields(Config)
)


def _parse_value(name: str, raw: object, origin: str) -> object:
    where = f"{origin}: key {name!r}"
    try:
        value = _PARSERS[name](raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: expected {exc}, got {_describe(raw)}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    problem = _RULES[name].problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return value


def _parse_table(table: Mapping[str, object], origin: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, raw in table.items():
        if name not in _PARSERS:
            close = difflib.get_close_matches(name, _PARSERS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(_PARSERS)}"
            raise ConfigError(f"{origin}: unknown key {name!r} ({hint})")
        values[name] = _parse_value(name, raw, origin)
    return values


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        raise ConfigError(f"{where}: cannot read file: {reason}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, object] | None = None
) -> Config:
    """Read the TOML file (if any), then apply overrides, which win key by key.

    Both are validated completely: a bad file stays an error even where a flag
    replaces the bad value, so the file is fixed rather than silently masked.
    """
    values: dict[str, object] = {}
    if path is not None:
        values.update(_parse_table(_read_toml(path), os.fspath(path)))
    if overrides:
        values.update(_parse_table(overrides, OVERRIDES_ORIGIN))
    config = Config(**values)
    origin = os.fspath(path) if path is not None else OVERRIDES_ORIGIN
    _check_tls_keys(config, origin)
    _check_cluster_keys(config, origin)
    return config


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
            _check_host_port(value, "address")
        except ValueError as exc:
            raise ConfigError(f"{origin}: key {key!r}: {exc}") from None
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


def _code(default: str) -> str:
    return default if default == UNSET else f"`{default}`"


def config_reference_markdown() -> str:
    """The README table of config keys."""
    rows = [
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
        *(f"| `{k.name}` | {k.type} | {_code(k.default)} | {k.check} | {k.help} |" for k in KEYS),
    ]
    return "\n".join(rows) + "\n"


def config_reference_text(width: int = 79) -> str:
    """The same reference for terminal help: one key per paragraph."""
    lines: list[str] = []
    for k in KEYS:
        lines.append(f"  {k.name} = {k.default}")
        text = f"{k.help} [{k.type}: {k.check}]"
        lines.extend(textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
