"""gmqtt, an asyncio MQTT 5 client, against the broker.

A second v5 implementation catches broker behaviour that paho happens to
tolerate; gmqtt also resolves topic aliases the broker assigns, which paho
2.x does not, so the outgoing-alias path is checked with a real client here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50

if TYPE_CHECKING:
    from conftest import RunningBroker

TIMEOUT = 5.0


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    properties: dict[str, Any]


@dataclass
class GClient:
    """A gmqtt client whose callbacks feed queues, so waits can be bounded."""

    client: gmqtt.Client
    messages: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    subacks: asyncio.Queue[tuple[int, ...]] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(
        self, _client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: dict
    ) -> None:
        self.messages.put_nowait(Received(topic, payload, qos, properties))

    def _on_subscribe(
        self, _client: gmqtt.Client, _mid: int, granted: tuple[int, ...], _properties: dict
    ) -> None:
        self.subacks.put_nowait(granted)

    async def subscribe(self, topic: str, qos: int) -> tuple[int, ...]:
        self.client.subscribe(topic, qos=qos)
        return await asyncio.wait_for(self.subacks.get(), TIMEOUT)

    async def next_message(self) -> Received:
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)


@pytest.fixture
async def gclients() -> AsyncIterator[list[GClient]]:
    """Every client a test made; all are disconnected afterwards, even if one fails to."""
    started: list[GClient] = []
    yield started
    results = await asyncio.gather(
        *(asyncio.wait_for(g.client.disconnect(), TIMEOUT) for g in started),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


async def connect(
    started: list[GClient], broker: RunningBroker, client_id: str, **properties: Any
) -> GClient:
    g = GClient(gmqtt.Client(client_id, **properties))
    started.append(g)
    await asyncio.wait_for(g.client.connect(broker.host, broker.port, version=MQTTv50), TIMEOUT)
    return g


async def test_qos1_round_trip_with_user_property(
    broker: RunningBroker, gclients: list[GClient]
) -> None:
    """User properties are application data: order and duplicates must survive the broker."""
    uid = uuid.uuid4().hex[:10]
    topic = f"{uid}/gmqtt"
    sub = await connect(gclients, broker, f"{uid}-sub")
    assert await sub.subscribe(topic, 1) == (1,)
    pub = await connect(gclients, broker, f"{uid}-pub")
    user_property = [("origin", "gmqtt"), ("n", "1"), ("n", "1")]
    pub.client.publish(topic, b"hello from asyncio", qos=1, user_property=user_property)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello from asyncio", 1)
    assert msg.properties["user_property"] == user_property


async def test_topic_aliases_resolved_by_client(
    broker: RunningBroker, gclients: list[GClient]
) -> None:
    """A client that accepts aliases must still see the full topic on every message."""
    uid = uuid.uuid4().hex[:10]
    topic = f"{uid}/a/long/topic/name/worth/aliasing"
    sub = await connect(gclients, broker, f"{uid}-sub", topic_alias_maximum=5)
    assert await sub.subscribe(topic, 1) == (1,)
    pub = await connect(gclients, broker, f"{uid}-pub")
    for n in range(3):
        pub.client.publish(topic, b"%d" % n, qos=1)
    received = [await sub.next_message() for _ in range(3)]
    assert [(m.topic, m.payload) for m in received] == [(topic, b"0"), (topic, b"1"), (topic, b"2")]
