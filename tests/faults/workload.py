"""The fault suite's workload: MQTT clients whose every operation lands in the history.

Actors, one thread each, all driving their own paho client (recorded_client.py):
- publishers at QoS 1 and QoS 2, started on different nodes, one publish outstanding at a
  time; each payload is JSON ``{"id": "<publisher>:<seq>", "publisher", "seq"}``. When their
  node fails them (a refused or failed connect, a dropped connection, an acknowledgement
  that never came) they reconnect to another node, with a fresh client and a new session;
- retained writers: publishers of retained QoS 1 messages to their own topics, which
  nobody subscribes to; ``read_retained()`` compares them across nodes after the heal;
- persistent subscribers, MQTT 5 (clean start 0, an hour of session expiry) and 3.1.1
  (clean session 0), which now and then move to the same or another node with a graceful
  DISCONNECT and record session present; they subscribe again only when it is 0;
- clean subscribers, which stay where they are until their connection drops;
- client-id takeover probes: one client id connected on one node, then again on another
  while the first connection is still up, both recording what they receive.
Rates stay modest (the machine's 2 cores also run the nodes): each publisher waits
``publish_interval`` after each acknowledgement.

``stop()`` ends the load and the moves; ``drain()`` then reconnects every persistent
subscriber and reads until no delivery came for a quiet period, records a "drain" event
(where the lost checker's clean-subscriber rule ends) and closes the subscribers.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from history import History
from recorded_client import ConnNumbers, RecordedClient

DATA_TOPICS = ("faults/data/a", "faults/data/b")
RETAINED_TOPICS = tuple(f"faults/retained/{k}" for k in range(4))
RETAINED_FILTER = "faults/retained/#"
SESSION_EXPIRY = 3600
"""Outlasts every run, so a persistent session's loss is never its expiry."""
RECONNECT_PAUSE = 0.5


@dataclass(frozen=True)
class WorkloadConfig:
    """How many actors of each kind, and how fast they go."""

    publishers_per_qos: int = 2
    publish_interval: float = 0.1
    retained_writers: int = 1
    retained_interval: float = 0.5
    persistent_v5: int = 2
    persistent_v311: int = 2
    clean_subscribers: int = 2
    takeover_probes: int = 1
    move_after: tuple[float, float] | None = (3.0, 8.0)
    """A persistent subscriber moves after a pause drawn from this range; None: never."""
    probe_overlap: float = 3.0
    """Seconds a probe keeps both connections of its client id running."""
    keepalive: int = 5
    timeout: float = 10.0
    """Bound on each wait for a CONNACK, SUBACK or acknowledgement."""
    quiet: float = 3.0
    """The drain ends after this long without a delivery."""


