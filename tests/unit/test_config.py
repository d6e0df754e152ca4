"""Config loading: defaults, TOML, overrides, and error messages users can act on."""

from pathlib import Path

import pytest

from raftmq.node.config import (
    KEYS,
    Config,
    ConfigError,
    ListenAddress,
    config_table,
    default_config,
    load_config,
    parse_listen,
)
from raftmq.node.config_reference import config_reference_markdown
from raftmq.node.config_types import PeerAddress


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "raftmq.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_defaults() -> None:
    config = default_config()
    assert config.listen == [ListenAddress("tcp", "127.0.0.1", 1883, "")]
    assert config.data_dir == "./raftmq-data"
    assert config.node_id == "node1"
    assert config.allow_anonymous is None
    assert config.max_packet_size == 1_048_576
    assert config.receive_maximum == 100
    assert config.max_inflight == 20
    assert config.max_queued_messages == 1000
    assert config.queue_overflow == "drop_new"
    assert config.queue_qos0 is False
    assert config.max_keepalive == 65535
    assert config.max_topic_levels == 128
    assert config.topic_alias_maximum == 10
    assert config.max_connections == 100_000
    assert config.connect_timeout == 10.0
    assert config.sys_interval == 10.0
    assert config.log_level == "info"
    assert load_config() == config


