"""paho-mqtt wrapped for tests: every call blocks, boundedly, until the broker answered.

paho runs its network loop in a thread and reports through callbacks. Tests read
better the other way round: do something, then wait (never forever) for the
broker's answer. ``MqttClient`` turns paho's callbacks into a condition variable
and a message queue; ``ClientPool`` makes sure every client a test started is
disconnected and its network thread stopped, whatever the test's outcome.

Nothing here knows about raftmq: the same helpers drive Mosquitto when
``RAFTMQ_TEST_BROKER=mosquitto``, which is how the tests are validated.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 5.0
"""Default bound for waiting on the broker; generous for loopback, short enough to fail fast."""

Transport = Literal["tcp", "websockets"]
SubscriptionSpec = str | Sequence[tuple[str, int | SubscribeOptions]]


class BrokerAddress(Protocol):
    """What the clients need from a running broker (conftest's ``RunningBroker`` fits)."""

    host: str
    port: int
    ws_port: int


def unique(prefix: str) -> str:
    """A fresh id or topic level, so tests never see each other's sessions or messages."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Message:
    """One PUBLISH as the application saw it, with the time it arrived for timing checks."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Properties | None
    received_at: float


@dataclass(frozen=True)
class ConnAck:
    """The broker's CONNACK.

    For MQTT 3.1.1 paho maps the return code onto the MQTT 5 reason code with the
    same meaning (e.g. 2 "identifier rejected" becomes 0x85), so ``reason_code``
    is always an MQTT 5 value; 0 means accepted in both versions.
    """

    session_present: bool
    reason_code: int
    properties: Properties | None


class MqttClient:
    """A paho client whose operations wait for the broker's acknowledgement.

    Automatic reconnection is off: tests about takeover, keepalive or shutdown need
    a dropped connection to stay dropped. ``paho`` is the underlying client for
    anything not wrapped here (``will_set``, ``max_inflight_messages_set``, ...);
    configure it before ``connect``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str | None = None,
        *,
        protocol: MQTTProtocolVersion = mqtt.MQTTv311,
        transport: Transport = "tcp",
        ws_path: str = "/mqtt",
        clean_session: bool = True,
        keepalive: int = 60,
        connect_properties: Properties | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id if client_id is not None else unique("client")
        self.protocol = protocol
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.connect_properties = connect_properties
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if protocol == mqtt.MQTTv5 else clean_session,
            protocol=protocol,
            transport=transport,
            reconnect_on_failure=False,
        )
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        self.messages: queue.Queue[Message] = queue.Queue()
        self.connack: ConnAck | None = None
        self.disconnect_reason: int | None = None
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._acks: dict[int, list[int]] = {}
        self._loop_started = False
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_ack
        self.paho.on_unsubscribe = self._on_ack

    # -- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.connack = ConnAck(flags.session_present, reason_code.value, properties)
            self._cond.notify_all()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._cond:
            self.disconnect_reason = reason_code.value
            self.disconnected.set()
            self._cond.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Message(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                retain=bool(msg.retain),
                dup=bool(msg.dup),
                properties=msg.properties,
                received_at=time.monotonic(),
            )
        )

    def _on_ack(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._cond:
            self._acks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    # -- blocking operations (test thread) ----------------------------------------------

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise AssertionError(f"{self.client_id}: no {what} within {timeout} s")

    def connect(self, timeout: float = TIMEOUT) -> ConnAck:
        """Connect and wait for CONNACK (or for the broker to close the connection)."""
        kwargs: dict[str, object] = {"keepalive": self.keepalive}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean_session
            kwargs["properties"] = self.connect_properties
        self.paho.connect(self.host, self.port, **kwargs)  # type: ignore[arg-type]
        self.paho.loop_start()
        self._loop_started = True
        self._wait(
            lambda: self.connack is not None or self.disconnected.is_set(), timeout, "CONNACK"
        )
        if self.connack is None:
            raise AssertionError(f"{self.client_id}: connection closed before CONNACK")
        return self.connack

    def subscribe(
        self,
        filters: SubscriptionSpec,
        qos: int = 0,
        properties: Properties | None = None,
        timeout: float = TIMEOUT,
    ) -> list[int]:
        """Subscribe and return the SUBACK codes (granted QoS, or >= 0x80 on failure)."""
        topic: str | list[tuple[str, int | SubscribeOptions]]
        topic = filters if isinstance(filters, str) else list(filters)
        result, mid = self.paho.subscribe(topic, qos, properties=properties)  # type: ignore[arg-type]
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS, f"subscribe not sent: {result}"
        assert mid is not None
        self._wait(lambda: mid in self._acks, timeout, f"SUBACK for {filters!r}")
        return self._acks.pop(mid)

    def unsubscribe(self, filters: str | list[str], timeout: float = TIMEOUT) -> list[int]:
        """Unsubscribe and return the UNSUBACK reason codes (empty list for 3.1.1)."""
        result, mid = self.paho.unsubscribe(filters)
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {result}"
        assert mid is not None
        self._wait(lambda: mid in self._acks, timeout, f"UNSUBACK for {filters!r}")
        return self._acks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        wait: bool = True,
        timeout: float = TIMEOUT,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; with ``wait`` return only once the QoS flow completed (sent for QoS 0)."""
        info = self.paho.publish(topic, payload, qos, retain, properties)
        if wait:
            wait_published(info, timeout)
        return info

    def get(self, timeout: float = TIMEOUT) -> Message:
        """The next received message; fails the test if none arrives in time."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout} s") from None

    def get_many(self, count: int, timeout: float = TIMEOUT) -> list[Message]:
        """Exactly the next ``count`` messages within one overall deadline."""
        deadline = time.monotonic() + timeout
        got: list[Message] = []
        while len(got) < count:
            try:
                got.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: {len(got)} of {count} messages within {timeout} s: "
                    f"{[(m.topic, m.payload) for m in got]}"
                ) from None
        return got

    def collect_until(self, topic: str, timeout: float = TIMEOUT) -> list[Message]:
        """Messages received before the first one on ``topic``.

        A sentinel published after the messages under test proves they had their
        chance to arrive, so "not delivered" needs no guessed sleep.
        """
        deadline = time.monotonic() + timeout
        got: list[Message] = []
        while True:
            msg = self.get(max(0.0, deadline - time.monotonic()))
            if msg.topic == topic:
                return got
            got.append(msg)

    def assert_no_message(self, within: float = 0.5) -> None:
        """Fail if any message arrives during ``within`` seconds (or is already queued)."""
        try:
            msg = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {msg}")

    def wait_disconnected(self, timeout: float = TIMEOUT) -> int | None:
        """Wait until the connection is gone; return the reason code paho reported."""
        if not self.disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: still connected after {timeout} s")
        return self.disconnect_reason

    def disconnect(self, timeout: float = TIMEOUT) -> None:
        """Send DISCONNECT if still connected, then stop the network thread. Idempotent."""
        if self._loop_started and not self.disconnected.is_set():
            self.paho.disconnect()
            self.disconnected.wait(timeout)
        if self._loop_started:
            self.paho.loop_stop()
            self._loop_started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.disconnect()


def wait_published(info: mqtt.MQTTMessageInfo, timeout: float = TIMEOUT) -> None:
    """Block until paho finished the publish flow; paho's own wait returns silently on timeout."""
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise AssertionError(f"publish mid {info.mid} not acknowledged within {timeout} s")


class ClientPool:
    """Clients for one test; ``close`` disconnects all of them (call it from a fixture)."""

    def __init__(self) -> None:
        self._clients: list[MqttClient] = []

    def client(
        self,
        broker: BrokerAddress,
        client_id: str | None = None,
        *,
        transport: Transport = "tcp",
        **kwargs: object,
    ) -> MqttClient:
        """A tracked client that is not connected yet (for wills, failing CONNECTs, ...)."""
        port = broker.ws_port if transport == "websockets" else broker.port
        client = MqttClient(broker.host, port, client_id, transport=transport, **kwargs)  # type: ignore[arg-type]
        self._clients.append(client)
        return client

    def connect(
        self,
        broker: BrokerAddress,
        client_id: str | None = None,
        *,
        subscribe: SubscriptionSpec | None = None,
        qos: int = 0,
        transport: Transport = "tcp",
        **kwargs: object,
    ) -> MqttClient:
        """A tracked client, connected (CONNACK accepted) and optionally subscribed."""
        client = self.client(broker, client_id, transport=transport, **kwargs)
        connack = client.connect()
        assert connack.reason_code == 0, f"{client.client_id}: CONNACK refused: {connack}"
        if subscribe is not None:
            granted = client.subscribe(subscribe, qos)
            assert all(code < 0x80 for code in granted), f"SUBACK refused: {granted}"
        return client

    def close(self) -> None:
        for client in self._clients:
            client.disconnect(timeout=2.0)
        self._clients.clear()


def gather(
    clients: Sequence[MqttClient], total: int, timeout: float = TIMEOUT
) -> list[list[Message]]:
    """What each client received until ``total`` messages arrived across all of them.

    For shared subscriptions, where which member gets a message is the broker's
    choice; the caller checks for extras afterwards with ``assert_no_message``.
    """
    got: list[list[Message]] = [[] for _ in clients]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < total:
        if time.monotonic() > deadline:
            counts = [len(g) for g in got]
            raise AssertionError(f"{sum(counts)} of {total} messages within {timeout} s: {counts}")
        for client, bucket in zip(clients, got, strict=True):
            try:
                bucket.append(client.messages.get(timeout=0.01))
            except queue.Empty:
                continue
    return got