class Workload:
    """Runs the actors against ``addresses`` (node id -> MQTT host and port)."""

    def __init__(
        self,
        addresses: dict[str, tuple[str, int]],
        history: History,
        rng: random.Random,
        config: WorkloadConfig | None = None,
    ) -> None:
        self.addresses = dict(addresses)
        self.nodes = sorted(addresses)
        self.history = history
        self.rng = rng
        self.config = config or WorkloadConfig()
        self.run_tag = f"{rng.getrandbits(24):06x}"
        """In every client id, so runs against one cluster never share sessions."""
        self.conns = ConnNumbers()
        self.last_delivery = time.monotonic()
        self._load_stop = threading.Event()
        self.moves_stop = threading.Event()
        self.subscribers_stop = threading.Event()
        self._load: list[threading.Thread] = []
        self._subscribers: list[_Subscriber] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        count = len(self.nodes)
        for i in range(c.publishers_per_qos):
            for qos in (1, 2):
                home = self.nodes[(2 * i + qos - 1) % count]
                self._spawn(f"pub-q{qos}-{i}", self._publisher, home, qos, DATA_TOPICS, False)
        for i in range(c.retained_writers):
            home = self.nodes[(i + 1) % count]
            self._spawn(f"retain-{i}", self._publisher, home, 1, RETAINED_TOPICS, True)
        kinds = ["v5"] * c.persistent_v5 + ["v311"] * c.persistent_v311
        kinds += ["clean"] * c.clean_subscribers
        for i, kind in enumerate(kinds):
            subscriber = _Subscriber(self, f"sub-{kind}-{i}", kind, self.nodes[i % count])
            subscriber.thread = threading.Thread(target=subscriber.run, name=subscriber.name)
            self._subscribers.append(subscriber)
            subscriber.thread.start()
        for i in range(c.takeover_probes):
            self._spawn(f"probe-{i}", self._probe)

    def stop(self) -> None:
        """End the load (publishers, writers, probes) and the subscribers' moves; the
        subscribers keep reading."""
        self._load_stop.set()
        self.moves_stop.set()
        for thread in self._load:
            thread.join(self.config.timeout * 2 + 5)

    def drain(self, timeout: float) -> None:
        """Reconnect every persistent subscriber, read until quiet (bounded by
        ``timeout``), record the drain's end and close the subscribers."""
        self.stop()
        deadline = time.monotonic() + timeout
        persistent = [s for s in self._subscribers if s.kind != "clean"]
        for subscriber in persistent:
            subscriber.reconnected.clear()
            subscriber.reconnect.set()
        for subscriber in persistent:
            subscriber.reconnected.wait(max(0.0, deadline - time.monotonic()))
        self.last_delivery = max(self.last_delivery, time.monotonic())
        while time.monotonic() < deadline:
            quiet_for = time.monotonic() - self.last_delivery
            if quiet_for >= self.config.quiet:
                break
            time.sleep(min(0.2, self.config.quiet - quiet_for))
        reconnected = sum(s.reconnected.is_set() for s in persistent)
        value = {"quiet": self.config.quiet, "reconnected": reconnected, "of": len(persistent)}
        self.history.event("workload", "drain", value)
        self.close()

    def close(self) -> None:
        """Stop every actor (idempotent; also the way out of a failed run)."""
        self._load_stop.set()
        self.moves_stop.set()
        self.subscribers_stop.set()
        for thread in self._load:
            thread.join(self.config.timeout * 2 + 5)
        for subscriber in self._subscribers:
            if subscriber.thread is not None:
                subscriber.thread.join(self.config.timeout * 2 + 5)

    def read_retained(self) -> None:
        """Record, per node, the retained message of every topic the writers used."""
        for node in self.nodes:
            found: dict[str, str] = {}

            def keep(msg: mqtt.MQTTMessage, found: dict[str, str] = found) -> None:
                if msg.retain:
                    found[msg.topic] = msg.payload.decode("utf-8", "replace")

            client = self.client_for(f"read-retained-{node}", f"reader-{node}", on_delivery=keep)
            if client.connect(node, *self.addresses[node]) and client.subscribe(RETAINED_FILTER, 1):
                seen = -1
                while seen < len(found) < len(RETAINED_TOPICS):
                    seen = len(found)
                    client.pump(1.0)
                for topic in RETAINED_TOPICS:
                    value = {"node": node, "topic": topic, "payload": found.get(topic)}
                    self.history.event(client.process, "read-retained", value)
            client.disconnect()

    # -- actors --------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=(name, *args), name=name)
        self._load.append(thread)
        thread.start()

    def client_for(
        self,
        process: str,
        name: str,
        *,
        protocol: int = 5,
        clean_start: bool = True,
        on_delivery: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> RecordedClient:
        return RecordedClient(
            self.history,
            process,
            f"{name}-{self.run_tag}",
            self.conns,
            protocol=protocol,
            clean_start=clean_start,
            session_expiry=0 if clean_start else SESSION_EXPIRY,
            keepalive=self.config.keepalive,
            timeout=self.config.timeout,
            on_delivery=on_delivery,
        )

    def note_delivery(self, _msg: mqtt.MQTTMessage) -> None:
        """Every delivery's hook: the drain waits for these to stop."""
        self.last_delivery = time.monotonic()

    def other_node(self, rng: random.Random, node: str) -> str:
        others = [n for n in self.nodes if n != node]
        return rng.choice(others) if others else node

    def _publisher(
        self, name: str, home: str, qos: int, topics: tuple[str, ...], retain: bool
    ) -> None:
        """Publish ``name:seq`` messages until stopped, moving to another node whenever
        this one fails; each connection is a fresh client with a clean session."""
        rng = random.Random(f"{self.run_tag}-{name}")
        interval = self.config.retained_interval if retain else self.config.publish_interval
        node, seq = home, 0
        while not self._load_stop.is_set():
            client = self.client_for(name, name)
            if not client.connect(node, *self.addresses[node]):
                node = self.other_node(rng, node)
                self._load_stop.wait(RECONNECT_PAUSE)
                continue
            while client.up and not self._load_stop.is_set():
                seq += 1
                if client.publish(rng.choice(topics), name, seq, qos, retain=retain) == "info":
                    break
                client.pump(interval)
            client.disconnect()
            node = self.other_node(rng, node)

    def _probe(self, name: str) -> None:
        """Connect a client id on one node, then on another while the first is still up;
        both record what they get, and the split-brain checker judges the overlap."""
        rng = random.Random(f"{self.run_tag}-{name}")
        round_ = 0
        while not self._load_stop.is_set():
            round_ += 1
            first_node = rng.choice(self.nodes)
            second_node = self.other_node(rng, first_node)
            client_id = f"{name}-{round_}"
            first = self.client_for(f"{name}-a", client_id, on_delivery=self.note_delivery)
            second = self.client_for(f"{name}-b", client_id, on_delivery=self.note_delivery)
            if first.connect(first_node, *self.addresses[first_node]):
                first.subscribe(DATA_TOPICS[0], 1)
                first.pump(1.0)
                if second.connect(second_node, *self.addresses[second_node]):
                    second.subscribe(DATA_TOPICS[0], 1)
                deadline = time.monotonic() + self.config.probe_overlap
                while time.monotonic() < deadline:
                    first.pump(0.05)
                    second.pump(0.05)
            second.disconnect()
            first.disconnect()
            self._load_stop.wait(1.0)


class _Subscriber:
    """A subscriber's loop: connect, subscribe when the session is new, read, move."""

    def __init__(self, workload: Workload, name: str, kind: str, home: str) -> None:
        self.workload = workload
        self.name = name
        self.kind = kind
        self.node = home
        self.rng = random.Random(f"{workload.run_tag}-{name}")
        self.reconnect = threading.Event()
        """Set by the drain: reconnect now (persistent subscribers)."""
        self.reconnected = threading.Event()
        self.thread: threading.Thread | None = None
        self.needs_subscribe = True
        """Until a SUBACK granted the filter in this session: a session that came back
        present after a failed SUBSCRIBE still has nothing to deliver."""
        persistent = kind != "clean"
        self.topic_filter = "faults/data/#"
        self.qos = 2 if persistent else 1
        self.client = workload.client_for(
            name,
            name,
            protocol=4 if kind == "v311" else 5,
            clean_start=not persistent,
            on_delivery=workload.note_delivery,
        )

    def run(self) -> None:
        workload = self.workload
        stop = workload.subscribers_stop
        next_move = self._next_move()
        while not stop.is_set():
            if not self.client.up and not self._connect():
                self.node = workload.other_node(self.rng, self.node)
                stop.wait(RECONNECT_PAUSE)
                continue
            self.client.pump(0.1)
            moving = not workload.moves_stop.is_set() and time.monotonic() > next_move
            if self.reconnect.is_set() or moving:
                self.client.disconnect()
                self.node = self.rng.choice(workload.nodes)
                next_move = self._next_move()
            elif not self.client.up:
                self.node = workload.other_node(self.rng, self.node)
        self.client.disconnect()

    def _connect(self) -> bool:
        draining = self.reconnect.is_set()
        if not self.client.connect(self.node, *self.workload.addresses[self.node]):
            return False
        if self.kind == "clean" or not self.client.session_present:
            self.needs_subscribe = True
        if self.needs_subscribe:
            if not self.client.subscribe(self.topic_filter, self.qos):
                self.client.disconnect()
                return False
            self.needs_subscribe = False
        if draining:
            self.reconnect.clear()
            self.reconnected.set()
        return True

    def _next_move(self) -> float:
        move_after = self.workload.config.move_after
        if self.kind == "clean" or move_after is None or self.workload.moves_stop.is_set():
            return float("inf")
        return time.monotonic() + self.rng.uniform(*move_after)
