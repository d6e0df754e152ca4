"""What a walked Mosquitto config means as raftmq keys, and what raftmq cannot represent.

Mosquitto's defaults are part of the meaning: a config with listeners but no
``allow_anonymous`` refuses anonymous clients (Mosquitto 2), one with no
listener at all listens on localhost:1883 only and lets anyone in. raftmq's
TLS, authentication and connection limit are node-wide where Mosquitto's can
be per listener; where the listeners agree that is exact, where they differ
the converter keeps the stricter choice and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftmq.node.config import ListenAddress

from .walk import Listener, Remark, Value, Walked

MOSQUITTO_TOPIC_ALIASES = 10
MAX_PACKET_SIZE = 268_435_460  # raftmq's largest, what MQTT's four-byte length allows
MESSAGE_SIZE_HEADROOM = 4096
"""Room for the topic, packet id and properties on top of a message_size_limit payload."""
MAX_INFLIGHT = 65535
LOG_LEVELS = {  # Mosquitto log type: the raftmq log_level that shows it
    "debug": "debug",
    "all": "debug",
    "information": "info",
    "notice": "info",
    "warning": "warning",
    "error": "error",
    "none": "critical",
}
LOG_ORDER = ("debug", "info", "warning", "error", "critical")
UNLOGGED_TYPES = ("subscribe", "unsubscribe", "websockets")


@dataclass(frozen=True, slots=True)
class Setting:
    """One raftmq key, its value and the Mosquitto lines it comes from (empty: a default)."""

    key: str
    value: object
    sources: tuple[Value, ...] = ()
    note: str = ""


class Mapping:
    """Builds the settings of one walked config; ``remarks`` gathers what cannot be kept."""

    def __init__(self, walked: Walked) -> None:
        self.walked = walked
        self.settings: list[Setting] = []
        self.remarks: list[Remark] = list(walked.remarks)
        self.listeners = self._active_listeners()

    def set(self, key: str, value: object, *sources: Value | None, note: str = "") -> None:
        self.settings.append(Setting(key, value, tuple(s for s in sources if s), note))

    def remark(self, source: Value, message: str) -> None:
        self.remarks.append(Remark(source.line, message))

    def build(self) -> None:
        self._listen()
        self._tls()
        self._connections()
        self._topic_aliases()
        self._security()
        self._limits()
        self._storage()
        self._logging()

    def _active_listeners(self) -> list[Listener]:
        walked = self.walked
        if walked.local_only:
            default = walked.default
            per_listener = [
                v.line for v in default.security.values() if v.line not in default.applied
            ]
            for line in [*default.applied, *per_listener]:
                self.remarks.append(
                    Remark(
                        line,
                        "ignored, as by Mosquitto: with no listener, port or bind_address it "
                        "listens on localhost:1883 only; add a listener line above this one",
                    )
                )
            return []
        listeners = list(walked.listeners)
        if walked.default.applied:
            listeners.append(walked.default)  # Mosquitto adds it after the others
        return [listener for listener in listeners if not listener.unix_socket]

    def _listen(self) -> None:
        if self.walked.local_only:
            self.set(
                "listen",
                ["tcp://127.0.0.1:1883"],
                note="Mosquitto 2 with no listener listens on localhost:1883 only",
            )
            return
        if not self.listeners:
            return
        urls, sources, wildcard = [], [], False
        for listener in self.listeners:
            tls = _is_tls(listener)
            websockets = listener.option("protocol") == "websockets"
            scheme = ("wss" if tls else "ws") if websockets else ("mqtts" if tls else "tcp")
            host = listener.host
            if host is None:
                wildcard = True
                host = "::" if listener.option("socket_domain") == "ipv6" else "0.0.0.0"
            url = ListenAddress(scheme, host, listener.port, "/mqtt" if websockets else "").url()
            urls.append(url)
            sources.extend(Value(url, line) for line in listener.origin)
            sources.extend(
                v for n in ("protocol", "socket_domain") if (v := listener.options.get(n))
            )
        note = "a listener without an address: every IPv4 interface"
        if not wildcard:
            note = ""
        elif any(listener.option("socket_domain") is None for listener in self.listeners):
            note += " (Mosquitto takes IPv6 too: add a [::] URL of the same port for that)"
        self.set("listen", urls, *sources, note=note)

    def _tls(self) -> None:
        for listener in self.listeners:
            if not _is_tls(listener):
                for name in ("cafile", "certfile", "keyfile", "require_certificate"):
                    if name in listener.options:
                        self.remark(
                            listener.options[name],
                            "ignored, as by Mosquitto: this listener does not have both "
                            "certfile and keyfile, so it is not TLS",
                        )
        tls = [listener for listener in self.listeners if _is_tls(listener)]
        if not tls:
            return
        first, options = tls[0], tls[0].options
        self.set("tls_cert", options["certfile"].value, options["certfile"])
        self.set("tls_key", options["keyfile"].value, options["keyfile"])
        if "cafile" in options:
            self.set("tls_ca", options["cafile"].value, options["cafile"])
        required = options.get("require_certificate")
        identity = options.get("use_identity_as_username")
        if required is not None and required.value:
            if "cafile" not in options:
                raise required.line.error("needs cafile, the CA that signs client certificates")
            self.set("tls_require_client_cert", True, required)
        if identity is not None and identity.value:
            if required is None or not required.value:
                if "cafile" not in options:
                    raise identity.line.error("needs cafile and require_certificate true")
                self.set("tls_require_client_cert", True, identity)
                self.remark(
                    identity,
                    "raftmq takes usernames from certificates only when every TLS client "
                    "must have one: converted with tls_require_client_cert = true",
                )
            self.set("tls_cert_as_username", "cn", identity)
        for other in tls[1:]:
            for name in ("certfile", "keyfile", "cafile", "require_certificate"):
                mine, theirs = other.options.get(name), options.get(name)
                if (mine and mine.value) != (theirs and theirs.value):
                    self.remark(
                        mine or Value(None, other.origin[0]),
                        f"raftmq has one TLS setup for all listeners: {other.name} gets "
                        f"the {name} of {first.name} ({first.origin[0].where}); "
                        "run a second node for a second setup",
                    )
            mine = other.options.get("use_identity_as_username")
            if mine is not None and (mine.value != (identity is not None and identity.value)):
                self.remark(mine, f"raftmq has one tls_cert_as_username: {first.name}'s")

    def _connections(self) -> None:
        given = [listener.options.get("max_connections") for listener in self.listeners]
        limited = [value for value in given if value is not None and value.number >= 0]
        if not limited:
            return
        if len(self.listeners) == 1:
            self.set("max_connections", limited[0].value, limited[0])
        elif len(limited) == len(self.listeners):
            total = sum(v.number for v in limited)
            self.set("max_connections", total, *limited, note="the sum of the listeners' limits")
            self.remark(
                limited[0],
                f"raftmq's max_connections counts the whole node: converted to {total}, "
                "the sum of every listener's",
            )
        else:
            for value in limited:
                self.remark(
                    value,
                    "not converted: raftmq's max_connections counts the whole node, and "
                    "another listener has no limit; set max_connections for the node",
                )

    def _topic_aliases(self) -> None:
        given = [v for listener in self.listeners if (v := listener.options.get("max_topic_alias"))]
        if not given:
            return
        effective = {
            value.number
            if (value := listener.options.get("max_topic_alias"))
            else MOSQUITTO_TOPIC_ALIASES
            for listener in self.listeners
        }
        if len(effective) == 1:
            self.set("topic_alias_maximum", given[0].value, *given)
            return
        self.set("topic_alias_maximum", min(effective), *given, note="the lowest of the listeners'")
        for value in given:
            self.remark(
                value,
                "raftmq's topic_alias_maximum is node-wide: converted to the lowest of "
                f"the listeners', {min(effective)}",
            )

    def _security(self) -> None:
        walked = self.walked
        anonymous = walked.security.get("allow_anonymous")
        per_listener = (
            walked.per_listener is not None
            and bool(walked.per_listener.value)
            and not walked.local_only
        )
        if walked.local_only:
            if anonymous is not None and not anonymous.value:
                self.remark(
                    anonymous,
                    "ignored, as by Mosquitto: with no listener it lets anonymous clients "
                    "in on localhost; add a listener to refuse them",
                )
            self.set("allow_anonymous", True, note="Mosquitto's local-only mode")
        elif not per_listener:
            self.set(
                "allow_anonymous",
                bool(anonymous.value) if anonymous else False,
                anonymous,
                note="" if anonymous else "Mosquitto 2's default with a listener",
            )
        for name, key in (("password_file", "password_file"), ("acl_file", "acl_file")):
            value = walked.security.get(name)
            if value is not None and not per_listener:
                self.set(key, value.value, value)
        if per_listener:
            self._per_listener_security()

    def _per_listener_security(self) -> None:
        """Node-wide security from per-listener values: exact when they agree, stricter if not."""
        for listener in [self.walked.default, *self.walked.listeners]:
            if listener not in self.listeners:
                why = "raftmq listens on no Unix socket"
                if listener is self.walked.default:
                    why = "before the first listener line it applies to no listener"
                for value in listener.security.values():
                    self.remark(value, f"ignored: {why}; put it after a listener line")
        anonymous = [listener.security.get("allow_anonymous") for listener in self.listeners]
        allowed = [bool(v and v.value) for v in anonymous]
        given = [v for v in anonymous if v is not None]
        self.set("allow_anonymous", all(allowed) and bool(allowed), *given)
        if any(allowed) and not all(allowed):
            for value in given:
                if value.value:
                    self.remark(
                        value,
                        "raftmq's allow_anonymous is node-wide and another listener refuses "
                        "anonymous clients: converted to false, so this listener refuses them too",
                    )
        for name in ("password_file", "acl_file"):
            values = [listener.security.get(name) for listener in self.listeners]
            files = [v for v in values if v is not None]
            if not files:
                continue
            self.set(name, files[0].value, files[0])
            if all(v is not None and v.value == files[0].value for v in values):
                continue
            for value in files[1:] if len({v.value for v in files}) > 1 else files:
                self.remark(
                    value,
                    f"raftmq has one {name} for all listeners: converted to "
                    f"{files[0].value!r}, which now applies to every listener",
                )

    def _limits(self) -> None:
        options = self.walked.options
        if keepalive := options.get("max_keepalive"):
            self.set("max_keepalive", keepalive.value, keepalive)
        packet = options.get("max_packet_size")
        if packet is not None:
            size = packet.number or MAX_PACKET_SIZE
            self.set("max_packet_size", size, packet, note="" if packet.value else "0: no limit")
        payload = options.get("message_size_limit")
        if payload is not None and payload.number:
            limit = payload.number
            if packet is None:
                size = min(limit + MESSAGE_SIZE_HEADROOM, MAX_PACKET_SIZE)
                self.set("max_packet_size", size, payload, note="payload limit plus headroom")
                action = f"converted to max_packet_size = {size}"
            else:
                action = "max_packet_size, given too, is the limit"
            self.remark(
                payload,
                "raftmq limits whole packets, not payloads: "
                f"{action}; a client sending a larger packet is disconnected "
                "instead of its message being dropped",
            )
        if inflight := options.get("max_inflight_messages"):
            count = inflight.number or MAX_INFLIGHT
            if count > MAX_INFLIGHT:
                raise inflight.line.error(f"must be at most {MAX_INFLIGHT}, got {count}")
            self.set("max_inflight", count, inflight, note="" if inflight.value else "0: no limit")
        if queued := options.get("max_queued_messages"):
            if queued.number > 0:
                self.set("max_queued_messages", queued.value, queued)
            else:
                self.remark(
                    queued,
                    "raftmq always bounds a session's queue: not converted (raftmq's "
                    "default, 1000); set max_queued_messages to the most you expect",
                )
        if queued_bytes := options.get("max_queued_bytes"):
            self.set("max_queued_bytes", max(0, queued_bytes.number), queued_bytes)
        if qos0 := options.get("queue_qos0_messages"):
            self.set("queue_qos0", qos0.value, qos0)
        if interval := options.get("sys_interval"):
            self.set("sys_interval", max(0, interval.number), interval)

    def _storage(self) -> None:
        options = self.walked.options
        if persistence := options.get("persistence"):
            durability = "disk" if persistence.value else "memory"
            self.set("durability", durability, persistence)
        if location := options.get("persistence_location"):
            self.set("data_dir", location.value, location)

    def _logging(self) -> None:
        for line in self.walked.log_dest:
            kind = line.value.split()[0]
            if kind == "stderr":
                continue
            self.remarks.append(Remark(line, _LOG_DEST_ANSWERS.get(kind, _LOG_DEST_UNKNOWN)))
        levels = []
        for line in self.walked.log_type:
            if line.value in LOG_LEVELS:
                levels.append(LOG_LEVELS[line.value])
            elif line.value in UNLOGGED_TYPES:
                self.remarks.append(
                    Remark(line, "not supported: raftmq has no separate log of this kind")
                )
            else:
                raise line.error(f"unknown log type {line.value!r}")
        if levels:
            level = min(levels, key=LOG_ORDER.index)
            sources = [Value(line.value, line) for line in self.walked.log_type]
            self.set("log_level", level, *sources, note="the most verbose log_type given")


_LOG_DEST_UNKNOWN = "unknown log destination: raftmq writes its log to stderr"
_LOG_DEST_ANSWERS = {
    "stdout": "not supported: raftmq logs to stderr; redirect it (2>&1) if you need stdout",
    "file": "not supported: raftmq logs to stderr; let journald collect it, or run "
    "`raftmq node ... 2>>FILE`",
    "syslog": "not supported: raftmq logs to stderr; journald (systemd) passes it to syslog",
    "dlt": "not supported: raftmq logs to stderr only",
    "topic": "not supported: raftmq does not publish its log on $SYS/broker/log",
    "none": 'not supported: raftmq always logs to stderr; log_level = "critical" '
    "keeps it almost silent",
}


def _is_tls(listener: Listener) -> bool:
    """As Mosquitto decides: TLS needs both the certificate and its key."""
    return "certfile" in listener.options and "keyfile" in listener.options
