"""Forwarding between nodes over real gRPC streams on loopback, in one process.

Streams are broken with a TCP proxy between the nodes (cut its connections,
hold one direction, refuse new ones), so the code under test sees what a real
network failure looks like. TLS uses certificates made here for each test.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc import aio

from raftmq.cluster.forwarding.frames import (
    Forwarded,
    Handover,
    decode_frame,
    encode_frame,
)
from raftmq.cluster.forwarding.handshake import (
    PATH,
    Hello,
    PeerRejected,
    check_hello,
    hello_metadata,
)
from raftmq.cluster.forwarding.transport import (
    Forwarder,
    ForwardingSettings,
    UnknownPeer,
)
from raftmq.cluster.rpc import unwrap, wrap
from raftmq.cluster.server import GrpcServer
from raftmq.cluster.tls import NodeTLS
from raftmq.node.hooks import ClusterUnavailable, RouteKey, SessionMessages
from raftmq.node.message import Message
from raftmq.node.session import Delivery

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

FAST = ForwardingSettings(reconnect_min=0.02, reconnect_max=0.2, unreachable_timeout=30.0)


# -- helpers ---------------------------------------------------------------------------


class Recorder:
    """A node's inbox: remember everything, in order."""

    def __init__(self) -> None:
        self.publishes: list[tuple[str, str, bytes, int]] = []
        self.groups: list[tuple[RouteKey, ...]] = []
        self.kicks: list[tuple[str, str, int]] = []
        self.handovers: list[tuple[str, Handover]] = []
        self.on_each: Callable[[Message], None] | None = None
        self.applied = 0
        """This node's ClusterState.applied, as a RaftCluster would report it."""
        self.caught_up = asyncio.Event()
        self.caught_up.set()
        self.fenced: list[int] = []

    def publish_from_peer(
        self, origin: str, message: Message, shared_groups: tuple[RouteKey, ...]
    ) -> None:
        if self.on_each is not None:
            self.on_each(message)
        self.publishes.append((origin, message.topic, message.payload, message.qos))
        self.groups.append(shared_groups)

    def kick_from_peer(self, origin: str, client_id: str, epoch: int) -> None:
        self.kicks.append((origin, client_id, epoch))

    def handover_from_peer(self, origin: str, handover: Handover) -> None:
        self.handovers.append((origin, handover))

    def applied_count(self) -> int:
        return self.applied

    async def catch_up(self, applied: int) -> None:
        self.fenced.append(applied)
        await self.caught_up.wait()

    def payloads(self) -> list[bytes]:
        return [p for _, _, p, _ in self.publishes]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        await asyncio.sleep(0.01)


def msg(payload: bytes | str, qos: int = 1, topic: str = "t") -> Message:
    data = payload.encode() if isinstance(payload, str) else payload
    return Message.create(topic, data, qos, False)


class TcpProxy:
    """Loopback TCP relay that can cut, refuse, or hold back the answering direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self.backward = asyncio.Event()
        self.backward.set()
        self.connections = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, False)),
            asyncio.create_task(self._pump(up_reader, writer, True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
            self._tasks.discard(task)
        self._pairs.discard(pair)
        for w in pair:
            w.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, back: bool
    ) -> None:
        with suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if back:
                    await self.backward.wait()
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        """Break every relayed connection now; bytes held back are lost."""
        for pair in list(self._pairs):
            for w in pair:
                w.transport.abort()

    async def stop(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Certs:
    """A CA and node certificates naming node ids (CN and DNS SAN), as `raftmq certs` makes."""

    def __init__(self, name: str = "test cluster CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def node(self, node_id: str, names: tuple[str, ...] | None = None) -> NodeTLS:
        names = names or (node_id,)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return NodeTLS(self.ca_pem, cert.public_bytes(serialization.Encoding.PEM), key_pem)


class Node:
    """A forwarder and the gRPC server that serves its stream, as a node runs them;
    everything else is the forwarder's."""

    def __init__(self, forwarder: Forwarder, server: GrpcServer) -> None:
        self.forwarder = forwarder
        self.server = server

    @property
    def port(self) -> int | None:
        return self.server.port

    async def stop(self) -> None:
        await self.server.stop()
        await self.forwarder.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.forwarder, name)


