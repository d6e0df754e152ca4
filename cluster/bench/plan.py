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

# Publisher index, sequence number and send time (CLOCK_MONOTONIC ns, which
# every process on the machine shares) open every payload.
PAYLOAD_HEADER = 16
LATENCY_DEFAULT_RATE = 1000.0


def default_processes() -> int:
    """Half the CPUs: the other half is left to the broker under test."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


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


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    worker: int
    scenario: str
    run_id: str
    host: str
    port: int
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


def build_specs(cfg: BenchConfig, host: str, port: int, run_id: str) -> list[WorkerSpec]:
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
        subscribers = [SubscriberPlan(i, f"{prefix}/{i}", {i: counts[i]}) for i in range(n)]
    elif shape == "fanin":
        publishers = [PublisherPlan(i, f"{prefix}/{i}", counts[i]) for i in range(n)]
        subscribers = [SubscriberPlan(0, f"{prefix}/#", {i: counts[i] for i in range(n)})]
    elif shape == "fanout":
        publishers = [PublisherPlan(0, f"{prefix}/0", cfg.messages)]
        subscribers = [SubscriberPlan(i, f"{prefix}/0", {0: cfg.messages}) for i in range(n)]
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
            host=host,
            port=port,
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
