"""Three real RaftNodes in the test's event loop, on 127.0.0.1 ports, for the Raft tests.

Each node has its own data dir under the test's tmp_path, so a node can be
stopped and a new RaftNode started on the same dir and port: a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

from raftmq.cluster.replication.raft import RaftNode, RaftOptions

SECRET = "unit-test-cluster-secret"
IDS = ("n1", "n2", "n3")
FAST = RaftOptions(
    commit_timeout=3.0,
    election_timeout=(0.3, 0.9),
    heartbeat_interval=0.05,
    connection_retry=0.3,
    leader_fallback=1.5,
)


def free_addresses(count: int) -> list[str]:
    """Distinct loopback ports the OS just handed out (held together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


class Trio:
    def __init__(self, tmp_path: Path, options: RaftOptions = FAST, **overrides: object) -> None:
        self.tmp_path = tmp_path
        self.options = dataclasses.replace(options, **overrides)  # type: ignore[arg-type]
        self.addresses = dict(zip(IDS, free_addresses(len(IDS)), strict=True))
        self.nodes: dict[str, RaftNode] = {}

    async def __aenter__(self) -> Trio:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop every node made, even when the test failed half way."""
        await self.stop()

    def make(self, node_id: str, secret: str = SECRET) -> RaftNode:
        """A new RaftNode for ``node_id`` on its usual address and data dir (not started)."""
        peers = {other: addr for other, addr in self.addresses.items() if other != node_id}
        node = RaftNode(
            node_id, self.addresses[node_id], peers, self.tmp_path / node_id, secret, self.options
        )
        self.nodes[node_id] = node
        return node

    async def start(self, *ids: str) -> None:
        for node_id in ids or IDS:
            node = self.nodes.get(node_id)
            if node is None or not node.running:
                node = self.make(node_id)
            await node.start()

    async def stop(self, *ids: str) -> None:
        for node_id in ids or tuple(self.nodes):
            await self.nodes[node_id].stop()

    def running(self) -> list[RaftNode]:
        return [node for node in self.nodes.values() if node.running]

    async def leader(self, timeout: float = 15.0, among: tuple[str, ...] = IDS) -> RaftNode:
        """The leader, once the running nodes ``among`` agree on one of them."""

        def voters() -> list[RaftNode]:
            return [node for node in self.running() if node.node_id in among]

        def agreed() -> bool:
            leaders = {node.status().leader for node in voters()}
            running = {node.node_id for node in voters()}
            return len(leaders) == 1 and leaders <= running

        await eventually(agreed, timeout, f"the running nodes of {among} agree on a leader")
        leader_id = voters()[0].status().leader
        assert leader_id is not None
        return self.nodes[leader_id]

    async def converged(self, timeout: float = 10.0) -> None:
        """Wait until every running node's mirror equals the others'."""

        def same() -> bool:
            snapshots = [node.state.snapshot() for node in self.running()]
            return all(s == snapshots[0] for s in snapshots)

        await eventually(same, timeout, "the running nodes hold the same state")
