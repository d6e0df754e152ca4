"""What becomes of each Mosquitto 2.x directive that raftmq does not map to a key.

The converter (``convert``) maps the directives it understands; every other
directive is looked up here, so the answer a user gets for it is written once
and the table of docs/mosquitto.md can be checked against it
(tests/unit/test_mosquitto_conf.py). Each answer says why and what to do,
because it is printed as is after ``FILE:LINE: DIRECTIVE:``.
"""

from __future__ import annotations

SAME_AS_RAFTMQ: dict[str, str] = {
    "set_tcp_nodelay": "true",
    "allow_zero_length_clientid": "true",
    "retain_available": "true",
    "upgrade_outgoing_qos": "false",
    "log_timestamp": "true",
    "connection_messages": "true",
    "max_qos": "2",
    "tls_keyform": "pem",
}
"""Directives whose value here is what raftmq always does: accepted without a word.

Any other value of them gets the answer in NOT_NEEDED or UNSUPPORTED."""

NOT_NEEDED: dict[str, str] = {
    "pid_file": "not needed: `raftmq node` runs in the foreground and writes no pid file; "
    "the service manager that starts it (systemd) knows its pid. Remove the line",
    "user": "not needed: raftmq does not start as root to drop privileges; run it as that "
    "user (systemd User=), with CAP_NET_BIND_SERVICE for ports below 1024. Remove the line",
    "persistence_file": "not needed: raftmq names its own files inside data_dir "
    "(taken from persistence_location). Remove the line",
    "autosave_interval": "not needed: raftmq journals every change as it happens "
    "(SQLite in data_dir), so there is nothing to save periodically. Remove the line",
    "autosave_on_changes": "not needed: raftmq journals every change as it happens "
    "(SQLite in data_dir), so there is nothing to save periodically. Remove the line",
    "allow_duplicate_messages": "not needed: Mosquitto 2 ignores it too; a client whose "
    "filters overlap gets one copy of a message, at the highest QoS. Remove the line",
    "retry_interval": "not needed: Mosquitto 2 ignores it too; unacknowledged messages are "
    "sent again when the client reconnects, as MQTT requires. Remove the line",
    "websockets_log_level": "not needed: WebSocket events are logged like the rest, "
    "per log_level. Remove the line",
    "log_timestamp_format": "not needed: every raftmq log line starts with its timestamp "
    "in one fixed format. Remove the line",
    "log_timestamp": "not needed: every raftmq log line starts with its timestamp; "
    "it cannot be turned off. Remove the line",
    "log_facility": "not needed: raftmq does not write to syslog itself; journald or your "
    "log collector reads its stderr. Remove the line",
    "set_tcp_nodelay": "not needed: raftmq always sets TCP_NODELAY on client sockets; "
    "it cannot be turned off. Remove the line",
}

