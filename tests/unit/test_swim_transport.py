"""The asyncio UDP driver, for real on loopback: two members find each other through a
seed, drop and count what is not theirs, and one leaves."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable

from raftmq.cluster.swim import MemberMeta, Sealer, State, Swim, SwimSettings
from raftmq.cluster.swim.transport import SwimTransport, split_address

SECRET = b"loopback test secret, 32 bytes!!"
FAST = SwimSettings(probe_interval=0.1, probe_timeout=0.05, push_pull_interval=1.0)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def start(node_id: str, seed: int) -> tuple[SwimTransport, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    meta = MemberMeta(node_id, f"127.0.0.1:{port}", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    loop = asyncio.get_running_loop()
    swim = Swim(meta, FAST, random.Random(seed), now=loop.time())
    return await SwimTransport.serve(swim, Sealer(SECRET), sock=sock), sock


def state(transport: SwimTransport, node_id: str) -> State | None:
    record = transport.swim.member(node_id)
    return record.state if record else None


async def test_two_members_on_loopback() -> None:
    a, _ = await start("a", 1)
    b, b_sock = await start("b", 2)
    try:
        b.send(b.swim.join([a.swim.meta.swim_addr]))
        await until(lambda: state(a, "b") is State.ALIVE and state(b, "a") is State.ALIVE)
        await asyncio.sleep(0.5)  # some probing
        assert a.swim.probe_rtts()["b"] < FAST.probe_timeout
        assert a.dropped == {"malformed": 0, "version": 0, "auth": 0, "replay": 0}

        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target = split_address(a.swim.meta.swim_addr)
        replayed = Sealer(SECRET).seal(b"\x01\x03\x00\x00\x00\x01\x01b\x00")
        for datagram in (
            Sealer(b"some other cluster's secret!").seal(b"hello"),
            b"\x07junk",
            b"\x01",
            replayed,
            replayed,
        ):
            stranger.sendto(datagram, target)
        stranger.close()
        await until(lambda: sum(a.dropped.values()) == 4)
        assert a.dropped == {"malformed": 1, "version": 1, "auth": 1, "replay": 1}

        b.send(b.swim.leave(b.now()))
        await until(lambda: state(a, "b") is State.LEFT)
        b.close()
        await asyncio.sleep(1.0)  # nobody probes a member that left
        assert state(a, "b") is State.LEFT
    finally:
        a.close()
        b.close()
        b_sock.close()
