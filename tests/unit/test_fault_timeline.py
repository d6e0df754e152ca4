"""The fault campaign's timeline (tests/faults/timeline.py) on hand-written histories.

The series are checked value by value against what the history implies, so a wrong bin,
a latency measured from the wrong event or a fault window labelled with the wrong fault
fails here; the picture itself is only checked to be a PNG of a plausible size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_fault_checkers import Script
from timeline import FaultPeriod, nearest_rank, render_timeline, timeline_series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def publish(s: Script, seq: int, invoked: float, completed: float, outcome: str = "ok") -> None:
    """A publish of ``p:seq`` invoked and completed at the given times."""
    s.publish_invoke(seq)
    s.ops[-1]["time"] = invoked  # publish_invoke takes no time of its own
    s.complete("p", outcome, {"reason": 0} if outcome == "ok" else {}, completed)


def fault(s: Script, name: str, detail: dict[str, str], at: float) -> None:
    s.invoke("nemesis", "nemesis", {"fault": name, "detail": detail}, at)
    s.complete("nemesis", "info", {"fault": name, "detail": detail}, at + 0.01)


def campaign() -> Script:
    """Three seconds: two fast acks in second 0; a partition over second 1 with one slow
    ack, one refused and one unknown publish; a paused node in second 2 with one ack."""
    s = Script()
    publish(s, 1, 0.10, 0.11)
    publish(s, 2, 0.20, 0.23)
    fault(s, "partition", {"kind": "partition-one"}, 1.0)
    publish(s, 3, 1.10, 1.60)
    s.publish_invoke(4)
    s.complete("p", "ok", {"reason": 0x87}, 1.65)
    publish(s, 5, 1.70, 1.80, outcome="info")
    fault(s, "heal", {"kind": "partition-one"}, 1.90)
    fault(s, "pause", {"node": "n3"}, 2.00)
    publish(s, 6, 2.10, 2.30)
    fault(s, "resume", {"kind": "pause", "node": "n3"}, 2.50)
    s.drain()
    return s


def test_publishes_are_counted_in_the_second_of_their_completion() -> None:
    series = timeline_series(campaign().ops)
    assert series.acknowledged == [2, 1, 1]
    assert series.unacknowledged == [0, 2, 0]


def test_latency_is_invoke_to_ack_of_acknowledged_publishes_only() -> None:
    series = timeline_series(campaign().ops)
    assert series.latency_p50_ms == pytest.approx([10.0, 500.0, 200.0])
    assert series.latency_p99_ms == pytest.approx([30.0, 500.0, 200.0])


def test_a_second_without_acknowledged_publishes_has_no_latency() -> None:
    s = Script()
    publish(s, 1, 0.1, 0.2)
    publish(s, 2, 0.3, 2.4)
    series = timeline_series(s.ops)
    assert series.acknowledged == [1, 0, 1]
    assert series.latency_p50_ms[1] is None and series.latency_p99_ms[1] is None


def test_a_publish_the_history_ended_before_completing_is_in_no_second() -> None:
    s = Script()
    publish(s, 1, 0.1, 0.2)
    s.publish_invoke(2, pub="q")
    series = timeline_series(s.ops)
    assert (series.acknowledged, series.unacknowledged) == ([1], [0])


def test_fault_periods_are_the_checker_windows_labelled_with_their_faults() -> None:
    assert timeline_series(campaign().ops).faults == [
        FaultPeriod(1.0, 1.91, "partition-one"),
        FaultPeriod(2.0, 2.51, "pause n3"),
    ]


def test_overlapping_faults_make_one_period_naming_both() -> None:
    s = Script()
    fault(s, "kill", {"node": "n1"}, 1.0)
    fault(s, "partition", {"kind": "bridge"}, 2.0)
    fault(s, "restart", {"kind": "kill-restart", "node": "n1"}, 3.0)
    fault(s, "heal", {"kind": "bridge"}, 4.0)
    assert timeline_series(s.ops).faults == [FaultPeriod(1.0, 4.01, "kill n1 + bridge")]


@pytest.mark.parametrize(
    ("percent", "expected"), [(50, 5.0), (90, 9.0), (99, 10.0), (100, 10.0), (1, 1.0)]
)
def test_nearest_rank_is_a_sample_at_or_above_the_percent(percent: float, expected: float) -> None:
    samples = [float(n) for n in (7, 2, 9, 1, 10, 4, 3, 8, 6, 5)]
    assert nearest_rank(samples, percent) == expected


def test_render_timeline_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    render_timeline(campaign().ops, path, "partition-one, pause, 3 s, seed 1")
    picture = path.read_bytes()
    assert picture.startswith(PNG_SIGNATURE)
    assert 10_000 < len(picture) < 500_000


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("history", ["empty", "nemesis only"])
def test_a_history_without_publishes_still_renders(tmp_path: Path, history: str) -> None:
    s = Script()
    if history == "nemesis only":
        fault(s, "pause", {"node": "n1"}, 0.5)
        fault(s, "resume", {"kind": "pause", "node": "n1"}, 1.5)
    path = tmp_path / "timeline.png"
    render_timeline(s.ops, path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
