"""Walking Mosquitto's directive lines the way Mosquitto does: what each one sets, and where.

Mosquitto's config is not a set of independent keys: a listener option
applies to the ``listener`` line above it (or, before the first one, to the
default listener of ``port`` and ``bind_address``), the security options
follow ``per_listener_settings``, and a bridge section runs from its
``connection`` line on. This module replays those rules and records every
value with the line it came from, checking values as Mosquitto 2.x does
(a value it would refuse is a ``MosquittoConfigError``). What raftmq makes
of the result is ``mapping``'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import directives
from .reader import Line

Parser = Callable[[Line], object]


def parse_bool(line: Line) -> bool:
    if line.value in ("true", "1"):
        return True
    if line.value in ("false", "0"):
        return False
    raise line.error(f"expected true or false, got {line.value!r}")


def parse_int(line: Line) -> int:
    try:
        return int(line.value)
    except ValueError:
        raise line.error(f"expected an integer, got {line.value!r}") from None


def parse_text(line: Line) -> str:
    if not line.value:
        raise line.error("needs a value")
    return line.value


def _choice(*allowed: str) -> Parser:
    def parse(line: Line) -> str:
        if line.value not in allowed:
            raise line.error(f"expected {' or '.join(allowed)}, got {line.value!r}")
        return line.value

    return parse


LISTENER_OPTIONS: dict[str, Parser] = {
    "protocol": _choice("mqtt", "websockets"),
    "socket_domain": _choice("ipv4", "ipv6"),
    "cafile": parse_text,
    "certfile": parse_text,
    "keyfile": parse_text,
    "require_certificate": parse_bool,
    "use_identity_as_username": parse_bool,
    "max_connections": parse_int,
    "max_topic_alias": parse_int,
}
"""Options of the listener they follow (Mosquitto's ``cur_listener``)."""

SECURITY_OPTIONS: dict[str, Parser] = {
    "allow_anonymous": parse_bool,
    "password_file": parse_text,
    "acl_file": parse_text,
}
"""Options that are node-wide, or per listener under ``per_listener_settings true``."""

OTHER_SECURITY = frozenset(
    {"psk_file", "plugin", "auth_plugin", "auto_id_prefix", "allow_zero_length_clientid"}
)
"""Unmapped directives that still count as security settings for per_listener_settings."""

GLOBAL_OPTIONS: dict[str, Parser] = {
    "max_keepalive": parse_int,
    "max_packet_size": parse_int,
    "message_size_limit": parse_int,
    "max_inflight_messages": parse_int,
    "max_queued_messages": parse_int,
    "max_queued_bytes": parse_int,
    "persistence": parse_bool,
    "persistence_location": parse_text,
    "sys_interval": parse_int,
    "queue_qos0_messages": parse_bool,
}
"""Node-wide options; the last line of each wins, as in Mosquitto."""

GLOBAL_ALIASES = {"retained_persistence": "persistence"}

MAX_PORT = 65535
_BOOL_SPELLINGS = {"1": "true", "0": "false"}


@dataclass(frozen=True, slots=True)
class Value:
    """A parsed directive value and the line that set it."""

    value: object
    line: Line

    @property
    def number(self) -> int:
        """The value of an integer directive (parsed by ``parse_int``)."""
        assert isinstance(self.value, int), self.line.where
        return self.value


@dataclass(slots=True)
class Listener:
    """One Mosquitto listener and everything that applied to it."""

    port: int
    defined_by: list[Line] = field(default_factory=list)
    """``listener`` line, or the default listener's ``port`` / ``bind_address`` lines."""
    host: str | None = None
    options: dict[str, Value] = field(default_factory=dict)
    security: dict[str, Value] = field(default_factory=dict)
    applied: list[Line] = field(default_factory=list)
    """Every line that set something on it; a default listener with any exists."""
    unix_socket: bool = False

    def option(self, name: str, default: object = None) -> object:
        found = self.options.get(name)
        return default if found is None else found.value

    @property
    def origin(self) -> list[Line]:
        """The lines that made it: a default listener made by an option has no port line."""
        return self.defined_by or self.applied[:1]

    @property
    def name(self) -> str:
        return f"listener {self.port}" + (f" {self.host}" if self.host else "")


@dataclass(frozen=True, slots=True)
class Remark:
    """A directive raftmq cannot honour as written: one line of stderr."""

    line: Line
    message: str

    def __str__(self) -> str:
        return f"{self.line.where}: {self.line.directive}: {self.message}"


@dataclass(slots=True)
class Walked:
    """Everything the lines set, each value with its line, and the remarks made on the way."""

    listeners: list[Listener] = field(default_factory=list)
    default: Listener = field(default_factory=lambda: Listener(port=1883))
    per_listener: Value | None = None
    security: dict[str, Value] = field(default_factory=dict)
    options: dict[str, Value] = field(default_factory=dict)
    log_dest: list[Line] = field(default_factory=list)
    log_type: list[Line] = field(default_factory=list)
    remarks: list[Remark] = field(default_factory=list)
    local_only: bool = True
    """No listener, port or bind_address: Mosquitto 2 listens on localhost:1883 only."""


def walk(lines: list[Line]) -> Walked:
    state = _Walk()
    for line in lines:
        if line.file != state.file:
            state.enter(line)
        state.take(line)
    return state.result


class _Walk:
    def __init__(self) -> None:
        self.result = Walked()
        self.current = self.result.default
        self.in_bridge = False
        self.security_seen = False
        self.file = ""
        self.in_included = False
        self.main_scope = (self.current, self.in_bridge)

    def enter(self, line: Line) -> None:
        """Each file has its own scope, as Mosquitto reads each with a fresh current
        listener (the default one) and no bridge; the main file's scope comes back
        after its include_dir."""
        if line.included and not self.in_included:
            self.main_scope = (self.current, self.in_bridge)
        if line.included:
            self.current, self.in_bridge = self.result.default, False
        else:
            self.current, self.in_bridge = self.main_scope
        self.in_included = line.included
        self.file = line.file

    def remark(self, line: Line, message: str) -> None:
        self.result.remarks.append(Remark(line, message))

    def take(self, line: Line) -> None:
        name = GLOBAL_ALIASES.get(line.directive, line.directive)
        if name in directives.BRIDGE:
            self._bridge(line)
        elif name in _HANDLERS:
            _HANDLERS[name](self, line)
        elif name in LISTENER_OPTIONS:
            self.current.options[name] = Value(LISTENER_OPTIONS[name](line), line)
            self.current.applied.append(line)
        elif name in SECURITY_OPTIONS:
            self._security(name, line)
        elif name in GLOBAL_OPTIONS:
            self.result.options[name] = Value(GLOBAL_OPTIONS[name](line), line)
        else:
            self._unmapped(line)

    def _unmapped(self, line: Line) -> None:
        if line.directive in OTHER_SECURITY:
            self.security_seen = True
        value = _BOOL_SPELLINGS.get(line.value, line.value)
        if directives.SAME_AS_RAFTMQ.get(line.directive) == value:
            return
        answer = directives.answer(line.directive)
        if answer is None:
            answer = (
                "unknown directive (not one of Mosquitto 2.0's, which would refuse it): "
                "check its spelling"
            )
        self.remark(line, answer)

    def _security(self, name: str, line: Line) -> None:
        self.security_seen = True
        value = Value(SECURITY_OPTIONS[name](line), line)
        per_listener = self.result.per_listener
        if per_listener is not None and per_listener.value:
            self.current.security[name] = value
            if name == "password_file":  # it alone makes Mosquitto create the default listener
                self.current.applied.append(line)
        else:
            self.result.security[name] = value

    def _listener(self, line: Line) -> None:
        self.result.local_only = False
        port_text, _, host = line.value.partition(" ")
        host = host.strip()
        if host.startswith("#"):
            host = ""
        try:
            port = int(port_text)
        except ValueError:
            raise line.error(f"expected a port number, got {port_text!r}") from None
        if not 0 <= port <= MAX_PORT:
            raise line.error(f"port {port} is not from 1 to {MAX_PORT}")
        if port == 0 and not host:
            raise line.error("a listener with port 0 must give a Unix socket path")
        listener = Listener(port=port, defined_by=[line], host=host or None)
        listener.unix_socket = port == 0
        if listener.unix_socket:
            self.remark(
                line,
                "not supported: raftmq listens on TCP only; listen on a loopback address "
                "(listener PORT 127.0.0.1) instead of a Unix socket",
            )
        self.result.listeners.append(listener)
        self.current = listener

    def _port(self, line: Line) -> None:
        self.result.local_only = False
        port = parse_int(line)
        if not 1 <= port <= MAX_PORT:
            raise line.error(f"port {port} is not from 1 to {MAX_PORT}")
        self.result.default.port = port
        self._define_default(line)

    def _bind_address(self, line: Line) -> None:
        self.result.local_only = False
        self.result.default.host = parse_text(line)
        self._define_default(line)

    def _define_default(self, line: Line) -> None:
        default = self.result.default
        default.defined_by = [d for d in default.defined_by if d.directive != line.directive]
        default.defined_by.append(line)
        default.applied.append(line)

    def _per_listener_settings(self, line: Line) -> None:
        value = Value(parse_bool(line), line)
        if value.value and self.security_seen:
            raise line.error("must come before any other security setting (Mosquitto refuses it)")
        self.result.per_listener = value

    def _log_dest(self, line: Line) -> None:
        parse_text(line)
        self.result.log_dest.append(line)

    def _log_type(self, line: Line) -> None:
        parse_text(line)
        self.result.log_type.append(line)

    def _include_dir(self, line: Line) -> None:
        if line.included:
            self.remark(
                line,
                "ignored, as by Mosquitto: include_dir works in the main file only; move it there",
            )

    def _bridge(self, line: Line) -> None:
        if line.directive == "connection":
            parse_text(line)
            self.in_bridge = True
            self.remark(line, f"bridge {line.value!r} and its section: {directives.BRIDGE_ANSWER}")
        elif not self.in_bridge:
            raise line.error("is a bridge option, but no `connection NAME` line comes before it")


_HANDLERS: dict[str, Callable[[_Walk, Line], None]] = {
    "listener": _Walk._listener,
    "port": _Walk._port,
    "bind_address": _Walk._bind_address,
    "per_listener_settings": _Walk._per_listener_settings,
    "log_dest": _Walk._log_dest,
    "log_type": _Walk._log_type,
    "include_dir": _Walk._include_dir,
}