def test_defaults_are_not_shared_between_configs() -> None:
    first = default_config()
    first.listen.append(parse_listen("tcp://0.0.0.0:1884"))
    assert len(default_config().listen) == 1


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen = ["tcp://0.0.0.0:1883", "ws://[::1]:8080"]
        data_dir = "/var/lib/raftmq"
        node_id = "eu-1.a"
        allow_anonymous = true
        max_packet_size = 65536
        receive_maximum = 10
        max_inflight = 5
        max_queued_messages = 50
        queue_overflow = "drop_oldest"
        queue_qos0 = true
        max_keepalive = 0
        max_topic_levels = 8
        topic_alias_maximum = 0
        max_connections = 10
        connect_timeout = 2
        sys_interval = 0
        log_level = "debug"
        """,
    )
    config = load_config(path)
    assert config.listen == [
        ListenAddress("tcp", "0.0.0.0", 1883, ""),
        ListenAddress("ws", "::1", 8080, "/mqtt"),
    ]
    assert config.data_dir == "/var/lib/raftmq"
    assert config.node_id == "eu-1.a"
    assert config.allow_anonymous is True
    assert config.max_packet_size == 65536
    assert config.receive_maximum == 10
    assert config.max_inflight == 5
    assert config.max_queued_messages == 50
    assert config.queue_overflow == "drop_oldest"
    assert config.queue_qos0 is True
    assert config.max_keepalive == 0
    assert config.max_topic_levels == 8
    assert config.topic_alias_maximum == 0
    assert config.max_connections == 10
    assert config.connect_timeout == 2.0
    assert isinstance(config.connect_timeout, float)
    assert config.sys_interval == 0.0
    assert config.log_level == "debug"


def test_listen_may_be_a_single_string(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'listen = "ws://localhost:9001/ws"'))
    assert config.listen == [ListenAddress("ws", "localhost", 9001, "/ws")]


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "tcp://0.0.0.0:1883"\nnode_id = "from-file"\nmax_inflight = 7\n',
    )
    config = load_config(path, {"node_id": "from-flag", "listen": ["tcp://127.0.0.1:0"]})
    assert config.node_id == "from-flag"
    assert config.listen == [ListenAddress("tcp", "127.0.0.1", 0, "")]
    assert config.max_inflight == 7


def test_overrides_without_a_file() -> None:
    assert load_config(None, {"log_level": "error"}).log_level == "error"


def test_override_errors_name_the_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"log_level": "loud"})
    assert str(info.value) == (
        "command line: key 'log_level': must be one of debug, info, warning, error, "
        "critical, got string 'loud'"
    )


def test_a_bad_file_value_is_an_error_even_when_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "loud"')
    with pytest.raises(ConfigError, match="key 'log_level'"):
        load_config(path, {"log_level": "info"})


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    message = load_error(tmp_path, "max_pakcet_size = 10")
    assert message.endswith("unknown key 'max_pakcet_size' (did you mean 'max_packet_size'?)")


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[broker]\nport = 1")
    assert "unknown key 'broker'" in message
    assert "known keys: listen, data_dir," in message


def test_wrong_type(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'max_packet_size = "abc"')
    assert message.endswith("key 'max_packet_size': expected an integer, got string 'abc'")


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    message = load_error(tmp_path, "max_inflight = true")
    assert message.endswith("key 'max_inflight': expected an integer, got boolean true")


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    message = load_error(tmp_path, "connect_timeout = false")
    assert message.endswith("key 'connect_timeout': expected a finite number, got boolean false")


def test_number_must_be_finite(tmp_path: Path) -> None:
    message = load_error(tmp_path, "sys_interval = inf")
    assert message.endswith("key 'sys_interval': expected a finite number, got float inf")


def test_float_is_not_an_int(tmp_path: Path) -> None:
    message = load_error(tmp_path, "receive_maximum = 10.5")
    assert message.endswith("key 'receive_maximum': expected an integer, got float 10.5")


def test_bool_key_takes_only_a_boolean(tmp_path: Path) -> None:
    message = load_error(tmp_path, "queue_qos0 = 1")
    assert message.endswith("key 'queue_qos0': expected a boolean, got integer 1")


def test_allow_anonymous_must_be_a_boolean(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'allow_anonymous = "yes"')
    assert message.endswith("key 'allow_anonymous': expected a boolean, got string 'yes'")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("max_packet_size = 1", "key 'max_packet_size': must be between 2 and 268435460, got 1"),
        (
            "max_packet_size = 268435461",
            "key 'max_packet_size': must be between 2 and 268435460, got 268435461",
        ),
        ("receive_maximum = 0", "key 'receive_maximum': must be between 1 and 65535, got 0"),
        (
            "receive_maximum = 65536",
            "key 'receive_maximum': must be between 1 and 65535, got 65536",
        ),
        ("max_inflight = 0", "key 'max_inflight': must be between 1 and 65535, got 0"),
        (
            "topic_alias_maximum = -1",
            "key 'topic_alias_maximum': must be between 0 and 65535, got -1",
        ),
        ("max_keepalive = 65536", "key 'max_keepalive': must be between 0 and 65535, got 65536"),
        ("max_queued_messages = 0", "key 'max_queued_messages': must be at least 1, got 0"),
        ("max_topic_levels = 0", "key 'max_topic_levels': must be at least 1, got 0"),
        ("max_connections = 0", "key 'max_connections': must be at least 1, got 0"),
        ("connect_timeout = 0", "key 'connect_timeout': must be more than 0, got 0.0"),
        ("sys_interval = -1", "key 'sys_interval': must be at least 0, got -1.0"),
    ],
)
def test_out_of_range(tmp_path: Path, line: str, problem: str) -> None:
    assert load_error(tmp_path, line).endswith(problem)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            'queue_overflow = "drop"',
            "key 'queue_overflow': must be one of drop_new, drop_oldest, got string 'drop'",
        ),
        (
            'log_level = "INFO"',
            "key 'log_level': must be one of debug, info, warning, error, critical, "
            "got string 'INFO'",
        ),
        (
            'node_id = "a/b"',
            "key 'node_id': must be 1 to 64 letters, digits, '.', '_' or '-', got string 'a/b'",
        ),
        ('data_dir = ""', "key 'data_dir': must be a non-empty path, got string ''"),
    ],
)
def test_bad_string_values(tmp_path: Path, line: str, problem: str) -> None:
    assert load_error(tmp_path, line).endswith(problem)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"localhost:1883"', "invalid listen URL 'localhost:1883': expected SCHEME://HOST:PORT"),
        ('"udp://0.0.0.0:1883"', "unsupported scheme 'udp' in 'udp://0.0.0.0:1883'"),
        ('"mqtt://0.0.0.0:1883/x"', "mqtt listen URL 'mqtt://0.0.0.0:1883/x' cannot have a path"),
        (
            '"mqtts://0.0.0.0:8883/x"',
            "mqtts listen URL 'mqtts://0.0.0.0:8883/x' cannot have a path",
        ),
        ('"tcp://0.0.0.0"', "missing port in listen URL 'tcp://0.0.0.0'"),
        ('"tcp://:1883"', "missing host in listen URL 'tcp://:1883'"),
        ('"tcp://0.0.0.0:99999"', "invalid listen URL 'tcp://0.0.0.0:99999'"),
        ('"tcp://0.0.0.0:abc"', "invalid listen URL 'tcp://0.0.0.0:abc'"),
        (
            '"tcp://0.0.0.0:1883/mqtt"',
            "tcp listen URL 'tcp://0.0.0.0:1883/mqtt' cannot have a path",
        ),
        ('"ws://0.0.0.0:80/?x=1"', "must not have user info, a query or a fragment"),
        ("[]", "must list at least one address"),
        ("[1883]", "expected a URL string or an array of URL strings, got array"),
        ('["tcp://0.0.0.0:1883", "ws://0.0.0.0:1883"]', "0.0.0.0:1883 is listed twice"),
        ('["tcp://0.0.0.0:1883", "mqtt://0.0.0.0:1883"]', "0.0.0.0:1883 is listed twice"),
    ],
)
def test_bad_listen(tmp_path: Path, value: str, problem: str) -> None:
    message = load_error(tmp_path, f"listen = {value}")
    assert "key 'listen': " in message
    assert problem in message


def test_port_zero_may_repeat() -> None:
    config = load_config(None, {"listen": ["tcp://127.0.0.1:0", "ws://127.0.0.1:0"]})
    assert [a.port for a in config.listen] == [0, 0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "raftmq.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read file: [Errno 2] No such file or directory"


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'node_id = "a"\n\nmax_inflight = = 3\n')
    assert ": invalid TOML: " in message
    assert "line 3" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "raftmq.toml"
    path.write_bytes(b'node_id = "\xff"\n')
    with pytest.raises(ConfigError, match=r"invalid TOML: not UTF-8"):
        load_config(path)


def test_parse_listen_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen("udp://0.0.0.0:1883")
    assert str(info.value) == (
        "--listen: unsupported scheme 'udp' in 'udp://0.0.0.0:1883' "
        "(supported: tcp, mqtt, ws, mqtts, wss)"
    )


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("tcp://127.0.0.1:1883", "tcp://127.0.0.1:1883"),
        ("tcp://127.0.0.1:1883/", "tcp://127.0.0.1:1883"),
        ("ws://0.0.0.0:8080", "ws://0.0.0.0:8080/mqtt"),
        ("ws://0.0.0.0:8080/", "ws://0.0.0.0:8080/"),
        ("WS://Example.org:80/ws", "ws://example.org:80/ws"),
        ("tcp://[::1]:0", "tcp://[::1]:0"),
        ("mqtts://127.0.0.1:8883/", "mqtts://127.0.0.1:8883"),
        ("mqtt://127.0.0.1:1883", "tcp://127.0.0.1:1883"),
        ("MQTT://[::1]:0/", "tcp://[::1]:0"),
        ("wss://0.0.0.0:8884", "wss://0.0.0.0:8884/mqtt"),
    ],
)
def test_listen_url_round_trip(url: str, normalized: str) -> None:
    assert parse_listen(url).url() == normalized


def test_mqtt_scheme_is_tcp(tmp_path: Path) -> None:
    """mqtt:// is normalised when read, so nothing downstream knows a second name."""
    text = 'listen = ["mqtt://127.0.0.1:1883", "mqtts://[::1]:8883"]\n'
    config = load_config(write(tmp_path, text + 'tls_cert = "c.pem"\ntls_key = "k.pem"\n'))
    assert config.listen == [
        ListenAddress("tcp", "127.0.0.1", 1883, ""),
        ListenAddress("mqtts", "::1", 8883, ""),
    ]
    assert [a.is_tls for a in config.listen] == [False, True]
    assert parse_listen("mqtt://0.0.0.0:1883") == parse_listen("tcp://0.0.0.0:1883")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("broker.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert ListenAddress("tcp", host, 1883).is_loopback is loopback


def test_anonymous_allowed_on_loopback_by_default() -> None:
    assert default_config().anonymous_allowed is True
    both = load_config(None, {"listen": ["tcp://127.0.0.1:1883", "ws://[::1]:8080"]})
    assert both.anonymous_allowed is True


def test_anonymous_refused_when_any_listener_is_reachable_from_outside() -> None:
    assert load_config(None, {"listen": "tcp://0.0.0.0:1883"}).anonymous_allowed is False
    mixed = load_config(None, {"listen": ["tcp://127.0.0.1:1883", "ws://0.0.0.0:8080"]})
    assert mixed.anonymous_allowed is False


def test_explicit_allow_anonymous_wins(tmp_path: Path) -> None:
    public = write(tmp_path, 'listen = "tcp://0.0.0.0:1883"\nallow_anonymous = true\n')
    assert load_config(public).anonymous_allowed is True
    assert load_config(None, {"allow_anonymous": False}).anonymous_allowed is False


def test_reference_covers_every_key_once() -> None:
    names = [key.name for key in KEYS]
    assert names == [name for name in Config.__dataclass_fields__]
    table = config_reference_markdown()
    for key in KEYS:
        assert table.count(f"| `{key.name}` |") == 1
        assert key.help and key.check and key.type


CLUSTER_TOML = """
node_id = "n1"
cluster_secret = "sixteen-chars-ok"
raft_listen = "127.0.0.1:7001"
grpc_listen = "127.0.0.1:7101"
peers = ["n2=127.0.0.1:7002,127.0.0.1:7102", "n3=127.0.0.1:7003,127.0.0.1:7103"]
"""


def test_cluster_keys_from_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLUSTER_TOML))
    assert config.cluster_secret == "sixteen-chars-ok"
    assert (config.raft_listen, config.grpc_listen) == ("127.0.0.1:7001", "127.0.0.1:7101")
    assert config.peers == [
        PeerAddress("n2", "127.0.0.1:7002", "127.0.0.1:7102"),
        PeerAddress("n3", "127.0.0.1:7003", "127.0.0.1:7103"),
    ]