class Cluster:
    """Forwarders on loopback ports, stopped (with their proxies) when the test ends."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.recorders: dict[str, Recorder] = {}
        self.proxies: list[TcpProxy] = []

    async def node(self, node_id: str, port: int = 0, **options: Any) -> Node:
        options.setdefault("settings", FAST)
        recorder = self.recorders.setdefault(node_id, Recorder())
        forwarder = Forwarder(node_id, **options)
        forwarder.start(recorder)
        keepalive = options["settings"].keepalive
        server = GrpcServer(f"127.0.0.1:{port}", tls=options.get("tls"), keepalive=keepalive)
        server.serve(forwarder.service())
        await server.start()
        node = self.nodes[node_id] = Node(forwarder, server)
        return node

    async def proxy(self, target: Node) -> TcpProxy:
        assert target.port is not None
        proxy = TcpProxy(target.port)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    def link(self, a: Node, b: Node, via: TcpProxy | None = None) -> None:
        """Introduce two nodes to each other, as static membership does."""
        a.add_peer(
            b.node_id, via.address if via and a.node_id < b.node_id else f"127.0.0.1:{b.port}"
        )
        b.add_peer(
            a.node_id, via.address if via and b.node_id < a.node_id else f"127.0.0.1:{a.port}"
        )

    async def connected(self, a: str, b: str, timeout: float = 10.0) -> None:
        await wait_until(
            lambda: self.nodes[a].status()[b].connected and self.nodes[b].status()[a].connected,
            timeout,
        )

    async def close(self) -> None:
        for forwarder in self.nodes.values():
            await forwarder.stop()
        for proxy in self.proxies:
            await proxy.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


async def two(cluster: Cluster, **options: Any) -> tuple[Node, Node]:
    a = await cluster.node("node1", **options)
    b = await cluster.node("node2", **options)
    cluster.link(a, b)
    await cluster.connected("node1", "node2")
    return a, b


@asynccontextmanager
async def raw_call(
    port: int,
    metadata: tuple[tuple[str, str], ...],
    serializer: Callable[[bytes], bytes] = wrap,
    deserializer: Callable[[bytes], bytes] = unwrap,
) -> AsyncIterator[aio.StreamStreamCall]:
    """A hand-made peer: a bare gRPC stream to a forwarder."""
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.stream_stream(
            PATH, request_serializer=serializer, response_deserializer=deserializer
        )(metadata=metadata)
        yield call
        call.cancel()
    finally:
        await channel.close()


# -- the .proto is the wire ---------------------------------------------------------------


def _compiled_proto(tmp_path: Path):  # type: ignore[no-untyped-def]
    from grpc_tools import protoc

    proto_dir = ROOT / "proto"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{proto_dir}",
                f"--python_out={tmp_path}",
                str(proto_dir / "raftmq.proto"),
            ]
        )
        == 0
    )
    spec = importlib.util.spec_from_file_location(
        "raftmq_pb2_under_test", tmp_path / "raftmq_pb2.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("size", [1, 200, 70000])
def test_proto_frame_encoding_is_byte_for_byte_ours(tmp_path: Path, size: int) -> None:
    pb = _compiled_proto(tmp_path)
    payload = bytes(i % 251 for i in range(size))
    assert pb.Frame(capnp=payload).SerializeToString() == wrap(payload)
    parsed = pb.Frame()
    parsed.ParseFromString(wrap(payload))
    assert parsed.capnp == payload
    method = pb.DESCRIPTOR.services_by_name["Forwarding"].methods_by_name["Stream"]
    assert "/" + method.full_name.replace(".Stream", "/Stream") == PATH
    assert (method.client_streaming, method.server_streaming) == (True, True)


async def test_a_peer_built_from_the_proto_talks_to_a_forwarder(
    cluster: Cluster, tmp_path: Path
) -> None:
    pb = _compiled_proto(tmp_path)
    b = await cluster.node("node2")
    metadata = hello_metadata("dial", "node1", "node2", [77], None)
    async with raw_call(
        b.port,  # type: ignore[arg-type]
        metadata,
        serializer=lambda data: pb.Frame(capnp=data).SerializeToString(),
        deserializer=lambda raw: pb.Frame.FromString(raw).capnp,
    ) as call:
        await call.write(encode_frame(1, 0, [Forwarded(msg("via protobuf"))], time.monotonic()))
        answer = decode_frame(await asyncio.wait_for(call.read(), 10), time.monotonic())
    assert (answer.seq, answer.ack) == (0, 1)
    assert cluster.recorders["node2"].publishes == [("node1", "t", b"via protobuf", 1)]


# -- delivery ------------------------------------------------------------------------------


async def test_publishes_flow_both_ways_in_order_at_every_qos(cluster: Cluster) -> None:
    a, b = await two(cluster)
    waits = []
    for i in range(30):
        for sender, target in ((a, "node2"), (b, "node1")):
            pending = sender.send([target], msg(f"{sender.node_id}-{i}", qos=i % 3))
            assert (pending is None) == (i % 3 == 0)
            if pending is not None:
                waits.append(pending)
    await asyncio.wait_for(asyncio.gather(*waits), 10)
    await wait_until(lambda: len(cluster.recorders["node2"].publishes) == 30)
    await wait_until(lambda: len(cluster.recorders["node1"].publishes) == 30)
    assert cluster.recorders["node2"].payloads() == [f"node1-{i}".encode() for i in range(30)]
    assert cluster.recorders["node1"].payloads() == [f"node2-{i}".encode() for i in range(30)]
    assert {origin for origin, *_ in cluster.recorders["node2"].publishes} == {"node1"}
    assert [q for *_, q in cluster.recorders["node2"].publishes] == [i % 3 for i in range(30)]


async def test_sends_of_one_loop_turn_go_as_one_frame(cluster: Cluster) -> None:
    a, b = await two(cluster)
    sent_before = a.status()["node2"].frames_sent
    received_before = b.status()["node1"].frames_received
    waits = [a.send(["node2"], msg(str(i))) for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*waits), 10)  # type: ignore[arg-type]
    assert a.status()["node2"].frames_sent - sent_before == 1
    assert b.status()["node1"].frames_received - received_before == 1
    assert cluster.recorders["node2"].payloads() == [str(i).encode() for i in range(50)]


async def test_frames_are_capped_and_the_rest_follows_in_order(cluster: Cluster) -> None:
    settings = ForwardingSettings(reconnect_min=0.02, reconnect_max=0.2, max_frame_items=10)
    a, _ = await two(cluster, settings=settings)
    sent_before = a.status()["node2"].frames_sent
    waits = [a.send(["node2"], msg(str(i))) for i in range(35)]
    await asyncio.wait_for(asyncio.gather(*waits), 10)  # type: ignore[arg-type]
    assert a.status()["node2"].frames_sent - sent_before == 4
    assert cluster.recorders["node2"].payloads() == [str(i).encode() for i in range(35)]


async def test_qos1_completes_only_after_the_remote_delivery_callback(cluster: Cluster) -> None:
    a, _ = await two(cluster)
    seen: list[bool] = []
    pending: asyncio.Future[None] | None = None

    def check(message: Message) -> None:
        assert pending is not None
        seen.append(pending.done())

    cluster.recorders["node2"].on_each = check
    pending = a.send(["node2"], msg("x"))  # type: ignore[assignment]
    await asyncio.wait_for(pending, 10)  # type: ignore[arg-type]
    assert seen == [False]
    assert cluster.recorders["node2"].payloads() == [b"x"]


async def test_a_frame_is_handled_once_the_receiver_applied_what_its_sender_had(
    cluster: Cluster,
) -> None:
    """Frame.applied: a publish sent by state the receiver has not applied yet (a session
    re-homed there) waits for that state, and so does what follows it on the stream."""
    a, _ = await two(cluster)
    sender, receiver = cluster.recorders["node1"], cluster.recorders["node2"]
    sender.applied, receiver.applied = 12, 11
    receiver.caught_up.clear()
    pending = a.send(["node2"], msg("after the re-home"))
    await wait_until(lambda: receiver.fenced == [12])
    await asyncio.sleep(0.05)
    assert receiver.payloads() == [] and not pending.done()  # type: ignore[union-attr]
    receiver.applied = 12
    receiver.caught_up.set()
    await asyncio.wait_for(pending, 10)  # type: ignore[arg-type]
    assert receiver.payloads() == [b"after the re-home"]
    a.send(["node2"], msg("no wait"), None)
    await wait_until(lambda: len(receiver.payloads()) == 2)
    assert receiver.fenced == [12], "a frame the receiver is level with does not wait"


async def test_qos1_waits_for_a_peer_that_is_not_up_yet(cluster: Cluster) -> None:
    b = await cluster.node("node2")
    proxy = await cluster.proxy(b)
    proxy.refusing = True
    a = await cluster.node("node1")
    cluster.link(a, b, via=proxy)
    pending = a.send(["node2"], msg("early"))
    await asyncio.sleep(0.5)
    assert not pending.done()  # type: ignore[union-attr]
    assert cluster.recorders["node2"].publishes == []
    assert a.status()["node2"].last_error is not None
    proxy.refusing = False
    await asyncio.wait_for(pending, 10)  # type: ignore[arg-type]
    assert cluster.recorders["node2"].payloads() == [b"early"]


async def test_send_to_several_nodes_waits_for_every_one_and_is_not_forwarded_again(
    cluster: Cluster,
) -> None:
    n1 = await cluster.node("node1")
    n2 = await cluster.node("node2")
    n3 = await cluster.node("node3")
    proxy = await cluster.proxy(n3)
    cluster.link(n1, n2)
    cluster.link(n2, n3)
    cluster.link(n1, n3, via=proxy)
    await cluster.connected("node1", "node3")
    await cluster.connected("node2", "node3")
    proxy.backward.clear()  # node3 receives, but its acknowledgements do not come back
    pending = n1.send(["node2", "node3"], msg("both"))
    await wait_until(lambda: cluster.recorders["node3"].payloads() == [b"both"])
    await wait_until(lambda: cluster.recorders["node2"].payloads() == [b"both"])
    await asyncio.sleep(0.2)
    assert not pending.done()  # type: ignore[union-attr]
    proxy.backward.set()
    await asyncio.wait_for(pending, 10)  # type: ignore[arg-type]
    only_n2 = n1.send(["node2"], msg("only node2"))
    await asyncio.wait_for(only_n2, 10)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert cluster.recorders["node3"].payloads() == [b"both"]
    assert cluster.recorders["node1"].publishes == []


async def test_kick_and_handover_complete_after_the_peer_applied_them(cluster: Cluster) -> None:
    a, b = await two(cluster)
    m = msg("queued", qos=2)
    held = SessionMessages(queued=[Delivery(m, 1, False, (4,))], incoming_qos2={9})
    handover = Handover("c1", 5, held)
    pub = a.send(["node2"], msg("before"))
    kick = a.kick("node2", "c1", 5)
    hand = a.hand_over("node2", handover)
    await asyncio.wait_for(asyncio.gather(pub, kick, hand), 10)  # type: ignore[arg-type]
    rec = cluster.recorders["node2"]
    assert rec.kicks == [("node1", "c1", 5)]
    [(origin, got)] = rec.handovers
    assert (origin, got.client_id, got.epoch) == ("node1", "c1", 5)
    assert got.messages.incoming_qos2 == {9}
    assert [(d.message.payload, d.qos, d.subscription_ids) for d in got.messages.queued] == [
        (b"queued", 1, (4,))
    ]
    # the other direction, over the same stream
    await asyncio.wait_for(b.kick("node1", "c2", 1), 10)
    assert cluster.recorders["node1"].kicks == [("node2", "c2", 1)]


async def test_shared_groups_are_named_per_target(cluster: Cluster) -> None:
    n1 = await cluster.node("node1")
    n2 = await cluster.node("node2")
    n3 = await cluster.node("node3")
    for x, y in ((n1, n2), (n1, n3), (n2, n3)):
        cluster.link(x, y)
    pending = n1.send(["node2", "node3"], msg("s"), {"node3": (("g", "t/#"),)})
    await asyncio.wait_for(pending, 10)  # type: ignore[arg-type]
    assert cluster.recorders["node2"].groups == [()]
    assert cluster.recorders["node3"].groups == [(("g", "t/#"),)]


async def test_unknown_targets_are_refused(cluster: Cluster) -> None:
    a = await cluster.node("node1")
    with pytest.raises(UnknownPeer, match="node9"):
        a.send(["node9"], msg("x"))
    with pytest.raises(ValueError, match="its own peer"):
        a.add_peer("node1", "127.0.0.1:1")


# -- broken streams -------------------------------------------------------------------------


async def test_stream_broken_mid_burst_loses_nothing_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    b = await cluster.node("node2")
    proxy = await cluster.proxy(b)
    a = await cluster.node("node1")
    cluster.link(a, b, via=proxy)
    await cluster.connected("node1", "node2")
    expected_ab: list[bytes] = []
    expected_ba: list[bytes] = []
    waits = []
    received = cluster.recorders["node2"].publishes
    for burst in range(12):
        mode = burst % 3
        if mode == 0:
            await cluster.connected("node1", "node2")
            proxy.backward.clear()  # node2's acknowledgements stop reaching node1
        for i in range(100):
            qos = (burst + i) % 3
            payload = f"{burst}:{i}".encode()
            expected_ab.append(payload)
            pending = a.send(["node2"], Message.create(f"t/{i % 4}", payload, qos, False))
            if pending is not None:
                waits.append(pending)
            if i % 10 == 0:
                expected_ba.append(b"back " + payload)
                waits.append(b.send(["node1"], Message.create("r", b"back " + payload, 1, False)))
            if i % 25 == 24:
                await asyncio.sleep(0)  # several frames per burst
        if mode == 0:
            # node2 has handled the burst but node1 never heard so: after the cut,
            # node1 resends those frames and node2 must drop them.
            await wait_until(lambda: len(received) == len(expected_ab))
            proxy.cut()
            proxy.backward.set()
        elif mode == 1:
            await asyncio.sleep(0.002)  # cut while frames are in flight
            proxy.cut()
        else:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*waits), 30)
    await wait_until(lambda: len(cluster.recorders["node2"].publishes) >= len(expected_ab))
    await asyncio.sleep(0.2)
    assert cluster.recorders["node2"].payloads() == expected_ab
    assert cluster.recorders["node1"].payloads() == expected_ba
    status_a, status_b = a.status()["node2"], b.status()["node1"]
    assert proxy.connections >= 5
    assert status_a.resends > 0 and status_b.duplicates > 0
    assert (status_a.queued, status_a.unacked, status_b.queued, status_b.unacked) == (0, 0, 0, 0)


async def test_a_restarted_peer_on_the_same_port_gets_what_was_queued(cluster: Cluster) -> None:
    b = await cluster.node("node2")
    port = b.port
    a = await cluster.node("node1")
    cluster.link(a, b)
    await cluster.connected("node1", "node2")
    await asyncio.wait_for(a.send(["node2"], msg("first")), 10)  # type: ignore[arg-type]
    await b.stop()
    waits = [a.send(["node2"], msg(f"while down {i}")) for i in range(20)]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waits)  # type: ignore[union-attr]
    cluster.recorders["node2"] = Recorder()
    b2 = await cluster.node("node2", port=port)
    b2.add_peer("node1", f"127.0.0.1:{a.port}")
    await asyncio.wait_for(asyncio.gather(*waits), 10)  # type: ignore[arg-type]
    assert cluster.recorders["node2"].payloads() == [f"while down {i}".encode() for i in range(20)]


async def test_queue_limit_makes_publishers_wait_and_loses_nothing(cluster: Cluster) -> None:
    settings = ForwardingSettings(reconnect_min=0.02, reconnect_max=0.1, queue_limit=8)
    b = await cluster.node("node2", settings=settings)
    proxy = await cluster.proxy(b)
    proxy.refusing = True
    a = await cluster.node("node1", settings=settings)
    cluster.link(a, b, via=proxy)
    results = [a.send(["node2"], msg(str(i), qos=0)) for i in range(12)]
    assert results[:7] == [None] * 7
    blocked = results[7:]
    assert all(r is not None for r in blocked)
    await asyncio.sleep(0.3)
    assert not any(r.done() for r in blocked)  # type: ignore[union-attr]
    assert a.status()["node2"].queued == 12
    proxy.refusing = False
    await asyncio.wait_for(asyncio.gather(*blocked), 10)  # type: ignore[arg-type]
    await wait_until(lambda: len(cluster.recorders["node2"].publishes) == 12)
    assert cluster.recorders["node2"].payloads() == [str(i).encode() for i in range(12)]
    assert a.send(["node2"], msg("room again", qos=0)) is None


async def test_an_unreachable_peer_fails_waiting_publishers_and_recovers(cluster: Cluster) -> None:
    settings = ForwardingSettings(reconnect_min=0.02, reconnect_max=0.1, unreachable_timeout=0.5)
    b = await cluster.node("node2", settings=settings)
    proxy = await cluster.proxy(b)
    a = await cluster.node("node1", settings=settings)
    cluster.link(a, b, via=proxy)
    await asyncio.wait_for(a.send(["node2"], msg("m1")), 10)  # type: ignore[arg-type]
    proxy.refusing = True
    proxy.cut()
    lost = a.send(["node2"], msg("m2"))
    assert a.send(["node2"], msg("m2 qos0", qos=0)) is None
    with pytest.raises(ClusterUnavailable, match="node2"):
        await asyncio.wait_for(lost, 10)  # type: ignore[arg-type]
    status = a.status()["node2"]
    assert status.unreachable and status.dropped == 2 and status.unacked == status.queued == 0
    with pytest.raises(ClusterUnavailable):
        await a.send(["node2"], msg("m3"))  # type: ignore[misc]
    proxy.refusing = False
    await wait_until(lambda: a.status()["node2"].connected)
    await asyncio.wait_for(a.send(["node2"], msg("m4")), 10)  # type: ignore[arg-type]
    # node2 tolerates the gap left by the discarded frame
    assert cluster.recorders["node2"].payloads() == [b"m1", b"m4"]


async def test_holding_waits_for_a_lost_peer_until_it_is_declared_down(cluster: Cluster) -> None:
    """SWIM on: a publish for a peer that was reached and went silent is held, not failed,
    and handed back when the cluster declares the peer down; a peer never reached (a
    refused certificate) is still given up on by time."""
    settings = ForwardingSettings(
        reconnect_min=0.02, reconnect_max=0.1, unreachable_timeout=0.3, hold_for_node_down=True
    )
    b = await cluster.node("node2", settings=settings)
    proxy = await cluster.proxy(b)
    a = await cluster.node("node1", settings=settings)
    cluster.link(a, b, via=proxy)
    a.add_peer("node3", "127.0.0.1:1")  # never reachable
    await asyncio.wait_for(a.send(["node2"], msg("m1")), 10)  # type: ignore[arg-type]
    proxy.refusing = True
    proxy.cut()
    held = a.send(["node2"], msg("m2"))
    never = a.send(["node3"], msg("to nowhere"))
    with pytest.raises(ClusterUnavailable, match="node3"):
        await asyncio.wait_for(never, 10)  # type: ignore[arg-type]
    await asyncio.sleep(0.6)  # twice unreachable_timeout
    assert held is not None and not held.done(), "held, not failed"
    assert not a.status()["node2"].unreachable
    [(item, waiter)] = a.declared_down("node2")
    assert isinstance(item, Forwarded) and item.message.payload == b"m2"
    assert waiter is not None and not held.done()
    waiter.hit()  # as rehoming.py does once it is re-homed
    await asyncio.wait_for(held, 1)  # type: ignore[arg-type]
    assert a.status()["node2"].unreachable, "until a stream is back"


# -- broken peers --------------------------------------------------------------------------


async def test_garbage_from_a_dialing_peer_is_a_broken_peer_not_a_crash(cluster: Cluster) -> None:
    b = await cluster.node("node2")
    metadata = hello_metadata("dial", "node1", "node2", [5], None)
    async with raw_call(b.port, metadata, serializer=lambda data: data) as call:  # type: ignore[arg-type]
        await call.write(b"\x0a\x04junk")
        with pytest.raises(aio.AioRpcError) as failure:
            await asyncio.wait_for(call.read(), 10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable frame" in (failure.value.details() or "")
    assert "broken peer" in (b.status()["node1"].last_error or "")
    # The node is fine, and the real node1 can still reach it.
    a = await cluster.node("node1")
    cluster.link(a, b)
    await asyncio.wait_for(a.send(["node2"], msg("after")), 10)  # type: ignore[arg-type]
    assert cluster.recorders["node2"].payloads() == [b"after"]


async def test_garbage_from_an_accepting_peer_is_a_broken_peer_not_a_crash(
    cluster: Cluster,
) -> None:
    answered = 0

    async def liar(request_iterator: object, context: aio.ServicerContext) -> None:
        nonlocal answered
        answered += 1
        hello = hello_metadata("accept", "node2", "node1", [1, a.incarnation], None)
        await context.send_initial_metadata(hello)
        await context.write(b"\x0a\x03bad")
        await asyncio.sleep(5)

    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "raftmq.forwarding.v1.Forwarding",
                {"Stream": grpc.stream_stream_rpc_method_handler(liar)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        a = await cluster.node("node1")
        a.add_peer("node2", f"127.0.0.1:{port}")
        await wait_until(lambda: answered >= 2)  # it keeps redialing, with backoff
        status = a.status()["node2"]
        assert "broken peer" in (status.last_error or "") and status.frames_received == 0
    finally:
        await server.stop(None)


# -- the protocol, step by step, over a scripted stream -----------------------------------


class ScriptedPeer:
    """Plays node1 on a fake stream to node2's link, frame by frame."""

    def __init__(self, forwarder: Node, incarnation: int) -> None:
        self.forwarder = forwarder
        self.incarnation = incarnation
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        channel = forwarder._channels["node1"]  # the channel under test
        self.task = asyncio.create_task(channel.accept(self._read, self._write, incarnation))

    async def _read(self) -> object:
        return await self.inbox.get()

    async def _write(self, data: bytes) -> None:
        await self.outbox.put(data)

    def send(
        self, seq: int, *payloads: str, ack: int = 0, ack_incarnation: int | None = None
    ) -> None:
        if ack_incarnation is None:
            ack_incarnation = self.forwarder.incarnation
        items = [Forwarded(msg(p)) for p in payloads]
        frame = encode_frame(seq, ack, items, time.monotonic(), ack_incarnation)
        self.inbox.put_nowait(wrap(frame))

    async def receive(self):  # type: ignore[no-untyped-def]
        raw = await asyncio.wait_for(self.outbox.get(), 5)
        return decode_frame(unwrap(raw), time.monotonic())

    async def acked(self, seq: int) -> None:
        """Wait for node2 to acknowledge ``seq`` (acks of one loop turn coalesce)."""
        while (await self.receive()).ack != seq:
            pass

    async def close(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def node2(cluster: Cluster) -> Node:
    forwarder = await cluster.node("node2")
    forwarder.add_peer("node1", None)
    return forwarder


async def test_duplicates_are_dropped_and_acknowledged_again(cluster: Cluster, node2: Node) -> None:
    peer = ScriptedPeer(node2, incarnation=11)
    peer.send(1, "a", "b")
    assert (await peer.receive()).ack == 1
    peer.send(1, "a", "b")  # resent after a reconnect node2 did not notice
    await peer.acked(1)
    peer.send(2, "c")
    await peer.acked(2)
    assert cluster.recorders["node2"].payloads() == [b"a", b"b", b"c"]
    assert node2.status()["node1"].duplicates == 1
    await peer.close()


async def test_a_gap_left_by_discarded_frames_is_tolerated(cluster: Cluster, node2: Node) -> None:
    peer = ScriptedPeer(node2, incarnation=11)
    peer.send(1, "a")
    peer.send(4, "d")  # frames 2 and 3 were discarded when node1 gave up on node2
    await peer.acked(4)
    peer.send(3, "late")  # below the cursor: a duplicate, never delivered out of order
    await peer.acked(4)
    assert cluster.recorders["node2"].payloads() == [b"a", b"d"]
    await peer.close()


async def test_a_restarted_peer_starts_a_new_receive_cursor(cluster: Cluster, node2: Node) -> None:
    first = ScriptedPeer(node2, incarnation=11)
    first.send(1, "a")
    first.send(2, "b")
    await first.acked(2)
    await first.close()
    second = ScriptedPeer(node2, incarnation=12)  # node1's process restarted: seq from 1
    second.send(1, "new a")
    assert (await second.receive()).ack == 1
    assert cluster.recorders["node2"].payloads() == [b"a", b"b", b"new a"]
    await second.close()


async def test_an_ack_meant_for_a_previous_process_is_ignored(
    cluster: Cluster, node2: Node
) -> None:
    peer = ScriptedPeer(node2, incarnation=11)
    pending = node2.send(["node1"], msg("to node1"))
    sent = await peer.receive()
    assert sent.seq == 1 and sent.items[0].message.payload == b"to node1"
    peer.send(0, ack=5, ack_incarnation=node2.incarnation ^ 1)  # stale: another node2 process
    await asyncio.sleep(0.05)
    assert not pending.done()  # type: ignore[union-attr]
    peer.send(0, ack=1)
    await asyncio.wait_for(pending, 5)  # type: ignore[arg-type]
    await peer.close()


async def test_unacknowledged_frames_are_resent_first_on_a_new_stream(
    cluster: Cluster, node2: Node
) -> None:
    first = ScriptedPeer(node2, incarnation=11)
    pending = [node2.send(["node1"], msg("one")), node2.send(["node1"], msg("two"))]
    assert [i.message.payload for i in (await first.receive()).items] == [b"one", b"two"]
    second = ScriptedPeer(node2, incarnation=11)  # replaces the first stream
    await wait_until(first.task.done)
    later = node2.send(["node1"], msg("three"))
    resent, fresh = await second.receive(), await second.receive()
    assert (resent.seq, [i.message.payload for i in resent.items]) == (1, [b"one", b"two"])
    assert (fresh.seq, [i.message.payload for i in fresh.items]) == (2, [b"three"])
    second.send(0, ack=2)
    await asyncio.wait_for(asyncio.gather(*pending, later), 5)  # type: ignore[arg-type]
    assert node2.status()["node1"].resends == 1
    await second.close()


async def test_a_failing_handler_does_not_wedge_the_stream(cluster: Cluster, node2: Node) -> None:
    def explode(message: Message) -> None:
        if message.payload == b"bad":
            raise RuntimeError("handler bug")

    cluster.recorders["node2"].on_each = explode
    peer = ScriptedPeer(node2, incarnation=11)
    peer.send(1, "ok", "bad", "fine")
    assert (await peer.receive()).ack == 1
    assert cluster.recorders["node2"].payloads() == [b"ok", b"fine"]
    await peer.close()


async def test_an_item_that_cannot_be_encoded_fails_its_sender_only(
    cluster: Cluster, node2: Node
) -> None:
    peer = ScriptedPeer(node2, incarnation=11)
    good = node2.send(["node1"], msg("good"))
    broken = Message.create("t", b"x", 1, False, {"content_type": 12345})
    bad = node2.send(["node1"], broken)
    after = node2.send(["node1"], msg("after"))
    payloads = []
    while len(payloads) < 2:
        payloads += [i.message.payload for i in (await peer.receive()).items]
    assert payloads == [b"good", b"after"]
    with pytest.raises(Exception, match="type mismatch"):
        await asyncio.wait_for(bad, 5)  # type: ignore[arg-type]
    peer.send(0, ack=5)
    await asyncio.wait_for(asyncio.gather(good, after), 5)  # type: ignore[arg-type]
    await peer.close()


async def test_a_newer_real_stream_from_the_same_peer_replaces_the_older_one(
    cluster: Cluster,
) -> None:
    b = await cluster.node("node2")
    metadata = hello_metadata("dial", "node1", "node2", [5], None)
    async with raw_call(b.port, metadata) as old:  # type: ignore[arg-type]
        await old.write(encode_frame(1, 0, [Forwarded(msg("old"))], time.monotonic()))
        assert decode_frame(await asyncio.wait_for(old.read(), 5), 0.0).ack == 1
        async with raw_call(b.port, metadata) as new:  # type: ignore[arg-type]
            await new.write(encode_frame(2, 0, [Forwarded(msg("new"))], time.monotonic()))
            assert decode_frame(await asyncio.wait_for(new.read(), 5), 0.0).ack == 2
            with pytest.raises(aio.AioRpcError):
                while True:  # the old stream ends
                    await asyncio.wait_for(old.read(), 5)
    assert cluster.recorders["node2"].payloads() == [b"old", b"new"]


# -- who may talk to whom --------------------------------------------------------------------


async def _refused(call_port: int, metadata: tuple[tuple[str, str], ...]) -> str:
    async with raw_call(call_port, metadata) as call:
        with pytest.raises(aio.AioRpcError) as failure:
            await asyncio.wait_for(call.read(), 10)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return failure.value.details() or ""


async def test_cluster_secret_is_checked(cluster: Cluster) -> None:
    a, b = await two(cluster, secret="s3cret")
    await asyncio.wait_for(a.send(["node2"], msg("with secret")), 10)  # type: ignore[arg-type]
    port = b.port
    assert port is not None
    wrong = hello_metadata("dial", "node0", "node2", [1], b"guess")
    assert "does not know the cluster secret" in await _refused(port, wrong)
    missing = hello_metadata("dial", "node0", "node2", [1], None)
    assert "does not know the cluster secret" in await _refused(port, missing)
    assert "node0" not in b.status()


@pytest.mark.parametrize("incarnation", ["", "-1", "1e3", "\u00b2", "9" * 5000, str(1 << 64)])
def test_handshakes_with_a_bad_incarnation_are_refused(incarnation: str) -> None:
    metadata = (("raftmq-node", "node1"), ("raftmq-incarnation", incarnation))
    with pytest.raises(PeerRejected, match="bad raftmq-incarnation"):
        check_hello(metadata, "dial", "node2", None)


def test_handshake_proofs_bind_role_ids_and_incarnations() -> None:
    secret = b"s"
    good = hello_metadata("accept", "node2", "node1", [7, 8], secret)
    assert check_hello(good, "accept", "node1", secret, 8) == Hello("node2", 7)
    for role, receiver, receiver_incarnation in (
        ("dial", "node1", 8),  # reflected as the other role
        ("accept", "node3", 8),  # meant for another node
        ("accept", "node1", 9),  # an answer to another stream
    ):
        with pytest.raises(PeerRejected, match="cluster secret"):
            check_hello(good, role, receiver, secret, receiver_incarnation)


async def test_only_the_node_whose_id_sorts_first_dials(cluster: Cluster) -> None:
    b = await cluster.node("node2")
    backwards = hello_metadata("dial", "node3", "node2", [1], None)
    assert "only the node whose id sorts first dials" in await _refused(b.port, backwards)  # type: ignore[arg-type]


async def test_mutual_tls_between_nodes_with_certificates(cluster: Cluster) -> None:
    certs = Certs()
    n1 = await cluster.node("node1", tls=certs.node("node1"))
    n2 = await cluster.node("node2", tls=certs.node("node2"))
    n3 = await cluster.node("node3", tls=certs.node("node3"))
    for x, y in ((n1, n2), (n1, n3), (n2, n3)):
        cluster.link(x, y)
    await asyncio.wait_for(n1.send(["node2", "node3"], msg("tls")), 10)  # type: ignore[arg-type]
    await asyncio.wait_for(n3.send(["node1"], msg("tls back")), 10)  # type: ignore[arg-type]
    assert (
        cluster.recorders["node2"].payloads() == cluster.recorders["node3"].payloads() == [b"tls"]
    )
    assert cluster.recorders["node1"].payloads() == [b"tls back"]


@pytest.mark.parametrize(
    ("dialer_tls", "acceptor_tls", "error"),
    [
        pytest.param("other CA", "node2", "UNAVAILABLE", id="client-cert-from-another-ca"),
        pytest.param(
            "node9", "node2", "presented a certificate for ['node9']", id="client-claims-another-id"
        ),
        pytest.param("node1", "node3", "UNAVAILABLE", id="server-cert-names-another-node"),
        pytest.param(None, "node2", "UNAVAILABLE", id="plaintext-to-tls"),
    ],
)
async def test_mutual_tls_refuses_wrong_certificates(
    cluster: Cluster, dialer_tls: str | None, acceptor_tls: str, error: str
) -> None:
    certs = Certs()
    if dialer_tls == "other CA":
        tls1: NodeTLS | None = Certs("another CA").node("node1")
    elif dialer_tls is None:
        tls1 = None
    else:
        tls1 = certs.node("node1", names=(dialer_tls,))
    b = await cluster.node("node2", tls=certs.node("node2", names=(acceptor_tls,)))
    a = await cluster.node("node1", tls=tls1)
    cluster.link(a, b)
    pending = a.send(["node2"], msg("must not arrive"))
    await wait_until(lambda: a.status()["node2"].last_error is not None)
    await asyncio.sleep(0.3)
    status = a.status()["node2"]
    assert error in (status.last_error or ""), status.last_error
    assert not status.connected and not pending.done()  # type: ignore[union-attr]
    assert cluster.recorders["node2"].publishes == []


async def test_status_reports_stream_health(cluster: Cluster) -> None:
    a, _ = await two(cluster)
    await asyncio.wait_for(a.send(["node2"], msg("x")), 10)  # type: ignore[arg-type]
    s = a.status()["node2"]
    assert (s.node_id, s.dials, s.connected, s.unreachable) == ("node2", True, True, False)
    assert (s.queued, s.unacked, s.dropped, s.last_error) == (0, 0, 0, None)
    assert s.frames_sent >= 1 and s.frames_received >= 1
    assert cluster.nodes["node2"].status()["node1"].dials is False


# -- throughput --------------------------------------------------------------------------------


async def test_throughput_of_one_stream(cluster: Cluster) -> None:
    """QoS 0, 64-byte payloads, node1 → node2, both in this process (one core for both ends)."""
    a, _ = await two(cluster)
    count = 30_000
    payload = b"p" * 64
    start = time.perf_counter()
    for i in range(count):
        room = a.send(["node2"], Message.create("bench/topic", payload, 0, False))
        if room is not None:
            await room
        if i % 500 == 499:
            await asyncio.sleep(0)  # let the stream run, as a node's loop would between reads
    await asyncio.wait_for(a.send(["node2"], msg("end")), 30)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    assert len(cluster.recorders["node2"].publishes) == count + 1
    rate = count / elapsed
    frames = a.status()["node2"].frames_sent
    per_frame = count / frames
    print(f"\nforwarding throughput: {rate:,.0f} msg/s, one stream, {per_frame:.0f} per frame")
    assert rate > 5_000
