"""amqtt (the maintained hbmqtt fork) against the broker.

A second, independently written asyncio client encodes packets differently from
paho (its own packet-id allocation, its own QoS 2 flow timing), so agreement
with both is better evidence than either alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.session import ApplicationMessage
from clients import ClientPool, unique

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0

AmqttFactory = Callable[[], Awaitable[MQTTClient]]


@pytest.fixture
async def amqtt_client(broker: RunningBroker) -> AsyncIterator[AmqttFactory]:
    """Connected amqtt clients, all disconnected at teardown."""
    made: list[MQTTClient] = []

    async def connect() -> MQTTClient:
        client = MQTTClient(client_id=unique("amqtt"), config={"auto_reconnect": False})
        made.append(client)
        await asyncio.wait_for(client.connect(f"mqtt://{broker.host}:{broker.port}/"), TIMEOUT)
        return client

    yield connect
    for client in made:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


async def _next(client: MQTTClient) -> ApplicationMessage:
    message = await client.deliver_message(timeout_duration=TIMEOUT)
    assert message is not None
    return message


async def test_subscribe_grants_each_requested_qos(amqtt_client: AmqttFactory) -> None:
    """SUBACK carries one return code per filter, in request order."""
    client = await amqtt_client()
    base = unique("grant")
    granted = await client.subscribe(
        [(f"{base}/0", QOS_0), (f"{base}/1", QOS_1), (f"{base}/2", QOS_2)]
    )
    assert granted == [QOS_0, QOS_1, QOS_2]


@pytest.mark.parametrize("qos", [QOS_0, QOS_1, QOS_2])
async def test_publish_round_trip(amqtt_client: AmqttFactory, qos: int) -> None:
    """Every QoS flow completes with amqtt on both ends and the payload survives intact."""
    subscriber, publisher = await amqtt_client(), await amqtt_client()
    topic = unique("amqtt-rt")
    assert await subscriber.subscribe([(topic, QOS_2)]) == [QOS_2]
    payload = bytes(range(256)) * 4
    await asyncio.wait_for(publisher.publish(topic, payload, qos=qos), TIMEOUT)
    message = await _next(subscriber)
    assert (message.topic, bytes(message.data), message.qos) == (topic, payload, qos)
    assert not message.retain


async def test_retained_message_reaches_later_subscriber(amqtt_client: AmqttFactory) -> None:
    """amqtt reads the retain flag from the PUBLISH header; it must be set on subscribe delivery."""
    publisher = await amqtt_client()
    topic = unique("amqtt-retained")
    await asyncio.wait_for(publisher.publish(topic, b"kept", qos=QOS_1, retain=True), TIMEOUT)
    subscriber = await amqtt_client()
    assert await subscriber.subscribe([(topic, QOS_1)]) == [QOS_1]
    message = await _next(subscriber)
    assert (message.topic, bytes(message.data), message.qos, message.retain) == (
        topic,
        b"kept",
        QOS_1,
        True,
    )


async def test_amqtt_and_paho_exchange_qos2_messages(
    broker: RunningBroker, amqtt_client: AmqttFactory, clients: ClientPool
) -> None:
    """The broker, not a shared client library, must bridge two independent implementations."""
    amqtt = await amqtt_client()
    to_amqtt, to_paho = unique("to-amqtt"), unique("to-paho")
    assert await amqtt.subscribe([(to_amqtt, QOS_2)]) == [QOS_2]
    paho = await asyncio.to_thread(clients.connect, broker, subscribe=to_paho, qos=2)

    await asyncio.to_thread(paho.publish, to_amqtt, b"from paho", 2)
    message = await _next(amqtt)
    assert (message.topic, bytes(message.data), message.qos) == (to_amqtt, b"from paho", QOS_2)

    await asyncio.wait_for(amqtt.publish(to_paho, b"from amqtt", qos=QOS_2), TIMEOUT)
    received = await asyncio.to_thread(paho.get)
    assert (received.topic, received.payload, received.qos) == (to_paho, b"from amqtt", 2)