_PLUGINS = (
    "not supported: raftmq loads no C plugins; authenticate with password_file "
    "(mosquitto_passwd files work as they are) and authorise with acl_file, or observe "
    "events with a raftmq Extension (docs/architecture.md)"
)
_TLS_FIXED = (
    "not supported: raftmq uses Python's TLS defaults with TLS 1.2 as the minimum; remove the line"
)
UNSUPPORTED: dict[str, str] = {
    "plugin": _PLUGINS,
    "auth_plugin": _PLUGINS,
    "plugin_opt_*": _PLUGINS,
    "auth_opt_*": _PLUGINS,
    "auth_plugin_deny_special_chars": _PLUGINS,
    "psk_file": "not supported: raftmq has no TLS-PSK; give clients certificates "
    "(cafile, certfile, keyfile) or passwords (password_file)",
    "psk_hint": "not supported: raftmq has no TLS-PSK; give clients certificates "
    "(cafile, certfile, keyfile) or passwords (password_file)",
    "capath": "not supported: concatenate the PEM CA certificates of that directory into one "
    "file and name it with cafile",
    "crlfile": "not supported: raftmq does not check revocation lists; to shut out a client "
    "certificate, issue client certificates from a new CA",
    "ciphers": _TLS_FIXED,
    "ciphers_tls1.3": _TLS_FIXED,
    "tls_version": _TLS_FIXED,
    "dhparamfile": _TLS_FIXED,
    "tls_engine": "not supported: keys must be PEM files (keyfile)",
    "tls_engine_kpass_sha1": "not supported: keys must be PEM files (keyfile)",
    "tls_keyform": "not supported: keys must be PEM files (keyfile)",
    "use_subject_as_username": "not supported: raftmq takes a certificate's CN "
    "(use_identity_as_username) or first subject alternative name as the username "
    "(key tls_cert_as_username); rename the users of your ACL file to match",
    "use_username_as_clientid": "not supported: clients keep the client id they send",
    "mount_point": "not supported: prefix the topics in the clients (and the ACL file) instead",
    "max_qos": "not supported: raftmq grants QoS 2; limit the clients instead",
    "http_dir": "not supported: raftmq serves no HTTP files; serve them from a web server",
    "websockets_headers_size": "not supported: the WebSocket handshake has a fixed limit",
    "bind_interface": "not supported: give the interface's address to listener instead",
    "clientid_prefixes": "not supported: restrict clients with a password_file and acl_file",
    "auto_id_prefix": "not supported: raftmq assigns client ids of its own form",
    "allow_zero_length_clientid": "not supported: raftmq always assigns an id to v5 and "
    "clean-session v3.1.1 clients that send none, as MQTT allows",
    "check_retain_source": "not supported: retained messages stay when the publisher loses "
    "access; clear them by publishing an empty retained message",
    "max_inflight_bytes": "not supported: in-flight messages are bounded by count "
    "(max_inflight, from max_inflight_messages), not bytes",
    "memory_limit": "not supported: bound memory with max_queued_messages, max_queued_bytes, "
    "max_retained_messages, max_retained_bytes and max_connections",
    "persistent_client_expiration": "not supported: persistent MQTT v3 sessions do not "
    "expire; MQTT v5 clients choose their session expiry interval",
    "retain_available": "not supported: retained messages are always available; bound them "
    "with max_retained_messages (0 means no limit)",
    "connection_messages": "not supported: connection log lines cannot be turned off alone; "
    "a higher log_level hides them, with the other lines of their level",
    "upgrade_outgoing_qos": "not supported: messages go out at the lower of the published "
    "and the subscribed QoS, as MQTT says",
}

BRIDGE: frozenset[str] = frozenset(
    {
        "connection",
        "address",
        "addresses",
        "bridge_alpn",
        "bridge_attempt_unsubscribe",
        "bridge_bind_address",
        "bridge_cafile",
        "bridge_capath",
        "bridge_certfile",
        "bridge_identity",
        "bridge_insecure",
        "bridge_keyfile",
        "bridge_max_packet_size",
        "bridge_outgoing_retain",
        "bridge_protocol_version",
        "bridge_psk",
        "bridge_require_ocsp",
        "bridge_tls_version",
        "cleansession",
        "clientid",
        "idle_timeout",
        "keepalive_interval",
        "local_cleansession",
        "local_clientid",
        "local_password",
        "local_username",
        "notification_topic",
        "notifications",
        "notifications_local_only",
        "password",
        "remote_clientid",
        "remote_password",
        "remote_username",
        "restart_timeout",
        "round_robin",
        "start_type",
        "threshold",
        "topic",
        "try_private",
        "username",
    }
)
"""The directives of a ``connection NAME`` section."""

BRIDGE_ANSWER = (
    "not supported: raftmq has no bridges yet (a later release adds them); "
    "until then run a Mosquitto bridge beside raftmq, or bridge in the clients"
)


def answer(directive: str) -> str | None:
    """What to tell the user about ``directive``, or None if the converter maps it."""
    for table in (UNSUPPORTED, NOT_NEEDED):
        if directive in table:
            return table[directive]
    for prefix in ("plugin_opt_", "auth_opt_"):
        if directive.startswith(prefix):
            return UNSUPPORTED[prefix + "*"]
    return None
