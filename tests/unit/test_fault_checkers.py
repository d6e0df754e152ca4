"""The fault suite's checkers (tests/faults/checkers.py) on hand-written histories.

Each checker gets histories it must flag and near-identical ones it must not, so that
a checker that flags everything or nothing fails here. These need no root and no broker:
they live outside tests/faults, whose conftest skips without root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from checkers import (
    availability,
    check,
    lost,
    order,
    qos2_duplicates,
    retained_divergence,
    session_lost,
    split_brain,
    unexpected,
    well_formed,
)
from history import History, Op, load


class Script:
    """Builds a history event by event; time advances 0.1 s per event unless told."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.time = 0.0
        self._open: dict[str, Op] = {}

    def _add(self, process: str, type_: str, f: str, value: dict[str, Any], at: float | None) -> Op:
        self.time = at if at is not None else self.time + 0.1
        op = {"index": len(self.ops), "time": self.time, "process": process, "type": type_}
        op |= {"f": f, "value": value}
        self.ops.append(op)
        return op

    def invoke(self, process: str, f: str, value: dict[str, Any], at: float | None = None) -> None:
        self._open[process] = self._add(process, "invoke", f, value, at)

    def complete(
        self, process: str, type_: str, value: dict[str, Any], at: float | None = None
    ) -> None:
        self._add(process, type_, self._open.pop(process)["f"], value, at)

    def event(self, process: str, f: str, value: dict[str, Any], at: float | None = None) -> None:
        self._add(process, "ok", f, value, at)

    def connect(
        self,
        client_id: str,
        conn: int,
        *,
        clean: bool = False,
        present: bool = False,
        node: str = "n1",
        at: float | None = None,
    ) -> None:
        value = {"client_id": client_id, "node": node, "clean_start": clean, "protocol": 5}
        self.invoke(client_id, "connect", value | {"conn": conn, "session_expiry": 3600})
        self.complete(client_id, "ok", {"session_present": present}, at)

    def subscribe(self, client_id: str, conn: int, topic_filter: str = "t/#", qos: int = 2) -> None:
        value = {"client_id": client_id, "conn": conn, "filter": topic_filter, "qos": qos}
        self.invoke(client_id, "subscribe", value)
        self.complete(client_id, "ok", {"granted": [qos]})

    def publish(
        self, seq: int, *, outcome: str = "ok", topic: str = "t/a", qos: int = 2, pub: str = "p"
    ) -> str:
        """Invoke and complete a publish of ``pub:seq``; returns its id."""
        self.publish_invoke(seq, topic=topic, qos=qos, pub=pub)
        self.complete(pub, outcome, {"reason": 0} if outcome == "ok" else {})
        return f"{pub}:{seq}"

    def publish_invoke(self, seq: int, *, topic: str = "t/a", qos: int = 2, pub: str = "p") -> None:
        value = {"client_id": pub, "conn": 1, "node": "n2", "topic": topic, "qos": qos}
        value |= {"id": f"{pub}:{seq}", "publisher": pub, "seq": seq, "retain": False}
        self.invoke(pub, "publish", value)

    def deliver(
        self,
        client_id: str,
        conn: int,
        seq: int,
        *,
        pub: str = "p",
        topic: str = "t/a",
        qos: int = 2,
        retain: bool = False,
        at: float | None = None,
    ) -> None:
        value = {"client_id": client_id, "conn": conn, "node": "n1", "topic": topic, "qos": qos}
        value |= {"dup": False, "retain": retain, "id": f"{pub}:{seq}", "publisher": pub}
        self.event(client_id, "deliver", value | {"seq": seq}, at)

    def disconnect(self, client_id: str, conn: int) -> None:
        self.event(client_id, "disconnect", {"client_id": client_id, "conn": conn, "reason": 0})

    def drain(self) -> None:
        self.event("workload", "drain", {"quiet": 1.0})


def subscribed(client_id: str = "sub", *, clean: bool = False, qos: int = 2) -> Script:
    """A history that starts with ``client_id`` connected (conn 1) and subscribed to t/#."""
    s = Script()
    s.connect(client_id, 1, clean=clean)
    s.subscribe(client_id, 1, qos=qos)
    return s


# -- lost ---------------------------------------------------------------------------------


def test_lost_flags_an_acknowledged_message_a_persistent_subscriber_never_got() -> None:
    s = subscribed()
    s.publish(1)
    s.publish(2)
    s.deliver("sub", 1, 1)
    s.drain()
    result = lost(s.ops)
    assert (result.ok, result.count) == (False, 1)
    assert result.examples[0]["id"] == "p:2"
    assert result.examples[0]["client_id"] == "sub"


def test_lost_counts_a_delivery_on_any_connection_of_the_client_id() -> None:
    s = subscribed()
    s.publish(1)
    s.disconnect("sub", 1)
    s.connect("sub", 2, present=True, node="n3")
    s.deliver("sub", 2, 1)
    s.drain()
    assert lost(s.ops).ok


def test_lost_ignores_a_publish_invoked_before_the_suback() -> None:
    s = Script()
    s.connect("sub", 1)
    s.publish_invoke(1)
    s.subscribe("sub", 1)
    s.complete("p", "ok", {"reason": 0})
    s.drain()
    assert lost(s.ops).ok


