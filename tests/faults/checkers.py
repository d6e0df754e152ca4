"""The fault suite's checkers: pure functions of a loaded history, one guarantee each.

Each returns ``Result(name, ok, count, examples)``; ``examples`` holds the first few
violations with the history indexes that prove them. The rules, and why they are fair:

- **lost**: a publish acknowledged (ok, reason < 0x80) at QoS 1 or 2, to a topic matching a
  subscription granted at QoS 1 or 2, invoked after that SUBACK, that never reached the
  subscriber.
  - *Persistent* subscribers (clean start false; in MQTT 5 a session expiry above 0) owe
    every such message to their client id, on any of its connections, by the end of the
    history (which ends after a drain). The obligation is anchored on the client id's
    *first* SUBACK of the filter: a later SUBACK, sent because a session came back empty,
    must not move the anchor, or the messages the lost session held would go unnoticed.
    It ends at the client id's next clean-start connect. The workload's expiry (an hour)
    outlasts every run, so expiry never excuses a loss here.
  - *Clean* subscribers have no session to keep messages for them while they are away, so
    they follow Jepsen's impaired-node exemption: a message counts as lost only when the
    subscribing connection stayed up from its SUBACK until the end of the drain (no
    "disconnect" event of that connection before the drain ended), and the publish was
    acknowledged before that. A clean subscriber that lost its connection at any point is
    exempt altogether; its deliveries are still checked by the other checkers.
  Subscriptions are never withdrawn (the workload does not UNSUBSCRIBE).
- **qos2-duplicates**: a message delivered at QoS 2 more than once to one client id's
  application, over all its connections. Retained copies (retain flag set), which a new
  SUBSCRIBE legitimately replays, are not counted.
- **order**: per (subscriber connection, publisher, topic), each first delivery of a
  message must have a higher seq than every earlier one. A publish whose acknowledgement
  never came (info) is excused when it arrives late: its publisher's session ended with it
  in flight, and MQTT orders messages within a session only. The workload's publishers
  have one publish outstanding at a time, so every lower seq that was acknowledged was
  acknowledged before the higher one was sent.
- **unexpected**: a delivery of a message id no publish ever had.
- **session-lost**: a persistent connect answered session present = 0 although its client
  id held an acknowledged session: an earlier persistent connect that got a granted
  SUBACK, and no clean-start connect since.
- **split-brain**: a delivery on a connection of a client id later than ``grace`` seconds
  after a newer connection of that client id got its CONNACK: a takeover must end the
  older one.
- **retained-divergence**: after the heal, the "read-retained" results for one topic
  differ between nodes.
- **availability**: the share of publishes acknowledged, overall, while a nemesis fault was
  active and while healthy. A figure: always ok.
- **well-formed**: every invoke has exactly one completion of its process and function, and
  every other completion is an event function; what the other checkers assume.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from history import Op
from history_view import (
    EVENT_FUNCTIONS,
    Connection,
    Publish,
    connections,
    deliveries_by_receiver,
    drain_end_index,
    events,
    publishes,
    subscriptions,
    topic_matches,
)

MAX_EXAMPLES = 10
DEFAULT_GRACE = 2.0
"""Seconds a takeover may take to end the older connection (split-brain), as the clients
see it. A client's own processing lags on a loaded machine: in one suite run the old
connection's last deliveries were recorded 1.003 s after the new CONNACK although its
node had closed it 6 ms before that CONNACK (node logs)."""
FAULT_STARTS = frozenset({"partition", "kill", "pause"})
FAULT_ENDS = frozenset({"heal", "restart", "resume"})


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    count: int
    examples: list[Any]


def _result(name: str, violations: list[Any]) -> Result:
    return Result(name, not violations, len(violations), violations[:MAX_EXAMPLES])


def lost(ops: list[Op]) -> Result:
    """Acknowledged messages a subscriber was owed and never got (rules: module docstring)."""
    conns = connections(ops)
    published = [p for p in publishes(ops).values() if p.acknowledged and p.qos > 0]
    received = deliveries_by_receiver(ops)
    drain_end = drain_end_index(ops)
    clean_starts: dict[str, list[int]] = {}
    for connection in conns.values():
        if not connection.persistent:
            clean_starts.setdefault(connection.client_id, []).append(connection.invoke_index)
    anchored: set[tuple[str, str, int]] = set()
    """(client id, filter, epoch start): persistent filters whose first SUBACK was seen."""
    missing: dict[tuple[str, str], dict[str, Any]] = {}
    for subscription in subscriptions(ops):
        connection = conns[(subscription.client_id, subscription.conn)]
        if subscription.qos == 0:
            continue
        if connection.persistent:
            starts = clean_starts.get(subscription.client_id, [])
            epoch_start = max((i for i in starts if i < subscription.suback_index), default=-1)
            anchor = (subscription.client_id, subscription.topic_filter, epoch_start)
            if anchor in anchored:
                continue
            anchored.add(anchor)
            until = min((i for i in starts if i > subscription.suback_index), default=None)
            got = received.by_client.get(subscription.client_id, set())
        else:
            if connection.end_index is not None and connection.end_index <= drain_end:
                continue
            until = None
            got = received.by_connection.get((subscription.client_id, subscription.conn), set())
        for publish in published:
            if (
                publish.invoke_index > subscription.suback_index
                and (until is None or publish.invoke_index < until)
                and (connection.persistent or _completed_before(publish, drain_end))
                and publish.id not in got
                and topic_matches(subscription.topic_filter, publish.topic)
            ):
                missing.setdefault(
                    (subscription.client_id, publish.id),
                    {
                        "client_id": subscription.client_id,
                        "id": publish.id,
                        "topic": publish.topic,
                        "publish_index": publish.invoke_index,
                        "suback_index": subscription.suback_index,
                        "persistent": connection.persistent,
                    },
                )
    return _result("lost", sorted(missing.values(), key=lambda m: m["publish_index"]))


def _completed_before(publish: Publish, index: int) -> bool:
    return publish.completion_index is not None and publish.completion_index < index


def qos2_duplicates(ops: list[Op]) -> Result:
    """QoS 2 messages one client id's application got more than once."""
    counts: Counter[tuple[str, str]] = Counter()
    first_index: dict[tuple[str, str], int] = {}
    for event in events(ops, "deliver"):
        value = event["value"]
        if value["qos"] == 2 and not value["retain"]:
            key = (value["client_id"], value["id"])
            counts[key] += 1
            first_index.setdefault(key, event["index"])
    duplicates = [
        {"client_id": key[0], "id": key[1], "deliveries": n, "first_index": first_index[key]}
        for key, n in counts.items()
        if n > 1
    ]
    return _result("qos2-duplicates", duplicates)