def test_single_node_has_no_cluster_keys() -> None:
    config = default_config()
    assert config.cluster_secret is None and config.peers == []


@pytest.mark.parametrize(
    ("replace", "by", "error"),
    [
        ('cluster_secret = "sixteen-chars-ok"\n', "", "key 'raft_listen' needs 'cluster_secret'"),
        ('"sixteen-chars-ok"', '"short"', "'cluster_secret' must be at least 16 characters, got 5"),
        ('raft_listen = "127.0.0.1:7001"\n', "", "'cluster_secret' needs 'raft_listen'"),
        ('"127.0.0.1:7101"', '"127.0.0.1:0"', "key 'grpc_listen': address '127.0.0.1:0' must be"),
        ('"127.0.0.1:7101"', '"127.0.0.1:7001"', "'raft_listen' and 'grpc_listen' are both"),
        ("n2=", "n2:", "invalid peer 'n2:127.0.0.1:7002,127.0.0.1:7102': expected NODE_ID="),
        ("n3=", "n2=", "node id 'n2' is listed twice"),
        ("n3=", "n1=", "'n1=127.0.0.1:7003,127.0.0.1:7103' is this node ('n1')"),
        ("127.0.0.1:7003", "127.0.0.1:7001", "uses this node's address 127.0.0.1:7001"),
        ("127.0.0.1:7102", "nowhere", "gRPC address 'nowhere' must be HOST:PORT"),
    ],
)
def test_cluster_key_errors(tmp_path: Path, replace: str, by: str, error: str) -> None:
    assert replace in CLUSTER_TOML
    message = load_error(tmp_path, CLUSTER_TOML.replace(replace, by, 1))
    assert error in message, message
    assert "short" not in message, "the secret is never echoed"