def test_lost_ignores_unacknowledged_refused_and_unmatched_publishes() -> None:
    s = subscribed()
    s.publish(1, outcome="info")
    s.publish(2, outcome="fail")
    s.publish(3, topic="other/a")
    s.publish_invoke(4)
    s.complete("p", "ok", {"reason": 0x97})
    s.drain()
    assert lost(s.ops).ok


def test_lost_keeps_the_first_suback_as_anchor_after_a_silent_session_loss() -> None:
    """The session came back empty and the client subscribed again: the message
    published between the two SUBACKs is still owed."""
    s = subscribed()
    s.disconnect("sub", 1)
    s.publish(1)
    s.connect("sub", 2, present=False)
    s.subscribe("sub", 2)
    s.publish(2)
    s.deliver("sub", 2, 2)
    s.drain()
    result = lost(s.ops)
    assert [m["id"] for m in result.examples] == ["p:1"]


def test_lost_lets_a_clean_start_connect_end_the_obligation() -> None:
    s = subscribed()
    s.disconnect("sub", 1)
    s.connect("sub", 2, clean=True)
    s.publish(1)
    s.drain()
    assert lost(s.ops).ok


def test_lost_flags_a_clean_subscriber_that_stayed_connected_through_the_drain() -> None:
    s = subscribed("clean", clean=True)
    s.publish(1)
    s.drain()
    s.disconnect("clean", 1)
    result = lost(s.ops)
    assert (result.count, result.examples[0]["persistent"]) == (1, False)


def test_lost_exempts_a_clean_subscriber_whose_connection_dropped() -> None:
    """Jepsen's impaired-node exemption: a clean session has nowhere to keep messages."""
    s = subscribed("clean", clean=True)
    s.publish(1)
    s.disconnect("clean", 1)
    s.connect("clean", 2, clean=True)
    s.subscribe("clean", 2)
    s.drain()
    assert lost(s.ops).ok


def test_lost_exempts_a_clean_subscriber_for_a_publish_acknowledged_after_the_drain() -> None:
    s = subscribed("clean", clean=True)
    s.publish_invoke(1)
    s.drain()
    s.complete("p", "ok", {"reason": 0})
    assert lost(s.ops).ok


def test_lost_owes_nothing_on_a_qos0_subscription() -> None:
    s = subscribed(qos=0)
    s.publish(1)
    s.drain()
    assert lost(s.ops).ok


# -- qos2-duplicates ----------------------------------------------------------------------


def test_qos2_duplicates_flags_a_second_delivery_across_connections() -> None:
    s = subscribed()
    s.publish(1)
    s.deliver("sub", 1, 1)
    s.connect("sub", 2, present=True)
    s.deliver("sub", 2, 1)
    result = qos2_duplicates(s.ops)
    assert (result.count, result.examples[0]["deliveries"]) == (1, 2)


def test_qos2_duplicates_ignores_qos1_redeliveries_retained_replays_and_other_clients() -> None:
    s = Script()
    s.publish(1)
    s.deliver("a", 1, 1, qos=1)
    s.deliver("a", 1, 1, qos=1)
    s.deliver("a", 1, 1)
    s.deliver("a", 2, 1, retain=True)
    s.deliver("b", 1, 1)
    assert qos2_duplicates(s.ops).ok


# -- order --------------------------------------------------------------------------------


def test_order_flags_an_acknowledged_message_after_a_later_one() -> None:
    s = Script()
    for seq in (1, 2, 3):
        s.publish(seq)
    s.deliver("sub", 1, 1)
    s.deliver("sub", 1, 3)
    s.deliver("sub", 1, 2)
    result = order(s.ops)
    assert (result.count, result.examples[0]["seq"], result.examples[0]["after_seq"]) == (1, 2, 3)


def test_order_allows_gaps_redeliveries_other_connections_and_late_unacknowledged() -> None:
    s = Script()
    s.publish(1)
    s.publish(2, outcome="info")
    s.publish(3)
    s.publish(4)
    s.deliver("sub", 1, 1)
    s.deliver("sub", 1, 3)
    s.deliver("sub", 1, 1)  # a redelivery, not a first delivery
    s.deliver("sub", 1, 2)  # unacknowledged: its publisher's session ended with it
    s.deliver("sub", 2, 1)  # another connection starts its own order
    s.deliver("sub", 1, 4)
    s.deliver("sub", 1, 1, topic="t/b")  # another topic
    assert order(s.ops).ok


# -- unexpected ---------------------------------------------------------------------------


def test_unexpected_flags_only_ids_never_published() -> None:
    s = Script()
    s.publish(1, outcome="fail")
    s.deliver("sub", 1, 1)
    s.deliver("sub", 1, 9)
    result = unexpected(s.ops)
    assert (result.count, result.examples[0]["id"]) == (1, "p:9")


# -- session-lost -------------------------------------------------------------------------


