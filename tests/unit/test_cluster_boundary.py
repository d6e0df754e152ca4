"""The node reaches the cluster only through ClusterHooks.

A recording implementation stands in for the cluster, and an in-process
broker is driven by a real socket client: claims, route changes, retained
writes, wills and forwarding must all show up as calls on the hooks.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from wire_client import Client

from raftmq.node.broker import Broker
from raftmq.node.config import default_config, parse_listen
from raftmq.node.hooks import Claim, ClusterUnavailable, LocalCluster
from raftmq.node.message import Message
from raftmq.node.packets import (
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsubscribe,
    Will,
)

NODE_DIR = Path(__file__).resolve().parents[2] / "node"


class RecordingCluster(LocalCluster):
    """LocalCluster that logs every call, can refuse claims, and can hold forwards."""

    def __init__(self) -> None:
        super().__init__("n1")
        self.calls: list[tuple[object, ...]] = []
        self.unavailable = False
        self.forward_gate: asyncio.Future[None] | None = None
        self.topic_gates: dict[str, asyncio.Future[None]] = {}
        """Forwards of these topics wait for their own gate instead of forward_gate."""

    async def claim_client(
        self,
        client_id: str,
        *,
        clean_start: bool = True,
        expiry_interval: int = 0,
        will: Will | None = None,
    ) -> Claim:
        self.calls.append(("claim", client_id, clean_start, expiry_interval))
        if self.unavailable:
            raise ClusterUnavailable("no quorum")
        return await super().claim_client(
            client_id, clean_start=clean_start, expiry_interval=expiry_interval, will=will
        )

    async def release_client(self, client_id: str, epoch: int) -> None:
        self.calls.append(("release", client_id, epoch))
        await super().release_client(client_id, epoch)

    async def add_route(self, share_group: str | None, topic_filter: str) -> None:
        self.calls.append(("add_route", topic_filter, share_group))
        await super().add_route(share_group, topic_filter)

    async def remove_route(self, share_group: str | None, topic_filter: str) -> None:
        self.calls.append(("remove_route", topic_filter, share_group))
        await super().remove_route(share_group, topic_filter)

    async def set_retained(self, topic: str, message: Message | None) -> None:
        self.calls.append(("set_retained", topic, None if message is None else message.payload))
        await super().set_retained(topic, message)

    async def register_will(self, client_id: str, will: Will | None) -> None:
        self.calls.append(("register_will", client_id, None if will is None else will.topic))
        await super().register_will(client_id, will)

    def forward(self, message: Message) -> Awaitable[None] | None:
        self.calls.append(("forward", message.topic))
        return self.topic_gates.get(message.topic, self.forward_gate)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Broker, RecordingCluster, int]]:
    config = default_config()
    config.listen = [parse_listen("tcp://127.0.0.1:0")]
    config.data_dir = str(tmp_path)
    config.sys_interval = 0
    cluster = RecordingCluster()
    async with Broker(config, cluster) as broker:
        port = int(broker.addresses[0].rsplit(":", 1)[1])
        yield broker, cluster, port


async def test_connect_claims_with_its_will(node: tuple[Broker, RecordingCluster, int]):
    _, cluster, port = node
    client, connack = await Client.connect(port, "c1", will=Will("w/c1", b"gone"))
    assert connack.reason_code == 0
    assert ("claim", "c1", True, 0) in cluster.calls, "one commit: claim, session and will"
    assert cluster.wills["c1"].topic == "w/c1"
    await client.close()


async def test_claim_refused_gives_server_unavailable(node: tuple[Broker, RecordingCluster, int]):
    _, cluster, port = node
    cluster.unavailable = True
    client, connack = await Client.connect(port, "c2")
    assert connack.reason_code == 0x88
    await client.close()


async def test_routes_follow_first_and_last_local_subscriber(
    node: tuple[Broker, RecordingCluster, int],
):
    _, cluster, port = node
    a, _ = await Client.connect(port, "a")
    b, _ = await Client.connect(port, "b")
    for client in (a, b):
        client.send(Subscribe(1, [("t/+", SubscriptionOptions(qos=1))]))
        assert isinstance(await client.receive(), Suback)
    assert cluster.calls.count(("add_route", "t/+", None)) == 1
    a.send(Unsubscribe(2, ["t/+"]))
    await a.receive()
    assert ("remove_route", "t/+", None) not in cluster.calls
    b.send(Unsubscribe(2, ["t/+"]))
    await b.receive()
    await asyncio.sleep(0.05)  # route removal is background bookkeeping
    assert ("remove_route", "t/+", None) in cluster.calls
    await a.close()
    await b.close()


async def test_retained_write_goes_through_hooks(node: tuple[Broker, RecordingCluster, int]):
    broker, cluster, port = node
    client, _ = await Client.connect(port, "r")
    client.send(Publish("keep/me", b"v", qos=1, retain=True, packet_id=7))
    ack = await client.receive()
    assert isinstance(ack, Puback) and ack.packet_id == 7
    assert ("set_retained", "keep/me", b"v") in cluster.calls
    assert broker.retained.get("keep/me") is not None
    await client.close()


async def test_qos1_ack_waits_for_forwarding(node: tuple[Broker, RecordingCluster, int]):
    _, cluster, port = node
    cluster.forward_gate = asyncio.get_running_loop().create_future()
    client, _ = await Client.connect(port, "p")
    client.send(Publish("remote/topic", b"x", qos=1, packet_id=3))
    with pytest.raises(asyncio.TimeoutError):
        await client.receive(timeout=0.3)
    assert ("forward", "remote/topic") in cluster.calls
    cluster.forward_gate.set_result(None)
    ack = await client.receive()
    assert isinstance(ack, Puback) and ack.packet_id == 3 and ack.reason_code == 0
    client.send(Disconnect())
    await client.close()


async def test_qos1_acks_keep_publish_order_without_blocking_the_connection(
    node: tuple[Broker, RecordingCluster, int],
):
    """A QoS 1 publish waiting for other nodes does not stop the next ones being read and
    routed, but PUBACKs still go in PUBLISH order (MQTT 4.6)."""
    _, cluster, port = node
    loop = asyncio.get_running_loop()
    slow, fast = loop.create_future(), loop.create_future()
    cluster.topic_gates = {"remote/slow": slow, "remote/fast": fast}
    client, _ = await Client.connect(port, "pipelined")
    client.send(Publish("remote/slow", b"1", qos=1, packet_id=1))
    client.send(Publish("here/only", b"2", qos=1, packet_id=2))
    client.send(Publish("remote/fast", b"3", qos=1, packet_id=3))
    client.send(Pingreq())
    assert isinstance(await client.receive(), Pingresp), "the connection kept reading"
    assert [c for c in cluster.calls if c[0] == "forward"] == [
        ("forward", "remote/slow"),
        ("forward", "here/only"),
        ("forward", "remote/fast"),
    ], "all three routed at once, in order"
    fast.set_result(None)
    with pytest.raises(asyncio.TimeoutError):
        await client.receive(timeout=0.3)  # 3 is done, but 1 is not: nothing may overtake it
    slow.set_result(None)
    acks = [await client.receive() for _ in range(3)]
    assert [(type(a), a.packet_id) for a in acks] == [(Puback, 1), (Puback, 2), (Puback, 3)]
    client.send(Disconnect())
    await client.close()


async def test_qos0_publisher_waits_for_room_at_the_peer(
    node: tuple[Broker, RecordingCluster, int],
):
    """A QoS 0 forward that returns an awaitable (a peer at its queue limit) stops the
    broker reading from the publisher until it completes: the PINGREQ behind it waits."""
    _, cluster, port = node
    cluster.forward_gate = asyncio.get_running_loop().create_future()
    client, _ = await Client.connect(port, "p0")
    client.send(Publish("remote/topic", b"x", qos=0))
    client.send(Pingreq())
    with pytest.raises(asyncio.TimeoutError):
        await client.receive(timeout=0.3)
    cluster.forward_gate.set_result(None)
    assert isinstance(await client.receive(), Pingresp)
    await client.close()


async def test_session_end_releases_the_claim(node: tuple[Broker, RecordingCluster, int]):
    """A non-persistent session releases its claim when it ends, a persistent one when it
    expires; the release names the epoch of the claim so that a newer one survives it."""
    _, cluster, port = node
    brief, connack = await Client.connect(port, "brief")
    assert connack.reason_code == 0
    brief.send(Disconnect())
    await brief.close()
    lasting, _ = await Client.connect(
        port, "lasting", clean_start=False, properties={"session_expiry_interval": 1}
    )
    lasting.send(Disconnect())
    await lasting.close()
    await asyncio.sleep(0.2)
    released = [call for call in cluster.calls if call[0] == "release"]
    assert released == [("release", "brief", 1)]
    await asyncio.sleep(1.3)
    released = [call for call in cluster.calls if call[0] == "release"]
    assert released == [("release", "brief", 1), ("release", "lasting", 1)]


async def test_forwarded_publish_serves_only_the_named_share_groups(
    node: tuple[Broker, RecordingCluster, int],
):
    """The sending node picked this node for g1 only: g2 (served elsewhere) must not get
    a second copy here, while plain subscribers always do."""
    broker, _, port = node
    plain, _ = await Client.connect(port, "plain")
    in_g1, _ = await Client.connect(port, "in-g1")
    in_g2, _ = await Client.connect(port, "in-g2")
    for client, topic_filter in (
        (plain, "s/t"),
        (in_g1, "$share/g1/s/t"),
        (in_g2, "$share/g2/s/t"),
    ):
        client.send(Subscribe(1, [(topic_filter, SubscriptionOptions(qos=0))]))
        assert isinstance(await client.receive(), Suback)
    broker.deliver_forwarded(Message.create("s/t", b"fwd", 0, False), (("g1", "s/t"),))
    for client in (plain, in_g1):
        got = await client.receive()
        assert isinstance(got, Publish) and got.payload == b"fwd"
    with pytest.raises(asyncio.TimeoutError):
        await in_g2.receive(timeout=0.3)
    broker.deliver_forwarded(Message.create("s/t", b"all", 0, False))
    for client in (plain, in_g1, in_g2):
        got = await client.receive()
        assert isinstance(got, Publish) and got.payload == b"all"
    for client in (plain, in_g1, in_g2):
        await client.close()


def test_node_never_imports_cluster() -> None:
    """The boundary is one-way: nothing under node/ may import raftmq.cluster."""
    offenders = []
    for path in NODE_DIR.glob("*.py"):
        for item in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(item, ast.Import):
                names = [alias.name for alias in item.names]
            elif isinstance(item, ast.ImportFrom):
                names = [item.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("raftmq.cluster")]
    assert offenders == []