def order(ops: list[Op]) -> Result:
    """First deliveries out of seq order per (subscriber connection, publisher, topic)."""
    published = publishes(ops)
    highest: dict[tuple[str, int, str, str], int] = {}
    seen: set[tuple[str, int, str]] = set()
    violations: list[dict[str, Any]] = []
    for event in events(ops, "deliver"):
        value = event["value"]
        if value["retain"] or value.get("seq") is None:
            continue
        first = (value["client_id"], value["conn"], value["id"])
        if first in seen:
            continue
        seen.add(first)
        key = (value["client_id"], value["conn"], value["publisher"], value["topic"])
        top = highest.get(key)
        if top is not None and value["seq"] < top:
            publish = published.get(value["id"])
            if publish is not None and publish.acknowledged:
                violations.append(
                    {
                        "client_id": value["client_id"],
                        "conn": value["conn"],
                        "publisher": value["publisher"],
                        "topic": value["topic"],
                        "seq": value["seq"],
                        "after_seq": top,
                        "index": event["index"],
                    }
                )
        highest[key] = max(value["seq"], top if top is not None else value["seq"])
    return _result("order", violations)


def unexpected(ops: list[Op]) -> Result:
    """Deliveries of message ids never published."""
    published = {op["value"].get("id") for op in ops if op["f"] == "publish"}
    violations = [
        {"client_id": e["value"]["client_id"], "id": e["value"].get("id"), "index": e["index"]}
        for e in events(ops, "deliver")
        if e["value"].get("id") not in published
    ]
    return _result("unexpected", violations)


def session_lost(ops: list[Op]) -> Result:
    """Persistent connects answered session present = 0 where the session had to exist."""
    conns = connections(ops)
    subscribed_on: dict[tuple[str, int], int] = {}
    for subscription in subscriptions(ops):
        subscribed_on.setdefault(
            (subscription.client_id, subscription.conn), subscription.suback_index
        )
    steps: list[tuple[int, str, Connection]] = []
    for connection in conns.values():
        if not connection.persistent:
            steps.append((connection.invoke_index, "clean", connection))
        elif connection.ok_index is not None:
            steps.append((connection.ok_index, "connack", connection))
        if connection.key in subscribed_on and connection.persistent:
            steps.append((subscribed_on[connection.key], "suback", connection))
    has_session: dict[str, int] = {}
    """Client id -> index of the SUBACK that made its session one that must survive."""
    violations: list[dict[str, Any]] = []
    for index, step, connection in sorted(steps, key=lambda s: s[0]):
        client_id = connection.client_id
        if step == "clean":
            has_session.pop(client_id, None)
        elif step == "suback":
            has_session.setdefault(client_id, index)
        elif not connection.session_present:
            if client_id in has_session:
                violations.append(
                    {
                        "client_id": client_id,
                        "conn": connection.conn,
                        "node": connection.node,
                        "connack_index": index,
                        "session_since_index": has_session[client_id],
                    }
                )
            has_session.pop(client_id, None)
    return _result("session-lost", violations)