def test_session_lost_flags_session_present_0_for_a_subscribed_persistent_session() -> None:
    s = subscribed()
    s.disconnect("sub", 1)
    s.connect("sub", 2, present=False, node="n2")
    result = session_lost(s.ops)
    assert (result.count, result.examples[0]["conn"]) == (1, 2)


def test_session_lost_counts_each_loss_once_and_resets_on_clean_start() -> None:
    s = subscribed()
    s.connect("sub", 2, present=False)  # lost: flagged
    s.connect("sub", 3, present=False)  # nothing subscribed since: the session was empty
    s.subscribe("sub", 3)
    s.connect("sub", 4, present=True)
    s.connect("sub", 5, clean=True)
    s.connect("sub", 6, present=False)  # after a clean start nothing was owed
    s.connect("other", 1)  # never subscribed
    s.connect("other", 2, present=False)
    assert session_lost(s.ops).count == 1


# -- split-brain --------------------------------------------------------------------------


def test_split_brain_flags_a_delivery_on_the_older_connection_after_grace() -> None:
    s = Script()
    s.publish(1)
    s.publish(2)
    s.connect("c", 1, clean=True, at=1.0)
    s.connect("c", 2, clean=True, node="n2", at=2.0)
    s.deliver("c", 1, 1, at=2.5)  # within the grace
    s.deliver("c", 1, 2, at=3.5)  # after it
    s.deliver("c", 2, 2, at=3.6)  # on the newer connection: fine
    result = split_brain(s.ops, grace=1.0)
    assert (result.count, result.examples[0]["newer_conn"]) == (1, 2)
    assert split_brain(s.ops, grace=2.0).ok


# -- retained-divergence ------------------------------------------------------------------


def test_retained_divergence_flags_a_topic_that_differs_between_nodes() -> None:
    s = Script()
    for node, payload in (("n1", "a"), ("n2", "a"), ("n3", None)):
        s.event("reader", "read-retained", {"node": node, "topic": "r/1", "payload": payload})
    for node in ("n1", "n2", "n3"):
        s.event("reader", "read-retained", {"node": node, "topic": "r/2", "payload": "b"})
    result = retained_divergence(s.ops)
    assert (result.count, result.examples[0]["topic"]) == (1, "r/1")


# -- availability -------------------------------------------------------------------------


def test_availability_splits_publishes_by_nemesis_windows() -> None:
    s = Script()
    s.publish(1)
    s.invoke("nemesis", "nemesis", {"fault": "partition", "detail": {}})
    s.complete("nemesis", "info", {})
    s.publish(2, outcome="info")
    s.publish(3)
    s.invoke("nemesis", "nemesis", {"fault": "heal", "detail": {}})
    s.complete("nemesis", "info", {})
    s.publish(4)
    result = availability(s.ops)
    figure = result.examples[0]
    assert result.ok
    assert figure["overall"] == {"acknowledged": 3, "publishes": 4, "share": 0.75}
    assert figure["faulty"]["share"] == 0.5
    assert figure["healthy"]["share"] == 1.0


# -- well-formed, and the whole set ------------------------------------------------------


def test_well_formed_flags_missing_and_orphan_completions() -> None:
    s = Script()
    s.publish_invoke(1)
    s.event("x", "subscribe", {"granted": [1]})
    result = well_formed(s.ops)
    assert sorted(p["problem"] for p in result.examples) == [
        "completion without invoke",
        "no completion",
    ]


def test_check_passes_a_clean_history_written_through_history(tmp_path: Path) -> None:
    """The recorder and the loader round-trip, and a history with nothing wrong passes."""
    history = History(tmp_path / "h.jsonl")
    connect = {"client_id": "sub", "node": "n1", "clean_start": False, "protocol": 4, "conn": 1}
    op = history.invoke("sub", "connect", connect)
    history.complete(op, "ok", {"session_present": False})
    op = history.invoke("sub", "subscribe", {"client_id": "sub", "conn": 1, "filter": "t/#"})
    history.complete(op, "ok", {"granted": [1]})
    message = {"topic": "t/a", "qos": 1, "id": "p:1", "publisher": "p", "seq": 1}
    op = history.invoke("p", "publish", message | {"client_id": "p", "conn": 1, "node": "n1"})
    history.complete(op, "ok", {"reason": 0})
    history.event("sub", "deliver", message | {"client_id": "sub", "conn": 1, "retain": False})
    history.event("workload", "drain", {"quiet": 1.0})
    history.close()
    results = check(load(tmp_path / "h.jsonl"))
    assert {name: r.ok for name, r in results.items() if not r.ok} == {}
    assert results["availability"].count == 1


def test_history_refuses_a_second_outstanding_operation(tmp_path: Path) -> None:
    history = History(tmp_path / "h.jsonl")
    history.invoke("p", "publish", {})
    with pytest.raises(RuntimeError, match="'p' invoked 'connect'"):
        history.invoke("p", "connect", {})
    history.close()


def test_load_drops_a_torn_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    line = json.dumps({"index": 0, "time": 0, "process": "p", "type": "ok", "f": "x", "value": {}})
    path.write_text(line + "\n" + '{"index": 1, "ti')
    assert len(load(path)) == 1
    path.write_text('{"torn\n' + line + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl:1"):
        load(path)
