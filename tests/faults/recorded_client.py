"""One paho client whose every operation goes into the history, driven by its owner's thread.

The workload's actors each run in their own thread and call paho's ``loop()`` themselves
instead of paho's background thread: callbacks then run in the actor's thread, so an
operation's invoke, its completion and the deliveries around it are written in the order
the actor saw them, and an actor can wait for an acknowledgement without locks.

A client object is kept across reconnections when its session is persistent: paho keeps
the packet ids of incoming QoS 2 messages it answered with PUBREC, and delivers them to the
application on the PUBREL that may come on the next connection. A fresh object there would
lose the message (paho answers an unknown PUBREL with PUBCOMP), and the checker would blame
the broker.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from history import Completion, History, Op
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REFUSED = 0x80
PACKET_ID_NOT_FOUND = 0x92
"""A PUBCOMP that lost its exchange: the message may or may not have been taken."""
LOOP_SLICE = 0.05


class ConnNumbers:
    """The next connection number of each client id, shared by every client of one id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def next(self, client_id: str) -> int:
        with self._lock:
            self._last[client_id] = self._last.get(client_id, 0) + 1
            return self._last[client_id]


class RecordedClient:
    """A paho client of one client id; ``process`` names it in the history."""

    def __init__(
        self,
        history: History,
        process: str,
        client_id: str,
        conns: ConnNumbers,
        *,
        protocol: int = 5,
        clean_start: bool = True,
        session_expiry: int = 0,
        keepalive: int = 5,
        timeout: float = 10.0,
        on_delivery: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        self.history = history
        self.process = process
        self.client_id = client_id
        self.protocol = protocol
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.timeout = timeout
        self._conns = conns
        self._on_delivery = on_delivery
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if protocol == 5 else clean_start,
            protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.conn = 0
        self.node = ""
        self.up = False
        """CONNACK accepted and no disconnect since."""
        self.session_present = False
        self._connack: tuple[bool, int] | None = None
        self._subacks: dict[int, list[int]] = {}
        self._published: dict[int, int] = {}

    # -- operations ----------------------------------------------------------------------

    def connect(self, node: str, host: str, port: int) -> bool:
        """Connect to ``node``; True once the CONNACK accepted it."""
        self.conn = self._conns.next(self.client_id)
        self.node = node
        value = {
            "client_id": self.client_id,
            "node": node,
            "clean_start": self.clean_start,
            "protocol": self.protocol,
            "conn": self.conn,
            "session_expiry": self.session_expiry,
        }
        op = self.history.invoke(self.process, "connect", value)
        self._connack = None
        try:
            if self.protocol == 5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.session_expiry
                self.paho.connect(
                    host, port, self.keepalive, clean_start=self.clean_start, properties=properties
                )
            else:
                self.paho.connect(host, port, self.keepalive)
        except OSError as error:
            self.history.complete(op, "fail", {"reason": f"{type(error).__name__}: {error}"})
            return False
        if not self._pump_until(lambda: self._connack is not None):
            self.history.complete(op, "info", {"reason": f"no CONNACK in {self.timeout} s"})
            self._drop()
            return False
        assert self._connack is not None
        present, reason = self._connack
        if reason != 0:
            self.history.complete(op, "fail", {"reason": reason})
            self._drop()
            return False
        self.session_present = present
        self.history.complete(op, "ok", {"session_present": present})
        return True

    def subscribe(self, topic_filter: str, qos: int) -> bool:
        """SUBSCRIBE one filter; True when granted."""
        value = {"client_id": self.client_id, "conn": self.conn, "filter": topic_filter}
        op = self.history.invoke(self.process, "subscribe", value | {"qos": qos})
        rc, mid = self.paho.subscribe(topic_filter, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self.history.complete(op, "fail", {"reason": f"paho: {rc.name}"})
            return False
        if not self._pump_until(lambda: mid in self._subacks or not self.up):
            self.history.complete(op, "info", {"reason": f"no SUBACK in {self.timeout} s"})
            self._drop()
            return False
        if mid not in self._subacks:
            self.history.complete(op, "info", {"reason": "connection lost before the SUBACK"})
            return False
        granted = self._subacks.pop(mid)
        self.history.complete(op, "ok", {"granted": granted})
        return bool(granted) and granted[0] < REFUSED

    def publish(
        self, topic: str, publisher: str, seq: int, qos: int, *, retain: bool = False
    ) -> Completion:
        """Publish message ``publisher:seq`` and wait for its acknowledgement; returns the
        completion type ("ok", "fail" or "info")."""
        message_id = f"{publisher}:{seq}"
        value: dict[str, Any] = {
            "client_id": self.client_id,
            "conn": self.conn,
            "node": self.node,
            "topic": topic,
            "qos": qos,
            "id": message_id,
            "publisher": publisher,
            "seq": seq,
            "retain": retain,
        }
        op = self.history.invoke(self.process, "publish", value)
        payload = json.dumps({"id": message_id, "publisher": publisher, "seq": seq})
        info = self.paho.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return self._complete(op, "fail", {"reason": f"paho: {info.rc.name}"})
        if not self._pump_until(lambda: info.mid in self._published or not self.up):
            self._drop()
            return self._complete(op, "info", {"reason": f"no acknowledgement in {self.timeout} s"})
        if info.mid not in self._published:
            return self._complete(op, "info", {"reason": "connection lost before the ack"})
        reason = self._published.pop(info.mid)
        if reason < REFUSED:
            return self._complete(op, "ok", {"reason": reason})
        return self._complete(
            op, "info" if reason == PACKET_ID_NOT_FOUND else "fail", {"reason": reason}
        )

    def pump(self, seconds: float) -> None:
        """Run the network loop for ``seconds``: deliveries, keepalive, a dropped connection."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._loop_once()

    def disconnect(self) -> None:
        """A graceful DISCONNECT (the session stays if it is persistent); bounded."""
        if self.up:
            self.paho.disconnect()
            self._pump_until(lambda: not self.up, timeout=2.0)
        self._drop()

    # -- internals -----------------------------------------------------------------------

    def _complete(self, op: Op, type_: Completion, value: dict[str, Any]) -> Completion:
        self.history.complete(op, type_, value)
        return type_

    def _loop_once(self) -> None:
        if self.paho.loop(LOOP_SLICE) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            time.sleep(LOOP_SLICE)

    def _pump_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not done():
            if time.monotonic() > deadline:
                return False
            self._loop_once()
        return True

    def _drop(self) -> None:
        """End the connection without DISCONNECT, and let paho notice (bounded)."""
        sock = self.paho.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._pump_until(lambda: self.paho.socket() is None, timeout=1.0)
        if self.up:
            self._record_disconnect("dropped by the client")

    def _record_disconnect(self, reason: int | str) -> None:
        self.up = False
        value = {"client_id": self.client_id, "conn": self.conn, "reason": reason}
        self.history.event(self.process, "disconnect", value)

    # -- paho callbacks (this thread, inside loop()) -------------------------------------

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connack = (bool(flags.session_present), reason_code.value)
        self.up = reason_code.value == 0

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self.up:
            self._record_disconnect(reason_code.value)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        self._subacks[mid] = [code.value for code in reason_codes]

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._published[mid] = reason_code.value

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        value = {
            "client_id": self.client_id,
            "conn": self.conn,
            "node": self.node,
            "topic": msg.topic,
            "qos": msg.qos,
            "dup": bool(msg.dup),
            "retain": bool(msg.retain),
            "id": body.get("id"),
            "publisher": body.get("publisher"),
            "seq": body.get("seq"),
        }
        self.history.event(self.process, "deliver", value)
        if self._on_delivery is not None:
            self._on_delivery(msg)
