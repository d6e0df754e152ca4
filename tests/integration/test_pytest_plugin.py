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
