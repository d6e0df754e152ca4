"""What a benchmark run does, decided once in the parent and shipped to the workers.

The parent turns the command line into a ``BenchConfig`` and splits the
clients over the worker processes as ``WorkerSpec``s. Everything here is a
plain frozen dataclass so that it pickles across the ``spawn`` boundary and a
worker needs nothing but its spec to play its part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SCENARIOS = ("pairs", "fanin", "fanout", "latency", "conns", "connect-rate", "ceiling")
MESSAGE_SCENARIOS = frozenset({"pairs", "fanin", "fanout", "latency", "ceiling"})
CONNECTION_SCENARIOS = frozenset({"conns", "connect-rate"})

Address = tuple[str, int]

# Publisher index, sequence number and send time (CLOCK_MONOTONIC ns, which
# every process on the machine shares) open every payload.
PAYLOAD_HEADER = 16
LATENCY_DEFAULT_RATE = 1000.0


def default_processes() -> int:
    """Half the CPUs: the other half is left to the broker under test."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where each kind of client connects.

    Publishers go to ``publish``, subscribers to ``subscribe`` (another node
    of a cluster, for cross-node figures), and the clients of ``conns`` and
    ``connect-rate`` round-robin over ``connect``.
    """

    publish: Address
    subscribe: Address
    connect: tuple[Address, ...]

    @classmethod
    def single(cls, address: Address) -> Addresses:
        return cls(address, address, (address,))

    @property
    def split(self) -> bool:
        """Subscribers on another address than publishers: routes must be waited for."""
        return self.subscribe != self.publish


@dataclass(frozen=True, slots=True)
class BenchConfig:
    scenario: str
    host: str = "127.0.0.1"
    port: int = 1883
    clients: int = 10
    messages: int = 10_000
    qos: int = 0
    payload: int = 64
    protocol: int = 4
    processes: int = field(default_factory=default_processes)
    rate: float = 0.0
    duration: float = 10.0
    timeout: float = 120.0
    inflight: int = 20
    broker_pid: int | None = None
    self_test: bool = False
    # Unset: the same as host / port.
    sub_host: str | None = None
    sub_port: int | None = None
    # Addresses conns and connect-rate spread their clients over; empty: host / port.
    targets: tuple[Address, ...] = ()

    @property
    def addresses(self) -> Addresses:
        """Where the clients of the run connect, as the options say."""
        publish = (self.host, self.port)
        subscribe = (self.sub_host or self.host, self.sub_port or self.port)
        return Addresses(publish, subscribe, self.targets or (publish,))

    @property
    def shape(self) -> str:
        """The client topology: latency and ceiling run the ``pairs`` one."""
        return "pairs" if self.scenario in ("latency", "ceiling") else self.scenario

    @property
    def against_sink(self) -> bool:
        return self.self_test or self.scenario == "ceiling"

    @property
    def total_rate(self) -> float:
        if self.scenario == "latency" and not self.rate:
            return LATENCY_DEFAULT_RATE
        return self.rate

    def problems(self) -> list[str]:
        """Why this configuration cannot run; empty when it can."""
        found = []
        if self.clients < 1:
            found.append("--clients must be at least 1")
        if self.messages < 1:
            found.append("--messages must be at least 1")
        if self.payload < PAYLOAD_HEADER:
            found.append(
                f"--payload must be at least {PAYLOAD_HEADER} bytes (index, sequence, time)"
            )
        if self.processes < 1:
            found.append("--processes must be at least 1")
        if self.rate < 0 or self.duration <= 0 or self.timeout <= 0:
            found.append("--rate must be >= 0, --duration and --timeout > 0")
        if not 1 <= self.inflight <= 65535:
            found.append("--inflight must be between 1 and 65535")
        placed = self.sub_host is not None or self.sub_port is not None
        if placed and self.scenario in CONNECTION_SCENARIOS:
            found.append(f"--sub-host/--sub-port place subscribers; {self.scenario} has none")
        if self.targets and self.scenario not in CONNECTION_SCENARIOS:
            found.append(
                "--target spreads conns and connect-rate clients; message scenarios "
                "take --host/--port and --sub-host/--sub-port"
            )
        if self.against_sink and (placed or self.targets):
            found.append("the self-test sink is the only broker: no --sub-host/--sub-port/--target")
        if self.against_sink:
            # The sink relays raw bytes from a publisher to the subscribers of
            # its topic: it neither acknowledges PUBLISH nor matches wildcards.
            if self.qos:
                found.append("the self-test sink relays QoS 0 only")
            if self.shape == "fanin":
                found.append("the self-test sink has no wildcard subscriptions, so no fanin")
        return found


@dataclass(frozen=True, slots=True)
class PublisherPlan:
    index: int
    topic: str
    count: int


@dataclass(frozen=True, slots=True)
class SubscriberPlan:
    index: int
    topic_filter: str
    # publisher index -> messages expected from it
    sources: dict[int, int]
    # A topic the filter matches, for the route probe before the run.
    probe_topic: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    worker: int
    scenario: str
    run_id: str
    addresses: Addresses
    protocol: int
    qos: int
    payload: int
    inflight: int
    duration: float
    # Per publisher, msgs/s; 0 publishes as fast as flow control allows.
    rate_per_publisher: float
    record_latency: bool
    publishers: tuple[PublisherPlan, ...] = ()
    subscribers: tuple[SubscriberPlan, ...] = ()
    # Client indices for conns and connect-rate.
    connections: tuple[int, ...] = ()


def _split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as integers allow."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def build_specs(cfg: BenchConfig, addresses: Addresses, run_id: str) -> list[WorkerSpec]:
    """One spec per worker process, clients dealt round-robin.

    Publisher i and subscriber i land in the same process; no more processes
    are used than there are clients to give them.
    """
    n = cfg.clients
    prefix = f"bench/{run_id}"
    publishers: list[PublisherPlan] = []
    subscribers: list[SubscriberPlan] = []
    connections: list[int] = []
    rate_per_publisher = 0.0
    if cfg.scenario == "latency":
        counts = _split(max(1, round(cfg.total_rate * cfg.duration)), n)
    else:
        counts = [cfg.messages] * n
    shape = cfg.shape
    if shape == "pairs":
        publishers = [PublisherPlan(i, f"{prefix}/{i}", counts[i]) for i in range(n)]
        subscribers = [
            SubscriberPlan(i, f"{prefix}/{i}", {i: counts[i]}, f"{prefix}/{i}") for i in range(n)
        ]
    elif shape == "fanin":
        publishers = [PublisherPlan(i, f"{prefix}/{i}", counts[i]) for i in range(n)]
        subscribers = [
            SubscriberPlan(0, f"{prefix}/#", {i: counts[i] for i in range(n)}, f"{prefix}/0")
        ]
    elif shape == "fanout":
        publishers = [PublisherPlan(0, f"{prefix}/0", cfg.messages)]
        subscribers = [
            SubscriberPlan(i, f"{prefix}/0", {0: cfg.messages}, f"{prefix}/0") for i in range(n)
        ]
    else:
        connections = list(range(n))
    if publishers and cfg.total_rate:
        rate_per_publisher = cfg.total_rate / len(publishers)

    workers = max(1, min(cfg.processes, max(len(publishers), len(subscribers), len(connections))))
    return [
        WorkerSpec(
            worker=w,
            scenario=cfg.scenario,
            run_id=run_id,
            addresses=addresses,
            protocol=cfg.protocol,
            qos=cfg.qos,
            payload=cfg.payload,
            inflight=cfg.inflight,
            duration=cfg.duration,
            rate_per_publisher=rate_per_publisher,
            record_latency=cfg.scenario == "latency",
            publishers=tuple(p for p in publishers if p.index % workers == w),
            subscribers=tuple(s for s in subscribers if s.index % workers == w),
            connections=tuple(c for c in connections if c % workers == w),
        )
        for w in range(workers)
    ]
