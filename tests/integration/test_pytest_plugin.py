"""The `raftmq_broker` fixture works in a user's own test suite, sync and async."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio
import queue

import paho.mqtt.client as mqtt


def test_sync_round_trip(raftmq_broker):
    got = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="user-sub")
    sub.on_message = lambda c, u, m: got.put(m.payload)
    sub.connect(raftmq_broker.host, raftmq_broker.port)
    sub.loop_start()
    try:
        sub.subscribe("user/t", qos=1)[1]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="user-pub")
        pub.connect(raftmq_broker.host, raftmq_broker.port)
        pub.loop_start()
        for _ in range(50):
            pub.publish("user/t", b"hi", qos=1).wait_for_publish(5)
            try:
                assert got.get(timeout=0.1) == b"hi"
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError("no message through the fixture's broker")
        pub.loop_stop()
        pub.disconnect()
    finally:
        sub.loop_stop()
        sub.disconnect()


async def test_async_tcp_connect(raftmq_broker):
    reader, writer = await asyncio.open_connection(raftmq_broker.host, raftmq_broker.port)
    writer.write(bytes.fromhex("101000044d5154540402003c000461626364"))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\\x20\\x02\\x00\\x00"
    writer.close()
"""


def test_fixture_serves_user_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2)


CONFTEST_DICT_OVERRIDE = """
import pytest


@pytest.fixture
def raftmq_broker_config():
    return {"listen": ["mqtt://127.0.0.1:0"], "max_inflight": 7, "node_id": "from-dict"}
"""

USER_TESTS_WITH_OVERRIDES = """
import socket

import pytest


def test_dict_override_is_applied(raftmq_broker):
    config = raftmq_broker.broker.config
    assert (config.node_id, config.max_inflight) == ("from-dict", 7)
    # The fixture's defaults fill in what the dict leaves out: a fresh data dir.
    assert config.data_dir.endswith("raftmq-data") and config.data_dir != "./raftmq-data"
    assert raftmq_broker.url.startswith("tcp://127.0.0.1:")
    with socket.create_connection((raftmq_broker.host, raftmq_broker.port), timeout=5) as s:
        s.sendall(bytes.fromhex("101000044d5154540402003c000461626364"))
        assert s.recv(4) == b"\\x20\\x02\\x00\\x00"
"""

USER_TESTS_INVALID_CONFIG = """
import pytest


@pytest.fixture
def raftmq_broker_config(raftmq_broker_config):
    raftmq_broker_config.max_inflight = -5
    return raftmq_broker_config


def test_never_runs(raftmq_broker):
    raise AssertionError("a broker started with max_inflight = -5")
"""

USER_TESTS_INVALID_DICT = """
import pytest


@pytest.fixture
def raftmq_broker_config():
    return {"max_inflght": 5}


def test_never_runs(raftmq_broker):
    raise AssertionError("a broker started with an unknown key")
"""

USER_TESTS_CHANGED_CONFIG = """
import pytest


@pytest.fixture
def raftmq_broker_config(raftmq_broker_config):
    raftmq_broker_config.max_inflight = 3
    return raftmq_broker_config


def test_changed_config_is_applied(raftmq_broker):
    assert raftmq_broker.broker.config.max_inflight == 3
"""


def test_fixture_overrides_are_validated_like_a_file(pytester: pytest.Pytester) -> None:
    """The README's conftest override, a Config changed in code, and two bad ones.

    The bad ones must error at setup with the message a config file gets,
    the fixture named where a file's path would be.
    """
    suite = pytester.mkpydir("dict_suite")  # its conftest overrides only its own tests
    (suite / "conftest.py").write_text(CONFTEST_DICT_OVERRIDE)
    (suite / "test_dict.py").write_text(USER_TESTS_WITH_OVERRIDES)
    pytester.makepyfile(
        test_changed_config=USER_TESTS_CHANGED_CONFIG,
        test_bad_config=USER_TESTS_INVALID_CONFIG,
        test_bad_dict=USER_TESTS_INVALID_DICT,
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: raftmq_broker_config fixture: key 'max_inflight': "
            "must be between 1 and 65535, got -5",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: raftmq_broker_config fixture: unknown key 'max_inflght' "
            "(did you mean 'max_inflight'?)",
        ]
    )
