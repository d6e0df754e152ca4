"""The node's extension interface: each event reaches a registered observer.

An in-process broker gets a recording ``Extension``; real socket clients
connect, subscribe, publish and leave, and the recorded events must match.
``published`` may hold a QoS 1 acknowledgement back until it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from wire_client import Client

from raftmq.node.broker import Broker
from raftmq.node.config import default_config, parse_listen
from raftmq.node.extensions import Extension
from raftmq.node.message import Message
from raftmq.node.packets import (
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
)
from raftmq.node.session import Subscription


class Recorder(Extension):
    """Records every event; ``gate`` (when set) holds acknowledgements of ``gated/...``."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.gate: asyncio.Future[None] | None = None

    def connected(
        self, client_id: str, username: str | None, peer: str, protocol_level: int
    ) -> None:
        self.events.append(("connected", client_id, protocol_level, peer.startswith("127.0.0.1:")))

    def disconnected(self, client_id: str, clean: bool) -> None:
        self.events.append(("disconnected", client_id, clean))

    def published(self, message: Message) -> Awaitable[None] | None:
        self.events.append(("published", message.topic, message.publisher))
        return self.gate if message.topic.startswith("gated/") else None

    def delivered(self, client_id: str, message: Message, qos: int) -> None:
        self.events.append(("delivered", client_id, message.topic, qos))

    def dropped(self, client_id: str, message: Message, reason: str) -> None:
        self.events.append(("dropped", client_id, message.payload, reason))

    def subscribed(self, client_id: str, full_filter: str, subscription: Subscription) -> None:
        self.events.append(("subscribed", client_id, full_filter, subscription.qos))

    def unsubscribed(self, client_id: str, full_filter: str) -> None:
        self.events.append(("unsubscribed", client_id, full_filter))

    def session_ended(self, client_id: str) -> None:
        self.events.append(("session_ended", client_id))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Recorder, int]]:
    config = default_config()
    config.listen = [parse_listen("tcp://127.0.0.1:0")]
    config.data_dir = str(tmp_path)
    config.sys_interval = 0
    config.max_queued_messages = 1
    recorder = Recorder()
    broker = Broker(config)
    broker.extensions.append(recorder)
    async with broker:
        yield recorder, int(broker.addresses[0].rsplit(":", 1)[1])


async def eventually(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "event never came"
        await asyncio.sleep(0.01)


async def test_a_client_lifetime_reaches_the_extension(node: tuple[Recorder, int]) -> None:
    recorder, port = node
    sub, _ = await Client.connect(port, "sub")
    sub.send(Subscribe(1, [("t/#", SubscriptionOptions(qos=1))]))
    assert isinstance(await sub.receive(), Suback)
    pub, _ = await Client.connect(port, "pub")
    pub.send(Publish("t/a", b"x", qos=1, packet_id=5))
    assert isinstance(await pub.receive(), Puback)
    assert isinstance(await sub.receive(), Publish)
    sub.send(Unsubscribe(2, ["t/#"]))
    assert isinstance(await sub.receive(), Unsuback)
    sub.send(Disconnect(0))
    await eventually(lambda: ("session_ended", "sub") in recorder.events)
    await pub.close()
    await eventually(lambda: ("disconnected", "pub", False) in recorder.events)
    expected = [
        ("connected", "sub", 5, True),
        ("subscribed", "sub", "t/#", 1),
        ("connected", "pub", 5, True),
        ("published", "t/a", "pub"),
        ("delivered", "sub", "t/a", 1),
        ("unsubscribed", "sub", "t/#"),
        ("disconnected", "sub", True),
        ("session_ended", "sub"),
        ("disconnected", "pub", False),
        ("session_ended", "pub"),
    ]
    assert recorder.events == expected


async def test_a_queue_overflow_is_reported_with_its_reason(node: tuple[Recorder, int]) -> None:
    recorder, port = node
    away, _ = await Client.connect(port, "away", properties={"session_expiry_interval": 60})
    away.send(Subscribe(1, [("q", SubscriptionOptions(qos=1))]))
    assert isinstance(await away.receive(), Suback)
    await away.close()
    await eventually(lambda: ("disconnected", "away", False) in recorder.events)
    pub, _ = await Client.connect(port, "pub")
    for pid, payload in ((1, b"kept"), (2, b"over")):
        pub.send(Publish("q", payload, qos=1, packet_id=pid))
        assert isinstance(await pub.receive(), Puback)
    assert ("dropped", "away", b"over", "queued_messages") in recorder.events
    assert not any(e[0] == "dropped" and e[2] == b"kept" for e in recorder.events)
    await pub.close()


async def test_published_can_hold_the_acknowledgement(node: tuple[Recorder, int]) -> None:
    recorder, port = node
    recorder.gate = asyncio.get_running_loop().create_future()
    pub, _ = await Client.connect(port, "pub")
    pub.send(Publish("gated/t", b"1", qos=1, packet_id=1))
    pub.send(Publish("plain", b"2", qos=1, packet_id=2))
    with pytest.raises(TimeoutError):
        await pub.receive(timeout=0.3)
    recorder.gate.set_result(None)
    first, second = await pub.receive(), await pub.receive()
    assert isinstance(first, Puback) and isinstance(second, Puback)
    assert [first.packet_id, second.packet_id] == [1, 2], "acks keep publish order"
    await pub.close()
