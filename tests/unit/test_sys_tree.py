"""The `$SYS/broker/...` tree without a node: derived figures, formats, publishing on change."""

from __future__ import annotations

from pathlib import Path

from raftmq.node.stats import Stats
from raftmq.node.sys_topics import Gauges, SysPublisher, sys_tree

BEHAVIOUR = Path(__file__).resolve().parents[2] / "docs" / "behaviour.md"
GAUGES = Gauges(
    sessions=7, subscriptions=4, shared_subscriptions=1, retained=3, held_messages=10, held_bytes=90
)


def test_derived_figures_follow_mosquittos_definitions() -> None:
    stats = Stats(clients_connected=5, control_packets_sent=40, messages_sent=60)
    stats.retained_bytes = 100
    tree = sys_tree(stats, GAUGES, {}, "raftmq 1.0")
    assert tree["clients/total"] == "7", "connected plus disconnected sessions"
    assert tree["clients/disconnected"] == tree["clients/inactive"] == "2"
    assert tree["clients/connected"] == tree["clients/active"] == "5"
    assert tree["messages/sent"] == "100", "packets of every type, PUBLISH included"
    assert tree["publish/messages/sent"] == "60"
    assert tree["messages/stored"] == tree["store/messages/count"] == "13"
    assert tree["store/messages/bytes"] == "190", "retained bytes plus held payload bytes"


def test_a_session_count_behind_the_connected_count_never_goes_negative() -> None:
    """A client counted as connected before its session is registered must not show -1."""
    tree = sys_tree(Stats(clients_connected=8), GAUGES, {}, "raftmq 1.0")
    assert tree["clients/disconnected"] == "0"
    assert tree["clients/total"] == "8"


def test_rates_have_two_decimals_and_uptime_says_seconds() -> None:
    tree = sys_tree(Stats(), GAUGES, {"sockets/1min": 2.0 / 3, "sockets/5min": 0.0}, "raftmq 1")
    assert tree["load/sockets/1min"] == "0.67"
    assert tree["load/sockets/5min"] == "0.00"
    assert tree["uptime"].endswith(" seconds")


def test_publisher_sends_a_value_only_when_it_changed() -> None:
    """Retained values a dashboard already has are not sent again (Mosquitto does the same)."""
    now = [100.0]
    sent: list[tuple[str, bytes, bool]] = []
    stats = Stats()
    publisher = SysPublisher(1.0, stats, lambda: GAUGES, lambda *m: sent.append(m), lambda: now[0])
    publisher.publish_once()
    first = {topic for topic, _, _ in sent}
    assert all(retain for _, _, retain in sent)
    assert {"$SYS/broker/version", "$SYS/broker/load/sockets/15min"} <= first
    sent.clear()
    publisher.publish_once()
    assert {t for t, _, _ in sent} <= {"$SYS/broker/uptime"}, "nothing else changed"
    sent.clear()
    stats.messages_received += 1
    stats.packets_received += 1
    now[0] += 1
    publisher.publish_once()
    changed = {topic for topic, _, _ in sent} - {"$SYS/broker/uptime"}
    assert changed == {
        "$SYS/broker/messages/received",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/received/5min",
        "$SYS/broker/load/messages/received/15min",
        "$SYS/broker/load/publish/received/1min",
        "$SYS/broker/load/publish/received/5min",
        "$SYS/broker/load/publish/received/15min",
    }
    assert ("$SYS/broker/publish/messages/received", b"1", True) in sent


def test_every_topic_is_in_the_documented_table() -> None:
    """docs/behaviour.md's `$SYS` section names each topic (loads by figure, limits by name)."""
    section = BEHAVIOUR.read_text().split("## `$SYS/broker/...`", 1)[1]
    loads = {"messages/received/1min": 0.0, "sockets/1min": 0.0, "publish/dropped/15min": 0.0}
    tree = sys_tree(Stats(), GAUGES, loads, "raftmq 1.0")
    undocumented = [
        name
        for name in tree
        if not name.startswith("limits/")  # each one is checked by test_limit_bookkeeping
        and f"`{_documented_as(name)}`" not in section
    ]
    assert not undocumented, f"docs/behaviour.md's $SYS table lacks {undocumented}"


def _documented_as(name: str) -> str:
    """A `load/<figure>/<window>` topic is documented by its figure."""
    return name.removeprefix("load/").rsplit("/", 1)[0] if name.startswith("load/") else name
