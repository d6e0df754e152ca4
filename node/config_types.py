"""The value types of config keys, and how raw TOML or command-line values become them.

Readers raise ``TypeError`` naming the type they expected, or ``ValueError``
naming what is wrong; ``config_schema`` turns both into a ``ConfigError``
that says where the value came from.
"""

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

LISTEN_SCHEMES = ("tcp", "mqtt", "ws", "mqtts", "wss")
TLS_SCHEMES = ("mqtts", "wss")
SCHEME_ALIASES = {"mqtt": "tcp"}
"""Schemes accepted for another: ``mqtt://`` is what most client libraries call
plain MQTT over TCP, so a URL copied from a client's settings works as a listener."""
DEFAULT_LISTEN = "tcp://127.0.0.1:1883"
DEFAULT_WS_PATH = "/mqtt"
NODE_ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
NODE_ID_ALLOWED = "1 to 64 letters, digits, '.', '_' or '-'"
HOST_PORT_PATTERN = r"[A-Za-z0-9._-]+:[0-9]{1,5}"


class ConfigError(Exception):
    """A configuration problem, phrased to be shown to the user unchanged."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address clients connect to, as parsed from a listen URL.

    ``scheme`` is always one of tcp, ws, mqtts, wss: an alias (``mqtt``) is
    replaced when the URL is parsed, so listeners, TLS checks and connections
    see one name for one transport, and ``url()`` (hence ``Broker.addresses``) shows
    ``tcp://`` for a listener configured as ``mqtt://``.
    """

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
        check_host_port(address, f"peer {spec!r}: {what} address")
    return PeerAddress(node_id, parts[0], parts[1])


def check_host_port(address: str, what: str) -> None:
    if not re.fullmatch(HOST_PORT_PATTERN, address) or not 0 < int(address.rsplit(":")[1]) < 65536:
        raise ValueError(f"{what} {address!r} must be HOST:PORT with a port from 1 to 65535")


def parse_listen(url: str, *, source: str = "--listen") -> ListenAddress:
    """Parse ``tcp|mqtt|mqtts://HOST:PORT`` or ``ws|wss://HOST:PORT[/PATH]``.

    Errors name ``source``. ``mqtt://`` comes back as scheme ``tcp`` (see
    ``SCHEME_ALIASES``).
    """
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
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"listen URL {url!r} must not have user info, a query or a fragment")
    if not parts.hostname:
        raise ValueError(f"missing host in listen URL {url!r}")
    if port is None:
        raise ValueError(f"missing port in listen URL {url!r} (use port 0 to pick a free one)")
    path = parts.path
    if scheme in ("tcp", "mqtts"):
        if path not in ("", "/"):
            raise ValueError(f"{parts.scheme.lower()} listen URL {url!r} cannot have a path")
        path = ""
    elif not path:
        path = DEFAULT_WS_PATH
    return ListenAddress(scheme, parts.hostname, port, path)


def describe(value: object) -> str:
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
TYPES: dict[object, tuple[str, Callable[[object], object], str]] = {
    int: ("integer", _as_int, "any integer"),
    float: ("number", _as_float, "any finite number"),
    str: ("string", _as_str, "any string"),
    bool: ("boolean", _as_bool, "true or false"),
    bool | None: ("boolean", _as_optional_bool, "true or false"),
    str | None: ("string", _as_optional_str, "a file path"),
    list[ListenAddress]: (
        "URL or array of URLs",
        _as_listen,
        "tcp:// (or mqtt://), ws://, mqtts:// or wss:// URLs with host and port, at least one",
    ),
    list[PeerAddress]: (
        "string or array of strings",
        _as_peers,
        "NODE_ID=RAFT_HOST:PORT,GRPC_HOST:PORT entries with distinct ids and addresses",
    ),
}