def test_config_table_round_trips_every_key(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            'listen = ["mqtt://127.0.0.1:0", "ws://[::1]:8080/ws"]\n'
            'cluster_secret = "sixteen-chars-ok"\nraft_listen = "127.0.0.1:7001"\n'
            'grpc_listen = "127.0.0.1:7101"\npeers = ["n2=127.0.0.1:7002,127.0.0.1:7102"]\n'
            "max_publish_rate = 2.5\nallow_anonymous = false\n",
        )
    )
    table = config_table(config)
    assert table["listen"] == ["tcp://127.0.0.1:0", "ws://[::1]:8080/ws"]
    assert table["peers"] == ["n2=127.0.0.1:7002,127.0.0.1:7102"]
    assert list(table) == [k.name for k in KEYS]
    assert load_config(overrides=table) == config


def test_a_config_changed_in_code_is_checked_like_a_file(tmp_path: Path) -> None:
    """The message names the origin given, then the key, exactly as for a file."""
    file_message = load_error(tmp_path, "max_inflight = -5")
    config = default_config()
    config.max_inflight = -5
    with pytest.raises(ConfigError) as info:
        load_config(overrides=config_table(config), origin="my fixture")
    assert str(info.value) == file_message.replace(str(tmp_path / "raftmq.toml"), "my fixture")
    assert str(info.value) == "my fixture: key 'max_inflight': must be between 1 and 65535, got -5"
