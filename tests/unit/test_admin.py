"""The admin service: call authentication, the wire, replies over real gRPC from three
real RaftClusters (stream health stood in for), and how the CLI renders replies."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from raft_trio import IDS, SECRET, Trio, eventually
from test_forwarding import _compiled_proto

from raftmq.cluster.admin.calls import (
    AUTH_KEY,
    NODE_DOWN,
    NONCE_KEY,
    SERVICE,
    STATUS,
    TIME_KEY,
    AdminRejected,
    CallChecker,
    call_metadata,
    path,
)
from raftmq.cluster.admin.cli import (
    AdminCommandFailed,
    ClusterAccess,
    cluster_access,
    declare_down,
    render_node_down,
    render_status,
)
from raftmq.cluster.admin.client import AdminCallFailed, AdminClient
from raftmq.cluster.admin.service import AdminService, status_report
from raftmq.cluster.forwarding.peer_status import PeerStatus
from raftmq.cluster.replication.deaths import MemberHealth
from raftmq.cluster.replication.replicated import RaftCluster
from raftmq.cluster.rpc import wrap
from raftmq.cluster.tls import NodeTLS
from raftmq.cluster.tools.certgen import issue_node_files, node_files
from raftmq.node.message import Message
from raftmq.node.packets import Will

pytestmark = pytest.mark.timeout(60)

KEY = SECRET.encode()
NOW = 1_800_000_000.0
BODY = b'{"node": "n2"}'


# -- authentication ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def checker(clock: Clock | None = None, **options: Any) -> CallChecker:
    return CallChecker("n1", KEY, clock=clock or Clock(), **options)


def test_a_call_signed_with_the_cluster_secret_is_accepted() -> None:
    checker().check(NODE_DOWN, call_metadata(KEY, NODE_DOWN, "n1", BODY, NOW), BODY)


def test_a_call_signed_with_another_secret_is_refused() -> None:
    metadata = call_metadata(b"some-other-cluster-secret", NODE_DOWN, "n1", BODY, NOW)
    with pytest.raises(AdminRejected, match="does not know the cluster secret"):
        checker().check(NODE_DOWN, metadata, BODY)


@pytest.mark.parametrize("skew", [-31, 31])
def test_a_call_from_a_clock_outside_the_window_is_refused(skew: int) -> None:
    metadata = call_metadata(KEY, STATUS, "n1", b"{}", NOW + skew)
    with pytest.raises(
        AdminRejected, match=re.escape(f"timestamp is {skew:+d} s from the clock of node 'n1'")
    ):
        checker().check(STATUS, metadata, b"{}")


@pytest.mark.parametrize("skew", [-29, 29])
def test_a_call_from_a_clock_inside_the_window_is_accepted(skew: int) -> None:
    checker().check(STATUS, call_metadata(KEY, STATUS, "n1", b"{}", NOW + skew), b"{}")


def test_a_replayed_call_is_refused() -> None:
    node = checker()
    metadata = call_metadata(KEY, NODE_DOWN, "n1", BODY, NOW)
    node.check(NODE_DOWN, metadata, BODY)
    with pytest.raises(AdminRejected, match="replayed"):
        node.check(NODE_DOWN, metadata, BODY)


def test_the_signature_covers_method_and_body() -> None:
    metadata = call_metadata(KEY, STATUS, "n1", b"{}", NOW)
    with pytest.raises(AdminRejected, match="secret"):
        checker().check(NODE_DOWN, metadata, b"{}")  # a Status call made into a NodeDown
    metadata = call_metadata(KEY, NODE_DOWN, "n1", BODY, NOW)
    with pytest.raises(AdminRejected, match="secret"):
        checker().check(NODE_DOWN, metadata, b'{"node": "n3"}')


def test_a_call_for_another_node_is_refused_by_name() -> None:
    metadata = call_metadata(KEY, STATUS, "n2", b"{}", NOW)
    with pytest.raises(AdminRejected, match="call meant for node 'n2' reached node 'n1'"):
        checker().check(STATUS, metadata, b"{}")


@pytest.mark.parametrize("key", [AUTH_KEY, TIME_KEY, NONCE_KEY])
def test_a_call_without_its_proof_is_refused(key: str) -> None:
    metadata = [(k, v) for k, v in call_metadata(KEY, STATUS, "n1", b"{}", NOW) if k != key]
    with pytest.raises(AdminRejected, match=f"no {key}"):
        checker().check(STATUS, metadata, b"{}")


def test_nonces_are_remembered_for_two_windows_and_no_more_than_capacity() -> None:
    clock = Clock()
    node = checker(clock, capacity=2)
    for _ in range(2):
        node.check(STATUS, call_metadata(KEY, STATUS, "n1", b"{}", clock.now), b"{}")
    with pytest.raises(AdminRejected, match="more than 2 admin calls"):
        node.check(STATUS, call_metadata(KEY, STATUS, "n1", b"{}", clock.now), b"{}")
    clock.now += 61  # both nonces' timestamps are out of the window now: forgotten
    node.check(STATUS, call_metadata(KEY, STATUS, "n1", b"{}", clock.now), b"{}")


# -- the .proto describes the wire ----------------------------------------------------------


def test_the_proto_admin_service_is_what_nodes_serve(tmp_path: Path) -> None:
    pb = _compiled_proto(tmp_path)
    body = b'{"node": "n3"}'
    assert pb.AdminMessage(json=body).SerializeToString() == wrap(body)
    service = pb.DESCRIPTOR.services_by_name["Admin"]
    assert service.full_name == SERVICE
    for method in (STATUS, NODE_DOWN):
        descriptor = service.methods_by_name[method]
        assert f"/{service.full_name}/{descriptor.name}" == path(method)
        assert (descriptor.client_streaming, descriptor.server_streaming) == (False, False)
        assert descriptor.input_type.name == descriptor.output_type.name == "AdminMessage"


# -- three RaftClusters behind admin services ----------------------------------------------


class NoPeers:
    """The forwarder of nodes whose messages go nowhere (no route leaves a node here)."""

    def send(self, node_ids: Collection[str], message: Message, shared_groups: Any = None) -> None:
        return None

    def start(self, inbox: Any) -> None:
        self.inbox = inbox

    async def stop(self) -> None:
        return None

    def barrier(self, node_id: str, token: int, applied: int) -> None:
        """Answered at once, as if every peer routed by it already."""
        self.inbox.barrier_reply_from_peer(node_id, token)

    def reply_barrier(self, node_id: str, token: int) -> None:
        return None

    def declared_down(self, node_id: str) -> list[Any]:
        return []


def peer_status(node_id: str, connected: bool) -> PeerStatus:
    return PeerStatus(
        node_id=node_id,
        address=f"127.0.0.1:{1000 + int(node_id[1:])}",
        dials=True,
        connected=connected,
        unreachable=False,
        queued=2,
        unacked=3,
        frames_sent=10,
        frames_received=9,
        resends=1,
        duplicates=0,
        dropped=0,
        last_error=None if connected else "UNAVAILABLE: connection refused",
    )


@dataclasses.dataclass
class Streams:
    """Stream health as a Forwarder would report it: every peer connected unless told."""

    node_id: str
    lost: set[str] = dataclasses.field(default_factory=set)

    def status(self) -> dict[str, PeerStatus]:
        return {
            peer: peer_status(peer, peer not in self.lost) for peer in IDS if peer != self.node_id
        }


@dataclasses.dataclass
class AdminNodes:
    trio: Trio
    tls: dict[str, NodeTLS] = dataclasses.field(default_factory=dict)
    """Per node, when its admin service is to be served over node TLS."""
    clusters: dict[str, RaftCluster] = dataclasses.field(default_factory=dict)
    streams: dict[str, Streams] = dataclasses.field(default_factory=dict)
    addresses: dict[str, str] = dataclasses.field(default_factory=dict)
    servers: list[aio.Server] = dataclasses.field(default_factory=list)

    async def start(self) -> None:
        for node_id in IDS:
            cluster = self.clusters[node_id] = RaftCluster(
                self.trio.make(node_id), NoPeers(), members=IDS
            )
            streams = self.streams[node_id] = Streams(node_id)
            server = aio.server()
            server.add_generic_rpc_handlers((AdminService(cluster, streams, KEY).handler(),))
            tls = self.tls.get(node_id)
            if tls is None:
                port = server.add_insecure_port("127.0.0.1:0")
            else:
                port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
            await server.start()
            self.servers.append(server)
            self.addresses[node_id] = f"127.0.0.1:{port}"
            await cluster.start()
        await self.trio.leader()
        await eventually(
            lambda: all(c.state.members == IDS for c in self.clusters.values()),
            10,
            "members committed",
        )

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(None)
        for cluster in self.clusters.values():
            await cluster.stop()

    def leader(self) -> str:
        leader = self.clusters["n1"].raft.status().leader
        assert leader is not None
        return leader

    def client(self, node_id: str, secret: bytes = KEY) -> AdminClient:
        return AdminClient(node_id, self.addresses[node_id], secret, timeout=10)

    def access(self, addresses: dict[str, str] | None = None) -> ClusterAccess:
        return ClusterAccess(Path("raftmq.toml"), "n1", addresses or self.addresses, KEY, None)


@asynccontextmanager
async def admin_nodes(tmp_path: Path, **options: Any) -> AsyncIterator[AdminNodes]:
    running = AdminNodes(Trio(tmp_path), **options)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[AdminNodes]:
    async with admin_nodes(tmp_path) as running:
        yield running


async def test_status_reports_raft_state_routes_counts_and_streams(nodes: AdminNodes) -> None:
    leader = nodes.leader()
    follower = next(n for n in IDS if n != leader)
    await nodes.clusters[follower].add_route(None, "a/#")
    await nodes.clusters[leader].add_route("workers", "jobs/#")
    await nodes.clusters[follower].claim_client("c1")
    nodes.streams[follower].lost.add(leader)
    await eventually(lambda: len(nodes.clusters[follower].state.routes) == 2, 10, "routes applied")

    async with nodes.client(follower) as client:
        status = await client.status()

    assert (status["node"], status["role"], status["leader"]) == (follower, "follower", leader)
    assert status["members"] == list(IDS) and status["down"] == []
    assert status["commit_index"] >= status["last_applied"] > 0
    assert status["has_quorum"] is True
    assert status["counts"]["clients"] == 1 and status["clients_by_node"] == {follower: 1}
    assert status["routes"] == [
        {"filter": "a/#", "share_group": None, "nodes": [follower]},
        {"filter": "jobs/#", "share_group": "workers", "nodes": [leader]},
    ]
    assert status["routes_more"] == 0
    assert status["streams"][leader]["connected"] is False
    assert status["streams"][leader]["last_error"] == "UNAVAILABLE: connection refused"
    others = [n for n in IDS if n not in (leader, follower)]
    assert status["streams"][others[0]]["connected"] is True
    assert sorted(status["raft_peers"]) == sorted([leader, *others])

    capped = status_report(nodes.clusters[follower], nodes.streams[follower], route_limit=1)
    assert len(capped["routes"]) == 1 and capped["routes_more"] == 1


async def test_node_down_is_refused_by_followers_naming_the_leader(nodes: AdminNodes) -> None:
    leader = nodes.leader()
    follower, other = (n for n in IDS if n != leader)
    async with nodes.client(follower) as client:
        with pytest.raises(AdminCallFailed) as refused:
            await client.node_down(other)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.leader == leader
    assert f"node {follower} at {nodes.addresses[follower]}" in str(refused.value)
    assert f"the leader is node {leader}" in str(refused.value)

    async with nodes.client(leader) as client:
        with pytest.raises(AdminCallFailed, match="'n9' is not a member") as unknown:
            await client.node_down("n9")
        assert unknown.value.code is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AdminCallFailed, match="is the Raft leader answering") as itself:
            await client.node_down(leader)
        assert itself.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert not nodes.clusters[leader].state.down

    async with nodes.client(leader, b"not-the-cluster-secret!") as stranger:
        with pytest.raises(AdminCallFailed) as denied:
            await stranger.status()
    assert denied.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_node_down_through_the_cli_reports_wills_sessions_and_releases(
    nodes: AdminNodes,
) -> None:
    leader = nodes.leader()
    dead, other = (n for n in IDS if n != leader)
    cluster = nodes.clusters[dead]
    await cluster.claim_client("leaves-a-will", will=Will("wills/x", b"gone", 1))
    await cluster.claim_client("persistent", clean_start=False, expiry_interval=3600)
    await eventually(
        lambda: len(nodes.clusters[other].state.owners) == 2, 10, "claims applied everywhere"
    )
    # The node asked first does not answer: the CLI goes on to the others (never `dead`).
    addresses = {**nodes.addresses, other: "127.0.0.1:1"}
    report = await declare_down(nodes.access(addresses), dead, other, timeout=10)

    assert (report["node"], report["leader"]) == (dead, leader)
    assert report["already_down"] is False and report["stream_connected"] is True
    assert report["wills"] == ["leaves-a-will"]
    assert report["released"] == ["leaves-a-will"]
    assert list(report["rehomed"]) == ["persistent"]
    assert report["rehomed"]["persistent"] in (leader, other)
    # (`dead` runs, so it learns it was declared down and rejoins: state.down empties.)
    assert nodes.clusters[leader].state.owners["persistent"].node_id != dead
    text = render_node_down(report)
    assert f"node {dead} declared down by leader {leader}" in text
    assert "wills published: 1 (leaves-a-will)" in text
    assert f"sessions re-homed: 1 (persistent -> {report['rehomed']['persistent']})" in text
    assert "warning: the leader still had a forwarding stream" in text

    with pytest.raises(AdminCommandFailed, match=f"node {leader} is the Raft leader"):
        await declare_down(nodes.access(), leader, dead, timeout=10)


async def test_node_down_of_a_node_swim_sees_alive_needs_force(nodes: AdminNodes) -> None:
    leader = nodes.leader()
    alive = next(n for n in IDS if n != leader)
    nodes.clusters[leader].health = lambda: {alive: MemberHealth("alive", 7, time.monotonic())}
    with pytest.raises(AdminCallFailed, match=f"'{alive}' is alive as SWIM sees it") as refused:
        await declare_down(nodes.access(), alive, leader, timeout=10)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "use --force" in str(refused.value) and "incarnation 7" in str(refused.value)
    assert not nodes.clusters[leader].state.down
    report = await declare_down(nodes.access(), alive, leader, timeout=10, force=True)
    assert report["node"] == alive and report["already_down"] is False


async def test_declare_down_says_which_nodes_it_could_not_ask(nodes: AdminNodes) -> None:
    unreachable = dict.fromkeys(IDS, "127.0.0.1:1")
    with pytest.raises(AdminCommandFailed, match="no node named the Raft leader") as failed:
        await declare_down(nodes.access(unreachable), "n3", "n1", timeout=2)
    assert "node n1 at 127.0.0.1:1: UNAVAILABLE" in str(failed.value)
    assert "node n2 at 127.0.0.1:1: UNAVAILABLE" in str(failed.value)
    assert "node n3" not in str(failed.value), "the dead node is never asked"


async def test_the_cli_calls_nodes_over_node_tls_when_the_config_sets_it(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    issue_node_files(certs, IDS)
    files = {node_id: node_files(certs, node_id) for node_id in IDS}
    tls = {n: NodeTLS(*(p.read_bytes() for p in (f.ca, f.cert, f.key))) for n, f in files.items()}
    async with admin_nodes(tmp_path, tls=tls) as nodes:
        raft, grpc_at = nodes.trio.addresses, nodes.addresses
        peers = [f'"{n}={raft[n]},{grpc_at[n]}"' for n in IDS if n != "n1"]
        config = tmp_path / "n1.toml"
        config.write_text(
            'node_id = "n1"\n'
            f'cluster_secret = "{SECRET}"\n'
            f'raft_listen = "{raft["n1"]}"\n'
            f'grpc_listen = "{grpc_at["n1"]}"\n'
            f"peers = [{', '.join(peers)}]\n"
            f'cluster_tls_ca = "{files["n1"].ca}"\n'
            f'cluster_tls_cert = "{files["n1"].cert}"\n'
            f'cluster_tls_key = "{files["n1"].key}"\n'
        )
        access = cluster_access(config, None)
        assert access.tls is not None
        async with access.client("n2", timeout=10) as client:  # checks n2's certificate
            assert (await client.status())["node"] == "n2"
        async with AdminClient("n2", grpc_at["n2"], KEY, timeout=3) as plaintext:
            with pytest.raises(AdminCallFailed) as refused:
                await plaintext.status()
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE


# -- rendering ---------------------------------------------------------------------------


def sample_status() -> dict[str, Any]:
    return {
        "node": "n1",
        "role": "follower",
        "leader": "n2",
        "term": 4,
        "commit_index": 120,
        "last_applied": 119,
        "has_quorum": True,
        "members": ["n1", "n2", "n3"],
        "down": ["n3"],
        "raft_peers": {"n2": True, "n3": False},
        "counts": {"clients": 5, "persistent_sessions": 2, "routes": 3, "retained": 1, "wills": 4},
        "clients_by_node": {"n1": 3, "n2": 2},
        "sessions_by_node": {"n2": 2},
        "routes": [
            {"filter": "a/#", "share_group": None, "nodes": ["n1", "n2"]},
            {"filter": "jobs/+", "share_group": "workers", "nodes": ["n2"]},
        ],
        "routes_more": 1,
        "health": {
            "n2": {"state": "alive", "incarnation": 3, "rtt_ms": 0.42, "last_alive_s": 0.1},
            "n3": {"state": "dead", "incarnation": 1, "rtt_ms": None, "last_alive_s": 12.0},
        },
        "streams": {
            "n2": dataclasses.asdict(peer_status("n2", True)),
            "n3": {**dataclasses.asdict(peer_status("n3", False)), "unreachable": True},
        },
    }


def test_status_renders_as_compact_tables() -> None:
    lines = render_status(sample_status()).splitlines()
    assert lines[0] == ("node n1: follower, term 4, commit index 120, last applied 119, quorum yes")
    assert lines[1] == "leader: n2"
    assert "MEMBER" in lines[3] and "SESSIONS" in lines[3]
    members = [line.split() for line in lines[4:7]]
    assert members == [
        ["n1", "up", "-", "-", "-", "this", "node", "3", "0"],
        ["n2", "up", "alive", "(3)", "0.42", "ms", "leader", "connected", "2", "2"],
        ["n3", "down", "dead", "(1)", "-", "-", "lost", "0", "0"],
    ]
    assert "clients 5, persistent sessions 2, wills 4, retained 1, routes 3" in lines
    assert any(line.split() == ["a/#", "-", "n1,n2"] for line in lines)
    assert any(line.split() == ["jobs/+", "workers", "n2"] for line in lines)
    assert "... and 1 more routes" in lines
    stream_rows = [line.split() for line in lines if line.startswith(("n2 ", "n3 "))][-2:]
    n2_row = ["n2", "127.0.0.1:1002", "connected", "2", "3", "10/9", "1", "0", "-"]
    assert stream_rows[0] == n2_row
    assert stream_rows[1][:3] == ["n3", "127.0.0.1:1003", "unreachable"]
    assert lines[-1].endswith("UNAVAILABLE: connection refused")


def test_node_down_renders_one_line_per_consequence() -> None:
    report = {
        "node": "n3",
        "leader": "n1",
        "already_down": True,
        "stream_connected": False,
        "wills": [],
        "rehomed": {"a": "n1", "b": "n2"},
        "released": ["c"],
    }
    assert render_node_down(report).splitlines() == [
        "node n3 declared down by leader n1 (it was down already)",
        "wills published: 0",
        "wills waiting for their delay: 0",
        "sessions re-homed: 2 (a -> n1, b -> n2)",
        "clients released: 1 (c)",
    ]
