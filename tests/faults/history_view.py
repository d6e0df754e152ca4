"""A loaded history read as what the checkers reason about: operations, connections,
subscriptions, publishes and deliveries.

Pure functions of the event list (no I/O, no clock), so the checkers can be tested on
hand-written histories. Everything keeps the history index of the events it came from:
index order is time order (history.py), and an example a checker reports points back at
the lines of the history that prove it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from history import Op

EVENT_FUNCTIONS = frozenset({"deliver", "disconnect", "read-retained", "drain"})
"""Functions recorded as completion-only events (no invoke)."""
REFUSED = 0x80
"""MQTT 5 reason codes from this value up mean refused or failed."""


@dataclass
class Operation:
    """An invoke and its completion (None: the history ended first)."""

    invoke: Op
    completion: Op | None = None

    @property
    def process(self) -> str:
        return str(self.invoke["process"])

    @property
    def f(self) -> str:
        return str(self.invoke["f"])

    @property
    def value(self) -> dict[str, Any]:
        return dict(self.invoke["value"])

    @property
    def ok(self) -> bool:
        return self.completion is not None and self.completion["type"] == "ok"


def operations(ops: Iterable[Op]) -> list[Operation]:
    """Each invoke paired with the next completion of the same process and function,
    in invoke order; completion-only events are left out."""
    pending: dict[str, Operation] = {}
    paired: list[Operation] = []
    for op in ops:
        if op["type"] == "invoke":
            pending[op["process"]] = operation = Operation(op)
            paired.append(operation)
        else:
            operation = pending.get(op["process"])
            if operation is not None and operation.f == op["f"]:
                operation.completion = op
                del pending[op["process"]]
    return paired


def events(ops: Iterable[Op], f: str) -> list[Op]:
    """The completion-only events of function ``f``."""
    return [op for op in ops if op["f"] == f and op["type"] != "invoke"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (+, #, and $-topics hidden from a leading wildcard), written
    here rather than borrowed from the broker, whose matching is under test."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for position, level in enumerate(filter_levels):
        if level == "#":
            return True
        if position >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[position]):
            return False
    return len(filter_levels) == len(topic_levels)


@dataclass
class Connection:
    """One connection attempt of a client id, numbered ``conn`` by the workload."""

    client_id: str
    conn: int
    node: str
    persistent: bool
    """Its session outlives it: clean start false and, in MQTT 5, a session expiry above 0
    (a missing ``session_expiry`` counts as above 0)."""
    invoke_index: int
    ok_index: int | None = None
    ok_time: float | None = None
    session_present: bool | None = None
    end_index: int | None = None
    """The index of its "disconnect" event; None while it stayed up."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.client_id, self.conn)


def connections(ops: list[Op]) -> dict[tuple[str, int], Connection]:
    """Every connect attempt by (client id, conn), with its CONNACK and its end."""
    found: dict[tuple[str, int], Connection] = {}
    for operation in operations(ops):
        if operation.f != "connect":
            continue
        value = operation.value
        persistent = not value["clean_start"] and (
            value.get("protocol") == 4 or value.get("session_expiry", 1) > 0
        )
        connection = Connection(
            value["client_id"], value["conn"], value["node"], persistent, operation.invoke["index"]
        )
        if operation.ok and operation.completion is not None:
            connection.ok_index = operation.completion["index"]
            connection.ok_time = operation.completion["time"]
            connection.session_present = bool(operation.completion["value"]["session_present"])
        found[connection.key] = connection
    for event in events(ops, "disconnect"):
        connection = found.get((event["value"]["client_id"], event["value"]["conn"]))
        if connection is not None and connection.end_index is None:
            connection.end_index = event["index"]
    return found


@dataclass(frozen=True)
class Subscription:
    """A granted subscription: its SUBACK's index and the QoS granted."""

    client_id: str
    conn: int
    topic_filter: str
    qos: int
    suback_index: int


def subscriptions(ops: list[Op]) -> list[Subscription]:
    """Every SUBACK that granted its (single) filter, in SUBACK order."""
    granted: list[Subscription] = []
    for operation in operations(ops):
        if operation.f != "subscribe" or not operation.ok or operation.completion is None:
            continue
        codes = operation.completion["value"]["granted"]
        if codes and codes[0] < REFUSED:
            value = operation.value
            granted.append(
                Subscription(
                    value["client_id"],
                    value["conn"],
                    value["filter"],
                    codes[0],
                    operation.completion["index"],
                )
            )
    granted.sort(key=lambda subscription: subscription.suback_index)
    return granted


@dataclass
class Publish:
    """A publish operation by message id."""

    id: str
    topic: str
    qos: int
    publisher: str
    seq: int
    invoke_index: int
    invoke_time: float
    acknowledged: bool
    """Completed ok with a reason code below 0x80: the broker took responsibility."""
    completion_index: int | None


def publishes(ops: list[Op]) -> dict[str, Publish]:
    found: dict[str, Publish] = {}
    for operation in operations(ops):
        if operation.f != "publish":
            continue
        value = operation.value
        completion = operation.completion
        acknowledged = (
            operation.ok
            and completion is not None
            and completion["value"].get("reason", 0) < REFUSED
        )
        found[value["id"]] = Publish(
            value["id"],
            value["topic"],
            value["qos"],
            value["publisher"],
            value["seq"],
            operation.invoke["index"],
            operation.invoke["time"],
            acknowledged,
            None if completion is None else completion["index"],
        )
    return found


@dataclass
class DeliveriesByReceiver:
    """Which message ids reached each client id, and each connection."""

    by_client: dict[str, set[str]] = field(default_factory=dict)
    by_connection: dict[tuple[str, int], set[str]] = field(default_factory=dict)


def deliveries_by_receiver(ops: list[Op]) -> DeliveriesByReceiver:
    received = DeliveriesByReceiver()
    for event in events(ops, "deliver"):
        value = event["value"]
        received.by_client.setdefault(value["client_id"], set()).add(value["id"])
        received.by_connection.setdefault((value["client_id"], value["conn"]), set()).add(
            value["id"]
        )
    return received


def drain_end_index(ops: list[Op]) -> int:
    """The index of the drain's end, or the last index when the history has no drain."""
    ends = [op["index"] for op in events(ops, "drain")]
    if ends:
        return max(ends)
    return ops[-1]["index"] if ops else 0
