"""One load-generator process: its share of the clients on its own uvloop.

The parent drives every worker through the same phases over a pipe:
the worker connects (and subscribes) its clients and says ``ready``; on
``go`` it runs its part of the scenario, reporting ``Progress`` about twice
a second and at once when its own clients are finished; on ``stop`` it
disconnects and sends a ``WorkerResult``. Splitting setup from ``go`` keeps
connection setup out of every figure, and lets the parent start all
publishers at the same moment whatever the number of processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from time import monotonic_ns
from typing import Any

import uvloop

from raftmq.cluster.tools.bench.client import (
    KEEPALIVE,
    PINGREQ,
    HandshakeError,
    MQTTClient,
    Publisher,
    Subscriber,
    probe_packet,
)
from raftmq.cluster.tools.bench.plan import (
    Address,
    PublisherPlan,
    SubscriberPlan,
    WorkerSpec,
    format_address,
)

PROGRESS_INTERVAL = 0.5
PACE_INTERVAL = 0.001
HANDSHAKE_TIMEOUT = 10.0
# Handshakes in flight per process: more only overflows the broker's listen
# backlog, and a dropped SYN costs a one-second retransmit that would show
# up in the connection figures.
CONNECT_CONCURRENCY = 64
MAX_ERROR_MESSAGES = 5
# Route probes (subscribers on another address than publishers): how often a
# probe goes out again, and how long a route may take to reach the publishers.
PROBE_INTERVAL = 0.02
PROBE_TIMEOUT = 30.0

_FAILURES = (OSError, HandshakeError, TimeoutError)


@dataclass(slots=True)
class Progress:
    worker: int
    connected: int = 0
    published: int = 0
    settled: int = 0  # QoS 1/2 publishes acknowledged or rejected
    delivered: int = 0  # distinct messages received
    cycles: int = 0
    errors: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class PairResult:
    """What one subscriber got from one publisher."""

    subscriber: int
    publisher: int
    expected: int
    received: int
    duplicates: int
    out_of_order: int


@dataclass(slots=True)
class WorkerResult:
    progress: Progress
    pairs: list[PairResult] = field(default_factory=list)
    # publisher index -> messages it sent (written to its socket)
    sent: dict[int, int] = field(default_factory=dict)
    rejected: int = 0
    unexpected: int = 0
    dropped: int = 0
    first_publish_ns: int = 0
    last_publish_ns: int = 0  # 0 unless every publisher of the worker finished
    last_delivery_ns: int = 0
    start_ns: int = 0
    end_ns: int = 0
    # array("q").tobytes(): message latencies, or handshake times for connect-rate
    latencies: bytes = b""
    errors: list[str] = field(default_factory=list)
    # Route probes sent, and how long the last subscriber of the worker waited for one.
    probes_sent: int = 0
    route_wait_ns: int = 0
    # conns / connect-rate: connections or cycles per address ("host:port")
    per_target: dict[str, int] = field(default_factory=dict)


def watch_pipe(
    loop: asyncio.AbstractEventLoop, conn: Connection, callback: Callable[[], None]
) -> None:
    """Call ``callback`` whenever ``conn`` has a message.

    libuv makes a watched descriptor non-blocking, but ``Connection`` sends
    and receives whole messages only on a blocking one: a result bigger than
    the pipe buffer would otherwise fail half-way with BlockingIOError. The
    poll still only wakes the loop when the first byte is there, and the
    peer writes a message in one go, so blocking reads stay short.
    """
    loop.add_reader(conn.fileno(), callback)
    os.set_blocking(conn.fileno(), True)


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C reaches the whole process group; the parent turns it into "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run_worker(spec, conn))


async def _run_worker(spec: WorkerSpec, conn: Connection) -> None:
    # The Worker needs the running loop, so it is made inside it.
    await Worker(spec, conn).main()


class Worker:
    def __init__(self, spec: WorkerSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.publishers: list[Publisher] = []
        self.subscribers: list[Subscriber] = []
        self.idle: list[MQTTClient] = []
        self.latencies: array[int] = array("q")
        self.tasks: list[asyncio.Task[None]] = []
        self.connect_slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.progress = Progress(spec.worker)
        self.errors: list[str] = []
        self.start_ns = 0
        self.end_ns = 0
        self.pending_tasks = 0
        self.timers: list[asyncio.TimerHandle] = []
        self.probe_topics: dict[Subscriber, str] = {}
        self.probes_sent = 0
        self.route_wait_ns = 0
        self.per_target = [0] * len(spec.addresses.connect)

    async def main(self) -> None:
        watch_pipe(self.loop, self.conn, self._on_command)
        try:
            await self._serve()
        finally:
            if not self.conn.closed:
                self.loop.remove_reader(self.conn.fileno())

    async def _serve(self) -> None:
        # "stop" may come before setup is over (--timeout): it wins.
        setup = self.loop.create_task(self._setup())
        first_command = self.loop.create_task(self.commands.get())
        await asyncio.wait({setup, first_command}, return_when=asyncio.FIRST_COMPLETED)
        setup.cancel()
        try:
            await setup
        except asyncio.CancelledError:
            pass
        except _FAILURES as exc:
            first_command.cancel()
            self._send("error", f"worker {self.spec.worker}: setup failed: {exc}")
            await self._close_all()
            return
        if not first_command.done():
            self._send("ready", None)
        if await first_command == "go":
            self.start_ns = monotonic_ns()
            self._every(PROGRESS_INTERVAL, self._report)
            self._every(KEEPALIVE / 2, self._ping)
            self._run()
            await self.commands.get()
        for timer in self.timers:
            timer.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._close_all()
        self._send("result", self._result())

    # -- plumbing ------------------------------------------------------------------

    def _on_command(self) -> None:
        try:
            command = self.conn.recv()
        except EOFError:
            # The parent is gone: stop, nobody is left to tell.
            self.loop.remove_reader(self.conn.fileno())
            self.conn.close()
            command = "stop"
        self.commands.put_nowait(command)

    def _send(self, kind: str, body: object) -> None:
        # OSError: the parent is gone; the run ends on the next command read.
        with contextlib.suppress(OSError):
            self.conn.send((kind, body))

    def _every(self, seconds: float, action: Callable[[], None]) -> None:
        def tick() -> None:
            action()
            self.timers.append(self.loop.call_later(seconds, tick))

        self.timers.append(self.loop.call_later(seconds, tick))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(self.loop.create_task(coro))

    async def _open(self, factory: Callable[[], MQTTClient], address: Address) -> MQTTClient:
        async with self.connect_slots:
            _, client = await self.loop.create_connection(factory, *address)
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await client.handshake()
            except TimeoutError:
                client.close()
                raise HandshakeError(
                    f"{client.client_id}: no CONNACK within {HANDSHAKE_TIMEOUT:g} s"
                ) from None
            except HandshakeError:
                client.close()
                raise
        return client

    def _note_error(self, message: str) -> None:
        self.progress.errors += 1
        if len(self.errors) < MAX_ERROR_MESSAGES:
            self.errors.append(message)

    # -- phases --------------------------------------------------------------------

    async def _setup(self) -> None:
        """Connect the publishers and subscribe the subscribers of this worker.

        With subscribers on another address, wait until the routes reached the publishers.
        """
        spec = self.spec
        prefix = f"bench-{spec.run_id}"
        latencies = self.latencies if spec.record_latency else None

        async def subscriber(plan: SubscriberPlan) -> None:
            client = await self._open(
                lambda: Subscriber(
                    f"{prefix}-s{plan.index}",
                    spec.protocol,
                    plan.index,
                    plan.sources,
                    latencies,
                    self._check_done,
                ),
                spec.addresses.subscribe,
            )
            assert isinstance(client, Subscriber)
            self.subscribers.append(client)
            await client.subscribe(plan.topic_filter, spec.qos)
            self.probe_topics[client] = plan.probe_topic

        async def publisher(plan: PublisherPlan) -> None:
            client = await self._open(
                lambda: Publisher(
                    f"{prefix}-p{plan.index}",
                    spec.protocol,
                    plan.index,
                    plan.topic,
                    plan.count,
                    spec.qos,
                    spec.payload,
                    spec.inflight,
                    self._check_done,
                ),
                spec.addresses.publish,
            )
            assert isinstance(client, Publisher)
            self.publishers.append(client)

        try:
            async with asyncio.TaskGroup() as group:
                for subscriber_plan in spec.subscribers:
                    group.create_task(subscriber(subscriber_plan))
                for publisher_plan in spec.publishers:
                    group.create_task(publisher(publisher_plan))
        except* _FAILURES as failures:
            raise failures.exceptions[0] from None
        if spec.addresses.split and self.subscribers:
            await self._probe_routes()

    async def _probe_routes(self) -> None:
        """Publish probes where the publishers are until each subscriber here has one.

        SUBACK says the subscriber's own node has the subscription; in a
        cluster the publishers' node learns the route when it applies the
        Raft entry, a moment later, and a message published before that
        finds no route. The timed run starts once every subscriber got a
        probe published the publishers' way. Probes are QoS 0 and sent
        again until seen; one arriving late is still counted nowhere.
        """
        spec = self.spec
        publish, subscribe = spec.addresses.publish, spec.addresses.subscribe
        prober = await self._open(
            lambda: MQTTClient(f"bench-{spec.run_id}-probe{spec.worker}", spec.protocol), publish
        )
        began = monotonic_ns()
        deadline = began + int(PROBE_TIMEOUT * 1e9)
        try:
            while waiting := [s for s in self.subscribers if not s.probed_ns]:
                topics = dict.fromkeys(self.probe_topics[s] for s in waiting)
                if monotonic_ns() > deadline:
                    raise HandshakeError(
                        f"{waiting[0].client_id} (on {format_address(subscribe)}) got no probe "
                        f"published on {next(iter(topics))!r} at {format_address(publish)} "
                        f"within {PROBE_TIMEOUT:g} s; {len(waiting)} subscriber(s) still waiting"
                    )
                if prober.lost.done():
                    raise HandshakeError(prober.error or f"{prober.client_id}: connection closed")
                assert prober.transport is not None
                prober.transport.write(b"".join(probe_packet(t, spec.protocol) for t in topics))
                self.probes_sent += len(topics)
                await asyncio.sleep(PROBE_INTERVAL)
            self.route_wait_ns = max(s.probed_ns for s in self.subscribers) - began
        finally:
            prober.close()
            await asyncio.wait([prober.lost], timeout=2.0)

    def _run(self) -> None:
        spec = self.spec
        if spec.scenario == "conns":
            self.pending_tasks = len(spec.connections)
            for index in spec.connections:
                self._spawn(self._hold_connection(index))
        elif spec.scenario == "connect-rate":
            self.pending_tasks = len(spec.connections)
            deadline = self.start_ns + int(spec.duration * 1e9)
            for index in spec.connections:
                self._spawn(self._cycle_connections(index, deadline))
        elif spec.rate_per_publisher:
            for publisher in self.publishers:
                publisher.paced = True
            self._pace()
        else:
            for publisher in self.publishers:
                publisher.start(publisher.count)
        self._check_done()

    def _pace(self) -> None:
        """Release what each publisher is due by now, every millisecond.

        Due counts come from the clock, not from the number of ticks, so a
        late timer sends a larger step instead of lowering the rate.
        """
        elapsed = (monotonic_ns() - self.start_ns) / 1e9
        due = 1 + int(elapsed * self.spec.rate_per_publisher)
        for publisher in self.publishers:
            publisher.start(due)
        if any(p.allowed < p.count for p in self.publishers):
            self.timers.append(self.loop.call_later(PACE_INTERVAL, self._pace))

    async def _hold_connection(self, index: int) -> None:
        """Open one idle connection for ``conns`` and keep it until ``stop``."""
        target = index % len(self.per_target)
        try:
            client = await self._open(
                lambda: MQTTClient(f"bench-{self.spec.run_id}-c{index}", self.spec.protocol),
                self.spec.addresses.connect[target],
            )
        except _FAILURES as exc:
            self._note_error(f"connection {index}: {exc}")
        else:
            self.idle.append(client)
            self.progress.connected += 1
            self.per_target[target] += 1
            self.end_ns = monotonic_ns()
        self.pending_tasks -= 1
        self._check_done()

    async def _cycle_connections(self, index: int, deadline: int) -> None:
        """CONNECT, CONNACK, DISCONNECT on a fresh TCP connection, again until the deadline.

        Each cycle goes to the next of the connect addresses, so a client
        visits every node of a cluster in turn.
        """
        spec = self.spec
        targets = spec.addresses.connect
        cycle = 0
        while monotonic_ns() < deadline:
            client_id = f"bench-{spec.run_id}-r{index}-{cycle}"
            target = (index + cycle) % len(targets)
            cycle += 1
            began = monotonic_ns()
            try:
                client = await self._open(
                    lambda: MQTTClient(client_id, spec.protocol),  # noqa: B023
                    targets[target],
                )
            except _FAILURES as exc:
                self._note_error(f"cycle {client_id} at {format_address(targets[target])}: {exc}")
                continue
            client.close()
            self.end_ns = monotonic_ns()
            self.latencies.append(self.end_ns - began)
            self.progress.cycles += 1
            self.per_target[target] += 1
        self.pending_tasks -= 1
        self._check_done()

    async def _close_all(self) -> None:
        clients: list[MQTTClient] = [*self.publishers, *self.subscribers, *self.idle]
        for client in clients:
            client.close()
        if clients:
            # Let the transports flush their DISCONNECT before the process exits.
            await asyncio.wait([client.lost for client in clients], timeout=2.0)

    # -- reporting -----------------------------------------------------------------

    def _ping(self) -> None:
        for client in (*self.publishers, *self.subscribers, *self.idle):
            if client.transport is not None and not client.transport.is_closing():
                client.transport.write(PINGREQ)

    def _check_done(self) -> None:
        """Report at once when this worker's clients are through, so the parent stops promptly."""
        if self.start_ns and not self.progress.done and self._finished():
            self._report(done=True)

    def _finished(self) -> bool:
        if self.spec.scenario in ("conns", "connect-rate"):
            return self.pending_tasks == 0
        return all(p.finished for p in self.publishers) and all(
            s.finished for s in self.subscribers
        )

    def _report(self, done: bool = False) -> None:
        progress = self.progress
        progress.done = progress.done or done
        progress.published = sum(p.sent for p in self.publishers)
        progress.settled = sum(p.acked + p.rejected for p in self.publishers)
        progress.delivered = sum(s.unique for s in self.subscribers)
        self._send("progress", progress)

    def _result(self) -> WorkerResult:
        self._report()
        pairs = [
            PairResult(
                s.index,
                pub,
                expected,
                s.received(pub),
                s.duplicates[pub],
                s.out_of_order[pub],
            )
            for s in self.subscribers
            for pub, expected in s.sources.items()
        ]
        # A run stopped during setup still owes the messages of the subscribers not yet there.
        present = {s.index for s in self.subscribers}
        pairs += [
            PairResult(plan.index, pub, expected, 0, 0, 0)
            for plan in self.spec.subscribers
            if plan.index not in present
            for pub, expected in plan.sources.items()
        ]
        clients: list[MQTTClient] = [*self.publishers, *self.subscribers, *self.idle]
        errors = self.errors + [c.error for c in clients if c.error is not None]
        return WorkerResult(
            progress=self.progress,
            pairs=pairs,
            sent={p.index: p.sent for p in self.publishers},
            rejected=sum(p.rejected for p in self.publishers),
            unexpected=sum(s.unexpected for s in self.subscribers),
            dropped=sum(c.dropped for c in clients),
            first_publish_ns=min((p.first_ns for p in self.publishers if p.first_ns), default=0),
            last_publish_ns=max((p.done_ns for p in self.publishers), default=0)
            if all(p.finished for p in self.publishers)
            else 0,
            last_delivery_ns=max((s.last_ns for s in self.subscribers), default=0),
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            latencies=self.latencies.tobytes(),
            errors=errors[:MAX_ERROR_MESSAGES],
            probes_sent=self.probes_sent,
            route_wait_ns=self.route_wait_ns,
            per_target={
                format_address(address): count
                for address, count in zip(self.spec.addresses.connect, self.per_target, strict=True)
            },
        )
