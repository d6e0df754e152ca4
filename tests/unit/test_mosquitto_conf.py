"""The Mosquitto config converter, without a file system: directive lines in, keys and warnings out.

Each case is a Mosquitto config, the raftmq keys it must give (read back from
the TOML with tomllib, so the text itself is what is checked) and the start
of each warning it must print, as ``LINE: DIRECTIVE: text``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from raftmq.cluster.tools.mosquitto_conf import directives
from raftmq.cluster.tools.mosquitto_conf.convert import convert
from raftmq.cluster.tools.mosquitto_conf.reader import MosquittoConfigError
from raftmq.cluster.tools.mosquitto_conf.walk import (
    GLOBAL_ALIASES,
    GLOBAL_OPTIONS,
    LISTENER_OPTIONS,
    SECURITY_OPTIONS,
)
from raftmq.node.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "mosquitto.md"
MAIN = "m.conf"


class MemorySource:
    """Config files held in a dict; a directory is every path under it."""

    def __init__(self, files: dict[str, bytes | str]) -> None:
        self.files = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}

    def read_bytes(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory")
        return self.files[path]

    def conf_files(self, directory: str) -> list[str]:
        found = [p for p in self.files if p.startswith(directory + "/") and p.endswith(".conf")]
        if not found:
            raise FileNotFoundError(2, "No such file or directory")
        return list(reversed(found))  # the converter must sort them itself


INCLUDED = {"/d/t.conf": "certfile b\nkeyfile k\n"}
"""What ``include_dir /d`` reads in the mapping cases."""


def run(text: str, **extra: str | bytes) -> tuple[dict[str, object], list[str]]:
    conversion = convert(MAIN, MemorySource({MAIN: text, **(extra or INCLUDED)}))
    return tomllib.loads(conversion.toml), [str(r) for r in conversion.remarks]


LOCAL = {"listen": ["tcp://127.0.0.1:1883"], "allow_anonymous": True}
CASES: list[tuple[str, str, dict[str, object], list[str]]] = [
    ("empty: local-only mode", "", LOCAL, []),
    ("a listener: Mosquitto 2 refuses anonymous", "listener 1883\n",
     {"listen": ["tcp://0.0.0.0:1883"], "allow_anonymous": False}, []),
    ("listener with address", "listener 1884 127.0.0.1\nallow_anonymous true\n",
     {"listen": ["tcp://127.0.0.1:1884"], "allow_anonymous": True}, []),
    ("default listener", "port 1885\nbind_address 127.0.0.2\n",
     {"listen": ["tcp://127.0.0.2:1885"]}, []),
    ("ipv6 domain", "listener 1883\nsocket_domain ipv6\n", {"listen": ["tcp://[::]:1883"]}, []),
    ("websockets", "listener 8080 127.0.0.1\nprotocol websockets\n",
     {"listen": ["ws://127.0.0.1:8080/mqtt"]}, []),
    ("mutual TLS with identity as username",
     "listener 8883\ncafile ca.pem\ncertfile s.pem\nkeyfile s.key\nrequire_certificate true\n"
     "use_identity_as_username true\n",
     {"listen": ["mqtts://0.0.0.0:8883"], "tls_ca": "ca.pem", "tls_cert": "s.pem",
      "tls_key": "s.key", "tls_require_client_cert": True, "tls_cert_as_username": "cn"}, []),
    ("TLS websockets and plain TCP",
     "listener 1883\nlistener 9001\nprotocol websockets\ncertfile s.pem\nkeyfile s.key\n",
     {"listen": ["tcp://0.0.0.0:1883", "wss://0.0.0.0:9001/mqtt"], "tls_cert": "s.pem"}, []),
    ("identity without required certificate",
     "listener 8883\ncafile c\ncertfile s\nkeyfile k\nuse_identity_as_username true\n",
     {"tls_require_client_cert": True, "tls_cert_as_username": "cn"},
     ["5: use_identity_as_username: raftmq takes usernames"]),
    ("two TLS setups", "listener 1\ncertfile a\nkeyfile k\nlistener 2\ncertfile b\nkeyfile k\n",
     {"tls_cert": "a"}, ["5: certfile: raftmq has one TLS setup for all listeners"]),
    ("TLS on the default listener made by options",
     "listener 1\ncertfile a\nkeyfile k\ninclude_dir /d\n",
     {"listen": ["mqtts://0.0.0.0:1", "mqtts://0.0.0.0:1883"], "tls_cert": "a"},
     ["/d/t.conf:1: certfile: raftmq has one TLS setup"]),
    ("cafile without certificate", "listener 1883\ncafile c\n", {"listen": ["tcp://0.0.0.0:1883"]},
     ["2: cafile: ignored, as by Mosquitto: this listener does not have both"]),
    ("auth files", "listener 1\npassword_file /p\nacl_file /a\nallow_anonymous false\n",
     {"password_file": "/p", "acl_file": "/a", "allow_anonymous": False}, []),
    ("limits",
     "max_keepalive 60\nmax_packet_size 5000\nmax_inflight_messages 5\nmax_queued_messages 7\n"
     "max_queued_bytes 900\nsys_interval 0\nqueue_qos0_messages true\n",
     {**LOCAL, "max_keepalive": 60, "max_packet_size": 5000, "max_inflight": 5,
      "max_queued_messages": 7, "max_queued_bytes": 900, "sys_interval": 0.0,
      "queue_qos0": True}, []),
    ("unbounded in Mosquitto",
     "max_packet_size 0\nmax_inflight_messages 0\nmax_queued_messages 0\n",
     {"max_packet_size": 268_435_460, "max_inflight": 65535},
     ["3: max_queued_messages: raftmq always bounds"]),
    ("payload limit", "message_size_limit 1000\n", {"max_packet_size": 5096},
     ["1: message_size_limit: raftmq limits whole packets, not payloads: converted"]),
    ("payload and packet limit", "max_packet_size 3000\nmessage_size_limit 1000\n",
     {"max_packet_size": 3000}, ["2: message_size_limit: raftmq limits whole packets"]),
    ("persistence", "persistence false\npersistence_location /var/lib/x/\n",
     {"durability": "memory", "data_dir": "/var/lib/x/"}, []),
    ("retained_persistence alias", "retained_persistence true\n", {"durability": "disk"}, []),
    ("log types", "log_type error\nlog_type warning\nlog_type subscribe\n",
     {"log_level": "warning"}, ["3: log_type: not supported"]),
    ("log all", "log_type all\nlog_dest stderr\n", {"log_level": "debug"}, []),
    ("log to file", "log_dest file /var/log/m.log\nlog_dest syslog\n", LOCAL,
     ["1: log_dest: not supported: raftmq logs to stderr", "2: log_dest: not supported"]),
    ("one max_connections", "listener 1\nmax_connections 50\n", {"max_connections": 50}, []),
    ("max_connections on every listener", "listener 1\nmax_connections 5\nlistener 2\n"
     "max_connections 7\n", {"max_connections": 12}, ["2: max_connections: raftmq's"]),
    ("max_connections on one of two", "listener 1\nmax_connections 5\nlistener 2\n",
     {"listen": ["tcp://0.0.0.0:1", "tcp://0.0.0.0:2"]}, ["2: max_connections: not converted"]),
    ("topic aliases", "listener 1\nmax_topic_alias 3\n", {"topic_alias_maximum": 3}, []),
    ("per listener, agreeing", "per_listener_settings true\nlistener 1\npassword_file /p\n"
     "listener 2\npassword_file /p\n", {"password_file": "/p", "allow_anonymous": False}, []),
    ("per listener, differing", "per_listener_settings true\nlistener 1\nallow_anonymous true\n"
     "listener 2\npassword_file /p\nacl_file /a\n",
     {"allow_anonymous": False, "password_file": "/p", "acl_file": "/a"},
     ["3: allow_anonymous: raftmq's allow_anonymous is node-wide",
      "5: password_file: raftmq has one password_file", "6: acl_file: raftmq has one acl_file"]),
    ("per listener, before any listener", "per_listener_settings true\nacl_file /a\nlistener 1\n",
     {"allow_anonymous": False}, ["2: acl_file: ignored: before the first listener line"]),
    ("per listener password makes the default listener",
     "per_listener_settings true\npassword_file /p\nlistener 2\n",
     {"listen": ["tcp://0.0.0.0:2", "tcp://0.0.0.0:1883"], "password_file": "/p"},
     ["2: password_file: raftmq has one password_file"]),
    ("not needed", "pid_file /run/m.pid\nuser mosquitto\nautosave_interval 60\n", LOCAL,
     ["1: pid_file: not needed", "2: user: not needed", "3: autosave_interval: not needed"]),
    ("same as raftmq", "set_tcp_nodelay true\nallow_zero_length_clientid 1\nmax_qos 2\n",
     LOCAL, []),
    ("unsupported", "listener 1\nmax_qos 1\npsk_hint x\nplugin_opt_db y\ncapath /c\n", {},
     ["2: max_qos: not supported", "3: psk_hint: not supported", "4: plugin_opt_db: not supported",
      "5: capath: not supported"]),
    ("a bridge is one warning", "connection up\naddress h:1883\ntopic # both 0\nlistener 1\n",
     {"listen": ["tcp://0.0.0.0:1"]},
     ["1: connection: bridge 'up' and its section: not supported"]),
    ("unknown", "no_such_thing 1\n", LOCAL, ["1: no_such_thing: unknown directive"]),
    ("unix socket listener", "listener 0 /run/m.sock\nlistener 1\n",
     {"listen": ["tcp://0.0.0.0:1"]},
     ["1: listener: not supported: raftmq listens on TCP only"]),
    ("local only ignores per-listener security", "per_listener_settings true\nacl_file /a\n",
     LOCAL, ["2: acl_file: ignored, as by Mosquitto"]),
    ("local only ignores listener options", "cafile c\nallow_anonymous false\n", LOCAL,
     ["1: cafile: ignored, as by Mosquitto", "2: allow_anonymous: ignored, as by Mosquitto"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "keys", "warnings"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_mapping(text: str, keys: dict[str, object], warnings: list[str]) -> None:
    table, remarks = run(text)
    assert {k: table.get(k) for k in keys} == keys
    assert len(remarks) == len(warnings), remarks
    for remark, expected in zip(remarks, warnings, strict=True):
        where = "" if expected.startswith("/") else f"{MAIN}:"
        assert remark.startswith(where + expected), remark
    load_config(overrides=table)  # what the CLI prints is a config raftmq accepts


ERRORS = [
    ("listener abc\n", "m.conf:1: listener: expected a port number, got 'abc'"),
    ("listener 70000\n", "m.conf:1: listener: port 70000 is not from 1 to 65535"),
    ("\nallow_anonymous maybe\n", "m.conf:2: allow_anonymous: expected true or false, got 'maybe'"),
    ("max_keepalive soon\n", "m.conf:1: max_keepalive: expected an integer, got 'soon'"),
    ("protocol mqttsn\n", "m.conf:1: protocol: expected mqtt or websockets, got 'mqttsn'"),
    ("address h:1\n", "m.conf:1: address: is a bridge option, but no `connection NAME`"),
    ("password_file /p\nper_listener_settings true\n", "m.conf:2: per_listener_settings: must"),
    ("listener 1\ncertfile a\nkeyfile b\nrequire_certificate true\n",
     "m.conf:4: require_certificate: needs cafile"),
    ("max_inflight_messages 70000\n", "m.conf:1: max_inflight_messages: must be at most 65535"),
    ("include_dir /nowhere\n", "m.conf:1: include_dir: cannot read directory '/nowhere'"),
    ("listener 1\nlistener 1\n", "the config converted from m.conf: key 'listen'"),
    (b"pid_file x\n\xff\n", "m.conf:2: not UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(MosquittoConfigError) as caught:
        convert(MAIN, MemorySource({MAIN: text}))
    assert str(caught.value).startswith(message)


def test_unreadable_file_is_named() -> None:
    with pytest.raises(MosquittoConfigError, match=r"^gone\.conf: cannot read file: \[Errno 2\]"):
        convert("gone.conf", MemorySource({}))


def test_include_dir_reads_conf_files_in_sorted_order_and_names_them() -> None:
    table, remarks = run(
        "include_dir /etc/m/conf.d\nmax_keepalive 10\n",
        **{
            "/etc/m/conf.d/b.conf": "max_keepalive 30\nuser me\n",
            "/etc/m/conf.d/a.conf": "max_keepalive 20\ninclude_dir /x\n",
            "/etc/m/conf.d/c.txt": "not a directive\n",
        },
    )
    assert table["max_keepalive"] == 10  # the main file's later line wins, as in Mosquitto
    assert remarks[0].startswith("/etc/m/conf.d/a.conf:2: include_dir: ignored")
    assert remarks[1].startswith("/etc/m/conf.d/b.conf:2: user: not needed")
    assert len(remarks) == 2


def test_each_included_file_starts_at_the_default_listener_like_mosquitto() -> None:
    table, remarks = run(
        "listener 1\ninclude_dir /d\nmax_connections 9\n", **{"/d/a.conf": "max_topic_alias 4\n"}
    )
    # a.conf's option made the default listener; max_connections is listener 1's again.
    assert table["listen"] == ["tcp://0.0.0.0:1", "tcp://0.0.0.0:1883"]
    assert [r.split(": ")[:2] for r in remarks] == [
        ["/d/a.conf:1", "max_topic_alias"],
        ["m.conf:3", "max_connections"],
    ]


def test_a_bridge_section_ends_with_its_file() -> None:
    files = {"/d/a.conf": "connection b\naddress h\n", "/d/b.conf": "address h\n"}
    with pytest.raises(MosquittoConfigError, match=r"^/d/b\.conf:1: address: is a bridge option"):
        run("include_dir /d\n", **files)


def test_toml_names_the_mosquitto_line_of_each_key() -> None:
    conversion = convert(MAIN, MemorySource({MAIN: "listener 1883\nmax_keepalive 60\n"}))
    assert "# m.conf:2: max_keepalive 60\nmax_keepalive = 60\n" in conversion.toml
    assert "# m.conf:1: listener 1883\n" in conversion.toml


def handled_directives() -> set[str]:
    mapped = {*LISTENER_OPTIONS, *SECURITY_OPTIONS, *GLOBAL_OPTIONS, *GLOBAL_ALIASES}
    mapped |= {"listener", "port", "bind_address", "per_listener_settings", "include_dir"}
    mapped |= {"log_dest", "log_type"}
    return mapped | set(directives.NOT_NEEDED) | set(directives.UNSUPPORTED) | directives.BRIDGE


def test_every_directive_is_in_the_table_of_docs_mosquitto_md() -> None:
    """The first cell of each table row names its directives, in backticks."""
    first_cells = [
        line.split("|")[1] for line in DOC.read_text().splitlines() if line.startswith("| `")
    ]
    documented = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert handled_directives() - documented == set()
    assert documented - handled_directives() == set()
