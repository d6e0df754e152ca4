"""RaftNode: pysyncobj bridged to asyncio, three real nodes on loopback in one process.

Elections, commits from any node, one log entry per loop turn, the bounded
wait without a majority, orphaned commands, restarts that catch up from the
journal and from peers (log or snapshot), and the secret the Raft port needs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raft_trio import IDS, SECRET, Trio, eventually
from test_cluster_state import nodes_for

from raftmq.cluster.replication.commands import (
    AddRoute,
    ClaimClient,
    ClaimResult,
    RetainedRecord,
    SetRetained,
)
from raftmq.cluster.replication.raft import (
    DUMP_FILE,
    Applied,
    CommandRejected,
    RaftNode,
    RaftStartError,
    raft_password,
)
from raftmq.cluster.replication.state import ClusterState
from raftmq.node.hooks import ClusterUnavailable

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    async with Trio(tmp_path) as cluster:
        await cluster.start()
        await cluster.leader()
        yield cluster


async def test_commands_commit_from_every_node_and_apply_everywhere(trio: Trio) -> None:
    seen: dict[str, list[Applied]] = {node_id: [] for node_id in IDS}
    for node_id in IDS:
        trio.nodes[node_id].add_listener(seen[node_id].append)

    results = []
    for node_id in IDS:
        results.append(await trio.nodes[node_id].submit(ClaimClient("c1", node_id)))
    assert [r.epoch for r in results] == [1, 2, 3]  # type: ignore[attr-defined]
    assert [r.previous_owner for r in results] == [None, "n1", "n2"]  # type: ignore[attr-defined]

    await asyncio.gather(
        *(trio.nodes[n].submit(AddRoute(n, f"t/{n}/{i}")) for n in IDS for i in range(5))
    )
    await trio.converged()
    await eventually(lambda: all(len(s) == 18 for s in seen.values()), 10, "every node saw all")
    orders = {node_id: [a.command for a in events] for node_id, events in seen.items()}
    assert orders["n1"] == orders["n2"] == orders["n3"], "one log order everywhere"
    for node_id, events in seen.items():
        for applied in events:
            assert applied.mine == (applied.command.node_id == node_id)  # type: ignore[attr-defined]
            assert not applied.orphaned
    assert trio.nodes["n3"].state.owners.get("c1") == ("n3", 3)


async def test_concurrent_submits_in_one_loop_turn_share_one_log_entry(trio: Trio) -> None:
    node = trio.nodes["n2"]
    await node.submit(ClaimClient("warm-up", "n2"))
    await trio.converged()
    entries = node.counters.log_entries
    applied = {n: trio.nodes[n].counters.applied_batches for n in IDS}
    results = await asyncio.gather(*(node.submit(ClaimClient(f"c{i}", "n2")) for i in range(200)))
    assert len({r.epoch for r in results}) == 200  # type: ignore[attr-defined]
    assert node.counters.log_entries - entries == 1
    await trio.converged()
    for node_id in IDS:
        entries_applied = trio.nodes[node_id].counters.applied_batches - applied[node_id]
        assert entries_applied == 1, f"{node_id} applied one Raft entry for 200 commands"


async def test_a_batch_over_the_entry_limit_is_split_and_a_huge_command_refused(
    tmp_path: Path,
) -> None:
    async with Trio(tmp_path, max_entry_bytes=64 * 1024) as trio:
        await trio.start()
        node = await trio.leader()
        entries = node.counters.log_entries
        await asyncio.gather(
            *(
                node.submit(SetRetained(f"big/{i}", RetainedRecord(bytes([i]) * 20_000, 0, {})))
                for i in range(8)
            )
        )
        assert node.counters.log_entries - entries >= 3, "160 kB cannot fit one 64 kB entry"
        with pytest.raises(CommandRejected, match="over the Raft entry limit of 65536 bytes"):
            await node.submit(SetRetained("huge", RetainedRecord(b"x" * 100_000, 0, {})))
        await trio.converged()
        assert len(trio.nodes["n3"].state.retained) == 8


async def test_a_minority_cannot_commit_and_fails_within_the_bound(tmp_path: Path) -> None:
    async with Trio(tmp_path, commit_timeout=1.5) as trio:
        await trio.start()
        leader = await trio.leader()
        await leader.submit(ClaimClient("before", leader.node_id))
        await trio.stop(*(n for n in IDS if n != leader.node_id))
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable, match=r"no Raft commit within 1\.5s"):
            await leader.submit(ClaimClient("after", leader.node_id))
        assert time.monotonic() - started < 1.5 + 0.5
        assert leader.state.owners.get("after") is None


async def test_a_command_that_commits_after_its_submitter_gave_up_is_orphaned(
    tmp_path: Path,
) -> None:
    async with Trio(tmp_path, commit_timeout=1.0) as trio:
        await trio.start()
        leader = await trio.leader()
        seen: list[Applied] = []
        leader.add_listener(seen.append)
        others = [n for n in IDS if n != leader.node_id]
        await trio.stop(*others)
        late = ClaimClient("late", leader.node_id)
        with pytest.raises(ClusterUnavailable):
            await leader.submit(late)
        await trio.start(others[0])  # a majority again: the entry commits
        await eventually(lambda: any(a.command == late for a in seen), 20, "the entry commits")
        applied = next(a for a in seen if a.command == late)
        assert applied.mine and applied.orphaned
        assert isinstance(applied.result, ClaimResult)


async def test_a_restarted_node_replays_its_journal_then_catches_up_from_peers(
    tmp_path: Path,
) -> None:
    async with Trio(tmp_path) as trio:
        await trio.start()
        leader = await trio.leader()
        for i in range(5):
            await leader.submit(ClaimClient(f"a{i}", "n1"))
        await trio.converged()
        # pysyncobj writes a follower's commit index to disk once a second; a node
        # restarted alone replays its journal up to the last index it wrote.
        await asyncio.sleep(1.2)
        await trio.stop("n3")
        leader = await trio.leader()
        for i in range(5):
            await leader.submit(ClaimClient(f"b{i}", "n2"))
        await trio.stop()

        alone = trio.make("n3")
        replayed: list[Applied] = []
        alone.add_listener(replayed.append)
        await alone.start()
        a_ids = {f"a{i}" for i in range(5)}
        await eventually(lambda: a_ids <= alone.state.owners.keys(), 10, "journal replayed")
        assert not any(a.mine for a in replayed), "a replay is never this process's command"
        assert "b0" not in alone.state.owners, "n3 never had the b entries"
        assert not await alone.wait_ready(0.2), "no leader: not known to be up to date"

        await trio.start("n1", "n2")
        b_ids = {f"b{i}" for i in range(5)}
        await eventually(lambda: b_ids <= alone.state.owners.keys(), 20, "caught up from peers")
        assert await alone.wait_ready(10)
        await trio.converged()
        leader = await trio.leader()
        assert (await alone.submit(ClaimClient("c", "n3"))).epoch == 11  # type: ignore[attr-defined]


async def test_a_node_far_behind_is_sent_a_snapshot(tmp_path: Path) -> None:
    async with Trio(tmp_path, compaction_min_entries=10) as trio:
        await trio.start()
        await trio.leader()
        await trio.stop("n3")
        leader = await trio.leader()
        await leader.submit(SetRetained("keep", RetainedRecord(b"v", 1, {})))
        for i in range(40):
            await leader.submit(AddRoute(leader.node_id, f"f/{i}"))
        dump = tmp_path / leader.node_id / DUMP_FILE
        await eventually(dump.exists, 15, "the leader compacts its log into a dump")

        behind = trio.make("n3")
        restored: list[ClusterState] = []
        behind.add_restore_listener(restored.append)
        await behind.start()
        await trio.converged(timeout=20)
        assert restored, "n3 caught up through a snapshot, not the (compacted) log"
        assert behind.state.retained["keep"].payload == b"v"
        assert nodes_for(behind.state, "f/39") == {leader.node_id}

        await trio.stop(leader.node_id)
        again = trio.make(leader.node_id)
        reloaded: list[ClusterState] = []
        again.add_restore_listener(reloaded.append)
        await again.start()
        await eventually(lambda: bool(reloaded), 10, "a restarted node loads its own dump")
        await trio.converged(timeout=20)
        assert nodes_for(again.state, "f/39") == {leader.node_id}


async def test_a_node_with_the_wrong_secret_is_kept_out(tmp_path: Path) -> None:
    async with Trio(tmp_path, commit_timeout=1.5) as trio:
        await trio.start("n1", "n2")
        intruder = trio.make("n3", secret="another-secret-of-enough-length")
        await intruder.start()
        leader = await trio.leader(among=("n1", "n2"))
        await leader.submit(ClaimClient("c1", leader.node_id))
        with pytest.raises(ClusterUnavailable):
            await intruder.submit(ClaimClient("c2", "n3"))
        assert intruder.state.owners == {}
        assert intruder.status().peers == {"n1": False, "n2": False}
        assert trio.nodes["n1"].state.owners.get("c2") is None


def test_the_cluster_secret_is_required(tmp_path: Path) -> None:
    peers = {"n2": "127.0.0.1:1"}
    for secret in (None, ""):
        with pytest.raises(RaftStartError, match="cluster secret is required"):
            RaftNode("n1", "127.0.0.1:2", peers, tmp_path, secret)
    with pytest.raises(RaftStartError, match="at least 16"):
        RaftNode("n1", "127.0.0.1:2", peers, tmp_path, "short")
    assert raft_password(SECRET) != SECRET
    assert raft_password(SECRET) == raft_password(SECRET) != raft_password(SECRET + "x")


async def test_a_port_in_use_fails_the_start_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        address = f"127.0.0.1:{squatter.getsockname()[1]}"
        node = RaftNode("n1", address, {"n2": "127.0.0.1:9"}, tmp_path, SECRET)
        with pytest.raises(RaftStartError, match=address):
            await node.start()
    with pytest.raises(ClusterUnavailable, match="not running"):
        await node.submit(ClaimClient("c", "n1"))


async def test_status_names_the_leader_and_connected_peers(trio: Trio) -> None:
    leader = await trio.leader()
    await leader.submit(ClaimClient("c", leader.node_id))
    for node in trio.nodes.values():
        # A follower applies the claim on the leader's next heartbeat, not at once.
        await eventually(lambda n=node: n.status().last_applied >= 2, 5, "the claim applied")
        status = node.status()
        assert status.leader == leader.node_id
        assert status.role == ("leader" if node is leader else "follower")
        assert status.has_quorum
        assert set(status.peers) == set(IDS) - {node.node_id}
        await eventually(lambda n=node: all(n.status().peers.values()), 5, "peers connected")
        assert status.commit_index >= status.last_applied >= 2
    await trio.stop("n1")
    assert trio.nodes["n1"].status().role == "stopped"
    with pytest.raises(ClusterUnavailable, match="not running"):
        await trio.nodes["n1"].submit(ClaimClient("x", "n1"))


def test_importing_the_raft_bridge_leaves_socket_inet_ntop_working() -> None:
    """pysyncobj swaps in a Windows-only inet_ntop on import; raft.py must undo it."""
    import socket

    import raftmq.cluster.replication.raft  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"


async def test_a_failing_apply_listener_is_counted_and_reported_never_hidden(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: a KeyError in a listener was logged and forgotten while messages were lost."""
    async with Trio(tmp_path) as trio:
        await trio.start()
        leader = await trio.leader()
        seen: list[Applied] = []

        def broken(applied: Applied) -> None:
            raise KeyError(applied.command)

        leader.add_listener(broken)
        leader.add_listener(seen.append)
        command = ClaimClient("watched", leader.node_id)
        await leader.submit(command)
        await eventually(lambda: any(a.command == command for a in seen), 10, "the next listener")
        assert leader.listener_failures == 1
        assert leader.status().listener_failures == 1
        assert any("BUG: apply listener failed" in r.getMessage() for r in caplog.records)