def split_brain(ops: list[Op], grace: float = DEFAULT_GRACE) -> Result:
    """Deliveries on a connection after a newer one of its client id settled (+ grace)."""
    accepted: dict[str, list[Connection]] = {}
    for connection in connections(ops).values():
        if connection.ok_index is not None:
            accepted.setdefault(connection.client_id, []).append(connection)
    superseded_at: dict[tuple[str, int], tuple[float, int]] = {}
    for listed in accepted.values():
        listed.sort(key=lambda c: c.ok_index or 0)
        for older, newer in pairwise(listed):
            assert newer.ok_time is not None
            superseded_at[older.key] = (newer.ok_time, newer.conn)
    violations: list[dict[str, Any]] = []
    for event in events(ops, "deliver"):
        value = event["value"]
        superseded = superseded_at.get((value["client_id"], value["conn"]))
        if superseded is not None and event["time"] > superseded[0] + grace:
            violations.append(
                {
                    "client_id": value["client_id"],
                    "conn": value["conn"],
                    "newer_conn": superseded[1],
                    "late_by": round(event["time"] - superseded[0], 3),
                    "index": event["index"],
                }
            )
    return _result("split-brain", violations)


def retained_divergence(ops: list[Op]) -> Result:
    """Topics whose retained message differs between nodes after the heal."""
    by_topic: dict[str, dict[str, str | None]] = {}
    for event in events(ops, "read-retained"):
        value = event["value"]
        by_topic.setdefault(value["topic"], {})[value["node"]] = value["payload"]
    divergent = [
        {"topic": topic, "payloads": payloads}
        for topic, payloads in sorted(by_topic.items())
        if len(set(payloads.values())) > 1
    ]
    return _result("retained-divergence", divergent)


def fault_windows(ops: list[Op]) -> list[tuple[float, float]]:
    """(start, end) times while a nemesis fault was active: from the invoke of a fault
    that made one active to the completion of the heal, restart or resume that left none."""
    windows: list[tuple[float, float]] = []
    invoked: dict[str, str | None] = {}
    active = 0
    start = 0.0
    for op in ops:
        if op["f"] != "nemesis":
            continue
        if op["type"] == "invoke":
            fault = invoked[op["process"]] = op["value"].get("fault")
            if fault in FAULT_STARTS:
                if active == 0:
                    start = op["time"]
                active += 1
        elif invoked.pop(op["process"], None) in FAULT_ENDS and active > 0:
            active -= 1
            if active == 0:
                windows.append((start, op["time"]))
    if active and ops:
        windows.append((start, ops[-1]["time"]))
    return windows


def availability(ops: list[Op]) -> Result:
    """The share of publishes acknowledged: overall, during faults, while healthy."""
    windows = fault_windows(ops)
    totals = {"overall": [0, 0], "faulty": [0, 0], "healthy": [0, 0]}
    for publish in publishes(ops).values():
        at = publish.invoke_time
        period = "faulty" if any(a <= at <= b for a, b in windows) else "healthy"
        for name in ("overall", period):
            totals[name][0] += int(publish.acknowledged)
            totals[name][1] += 1
    figure = {
        name: {"acknowledged": ok, "publishes": n, "share": round(ok / n, 4) if n else None}
        for name, (ok, n) in totals.items()
    }
    return Result("availability", True, totals["overall"][1], [figure])


def well_formed(ops: list[Op]) -> Result:
    """Invokes without exactly one completion, and completions answering nothing."""
    problems: list[dict[str, Any]] = []
    pending: dict[str, Op] = {}
    for op in ops:
        process = op["process"]
        if op["type"] == "invoke":
            if process in pending:
                problems.append({"problem": "invoke while outstanding", "index": op["index"]})
            pending[process] = op
        elif process in pending and pending[process]["f"] == op["f"]:
            del pending[process]
        elif op["f"] not in EVENT_FUNCTIONS:
            problems.append({"problem": "completion without invoke", "index": op["index"]})
    problems.extend(
        {"problem": "no completion", "index": op["index"]}
        for op in sorted(pending.values(), key=lambda op: op["index"])
    )
    return _result("well-formed", problems)


def check(ops: list[Op], grace: float = DEFAULT_GRACE) -> dict[str, Result]:
    """Every checker over one history, by name."""
    results = [
        well_formed(ops),
        lost(ops),
        qos2_duplicates(ops),
        order(ops),
        unexpected(ops),
        session_lost(ops),
        split_brain(ops, grace),
        retained_divergence(ops),
        availability(ops),
    ]
    return {result.name: result for result in results}
