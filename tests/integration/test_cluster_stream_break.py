"""A forwarding stream broken mid-burst, with no loss and no duplicate, on three real nodes.

n1 reaches n2's gRPC port through a TCP proxy in this process (its Raft
traffic goes direct), so the test can break the n1 → n2 forwarding stream at
any moment without touching either node: ``cut()`` aborts every connection
the proxy carries, both ways, dropping whatever was in flight in it, and the
proxy keeps accepting, so n1 redials. A QoS 1 burst from a publisher on n1 to
a subscriber on n2 is cut twice while messages are in flight; n1 must resend
what n2 had not acknowledged and n2 must drop what it already handled.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from clusterkit import NodeClients, start_cluster, subscribed, wait_for_route
from rawmqtt import PUBACK, PUBLISH, RawClient, ack, publish

if TYPE_CHECKING:
    from conftest import RunningBroker

pytestmark = [pytest.mark.timeout(120), pytest.mark.raftmq_only]

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
BURST = 2000
WINDOW = 50
"""QoS 1 PUBLISHes the publisher keeps unacknowledged, below the nodes' default
receive_maximum (100)."""
CUTS = ((BURST // 3, False), (2 * BURST // 3, True))
"""(PUBACKs received, whether n2's replies are held first) for each cut. The first cut
breaks the stream wherever it is, dropping frames in flight, which n1 must resend. The
second lets n2 handle frames whose acknowledgement then never reaches n1, so n1 resends
frames n2 must drop."""
ACK_TIMEOUT = 20.0
"""For the next PUBACK: n1 notices the break and redials with backoff (at most
reconnect_max, 2 s) on a busy machine, far below its unreachable_timeout (10 s)
of no stream, after which it would answer "server unavailable"."""
DELIVERY_TIMEOUT = 60.0
TOPIC = "burst/seq"
QUIET = 0.5
"""How long nothing must move for n1 to count as stuck on an acknowledgement held back."""

T = TypeVar("T")


class CuttableProxy:
    """A TCP forwarder on loopback, run by an asyncio loop in a thread of its own."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self.bridged = 0
        """Connections accepted and joined to the target (a refused target does not count)."""
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._sessions: set[asyncio.Task[None]] = set()
        self._replies = asyncio.Event()
        """Clear while data from the target is held back (``hold_replies``)."""
        self._replies.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"proxy to {target}", daemon=True
        )
        self._thread.start()
        try:
            self._server = self._call(self._listen())
        except BaseException:
            self._stop_loop()
            raise
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._sessions.add(me)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._sessions.discard(me)
            return
        self.bridged += 1
        pair = (writer, up_writer)
        self._live.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, None)),
            asyncio.create_task(self._pump(up_reader, writer, self._replies)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._abort(pair)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._sessions.discard(me)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        while data := await source.read(65536):
            if gate is not None:
                await gate.wait()
            if sink.transport.is_closing():
                return
            sink.write(data)
            await sink.drain()

    def _abort(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self._live.discard(pair)
        for writer in pair:
            writer.transport.abort()

    def hold_replies(self) -> None:
        """Stop passing on what the target sends (connections stay open) until ``cut``."""

        async def hold() -> None:
            self._replies.clear()

        self._call(hold())

    def cut(self) -> int:
        """Abort every connection carried now, both ways, dropping what is held or in
        flight in them; new connections are carried as before. How many were aborted."""

        async def cut_all() -> int:
            live = list(self._live)
            for pair in live:
                self._abort(pair)
            self._replies.set()
            return len(live)

        return self._call(cut_all())

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            for pair in list(self._live):
                self._abort(pair)
            self._replies.set()
            if self._sessions:  # each ends once its pumps see their connections aborted
                await asyncio.wait(list(self._sessions), timeout=5)

        try:
            self._call(shut())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


@pytest.fixture
def proxies() -> Iterator[Callable[[str], CuttableProxy]]:
    """Start proxies to given addresses; every one is closed after the test."""
    started: list[CuttableProxy] = []

    def start(target: str) -> CuttableProxy:
        proxy = CuttableProxy(target)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.close()


class Subscriber(threading.Thread):
    """Reads a subscriber's PUBLISHes in a thread of its own and PUBACKs each at once,
    so that the publisher's loop never waits on it."""

    def __init__(self, client: RawClient, count: int) -> None:
        super().__init__(name="subscriber", daemon=True)
        self.client = client
        self.count = count
        self.payloads: list[bytes] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        try:
            while len(self.payloads) < self.count and not self.done.is_set():
                try:
                    packet = self.client.read(timeout=0.2)
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
                    continue
                assert packet.type == PUBLISH, f"expected PUBLISH, got {packet}"
                self.payloads.append(packet.payload)
                if packet.qos:
                    assert packet.packet_id is not None
                    self.client.send(ack(PUBACK, packet.packet_id))
        except BaseException as exc:  # reported by the test's thread
            self.error = exc
        finally:
            self.done.set()


class Burst:
    """The publisher's side: QoS 1 PUBLISHes of numbered payloads on one topic, at most
    ``WINDOW`` of them unacknowledged."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.sent = 0
        self.reasons: dict[int, int] = {}
        """PUBACK reason code by packet id."""

    @property
    def in_flight(self) -> int:
        return self.sent - len(self.reasons)

    def fill(self) -> None:
        while self.sent < BURST and self.in_flight < WINDOW:
            self.client.send(publish(TOPIC, payload(self.sent), qos=1, packet_id=self.sent + 1))
            self.sent += 1

    def take_puback(self, timeout: float) -> bool:
        """Collect the next PUBACK; False if none came within ``timeout``."""
        try:
            puback = self.client.expect(PUBACK, timeout=timeout)
        except TimeoutError:
            return False
        assert puback.packet_id is not None and puback.reason_code is not None
        assert puback.packet_id not in self.reasons, f"second PUBACK: {puback}"
        self.reasons[puback.packet_id] = puback.reason_code
        return True

    def run_until(self, acked: int) -> None:
        """Publish and collect PUBACKs until ``acked`` have come."""
        while len(self.reasons) < acked:
            self.fill()
            if not self.take_puback(ACK_TIMEOUT):
                raise AssertionError(
                    f"no PUBACK in {ACK_TIMEOUT} s; {len(self.reasons)} of {self.sent} so far"
                )


def stuck_on_held_ack(burst: Burst, reader: Subscriber) -> None:
    """Until n1 waits for an acknowledgement that the proxy holds back.

    It shows as the subscriber having more messages than the publisher has
    PUBACKs, with neither count moving: n2 handled those messages, n1 waits for
    their acknowledgement, and will resend their frames.
    """
    deadline = time.monotonic() + ACK_TIMEOUT
    seen: tuple[int, int] | None = None
    since = time.monotonic()
    while True:
        burst.take_puback(0.05)
        counts = (len(reader.payloads), len(burst.reasons))
        now = time.monotonic()
        if counts != seen:
            seen, since = counts, now
        elif counts[0] > counts[1] and now - since >= QUIET:
            return
        assert now < deadline and not reader.done.is_set(), (
            f"(delivered, PUBACKed) {counts}: never more delivered and still for {QUIET} s"
        )


def stream_status(node: RunningBroker, peer_id: str) -> dict[str, Any]:
    """``raftmq cluster status --json`` of ``node``: its forwarding stream with ``peer_id``."""
    config = str(node.data_dir.parent / "raftmq.toml")
    done = subprocess.run(
        [RAFTMQ, "cluster", "status", "--json", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stream: dict[str, Any] = json.loads(done.stdout)["streams"][peer_id]
    return stream


def payload(seq: int) -> bytes:
    return f"{seq:05d}".encode()


def test_stream_cut_twice_mid_burst_loses_and_duplicates_nothing(
    broker_factory: Callable[..., RunningBroker],
    node_clients: NodeClients,
    proxies: Callable[[str], CuttableProxy],
) -> None:
    proxy: CuttableProxy | None = None

    def n1_to_n2_via_proxy(node_id: str, peer_id: str, address: str) -> str:
        nonlocal proxy
        if (node_id, peer_id) != ("n1", "n2"):
            return address
        proxy = proxies(address)
        return proxy.address

    # A session queue as long as the burst: should the subscriber fall behind on a busy
    # machine, the default 1000-message limit must not drop anything instead.
    cluster = start_cluster(
        broker_factory, grpc_via=n1_to_n2_via_proxy, max_queued_messages=2 * BURST
    )
    assert proxy is not None
    n1, n2 = cluster["n1"], cluster["n2"]

    subscriber = node_clients(n2, "burst-sub")
    subscribed(subscriber, "burst/#", qos=1)
    publisher = node_clients(n1, "burst-pub")
    wait_for_route(publisher, subscriber, TOPIC)
    n1_before, n2_before = stream_status(n1, "n2"), stream_status(n2, "n1")
    assert n1_before["address"] == proxy.address, n1_before
    bridged_before = proxy.bridged

    reader = Subscriber(subscriber, BURST)
    reader.start()
    burst = Burst(publisher)
    cuts: list[tuple[int, int, int]] = []  # (PUBACKs, PUBLISHes unacknowledged, aborted)
    try:
        for acked, hold in CUTS:
            burst.run_until(acked)
            if hold:
                proxy.hold_replies()
                stuck_on_held_ack(burst, reader)
            cuts.append((len(burst.reasons), burst.in_flight, proxy.cut()))
        burst.run_until(BURST)
        reader.join(timeout=DELIVERY_TIMEOUT)
    finally:
        reader.done.set()
        reader.join(timeout=5)
    assert reader.error is None, f"subscriber: {reader.error!r}"

    refused = {pid: reason for pid, reason in burst.reasons.items() if reason}
    assert not refused, f"PUBLISHes (packet id: reason) not accepted: {refused}"
    expected = [payload(seq) for seq in range(BURST)]
    got = reader.payloads
    if got != expected:
        repeated = sorted(p for p, n in Counter(got).items() if n > 1)
        missing = sorted(set(expected) - set(got))
        first_off = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None
        )
        raise AssertionError(
            f"{len(got)} of {BURST} delivered; missing {missing[:20]} ({len(missing)}), "
            f"repeated {repeated[:20]} ({len(repeated)}), first out of order at {first_off}; "
            f"cuts {cuts}"
        )
    subscriber.assert_silent(1.0)  # nothing beyond the burst: no late duplicate

    # Each cut fell mid-burst and broke a live stream, and n1 dialed again after each.
    assert all(in_flight and aborted for _, in_flight, aborted in cuts), cuts
    assert proxy.bridged >= bridged_before + len(CUTS), (bridged_before, proxy.bridged)
    # n1 resent what n2 had not acknowledged; n2 dropped what it had already handled.
    n1_after, n2_after = stream_status(n1, "n2"), stream_status(n2, "n1")
    assert n1_after["resends"] > n1_before["resends"], (n1_before, n1_after, cuts)
    assert n2_after["duplicates"] > n2_before["duplicates"], (n2_before, n2_after, cuts)
    assert n1_after["connected"] and not n1_after["dropped"], n1_after
