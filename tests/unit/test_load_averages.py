"""The `$SYS/broker/load/...` maths on a hand-driven clock, checked against closed forms.

A counter that grows at a steady rate r per minute, sampled every dt seconds,
has after n samples the average r * (1 - exp(-n * dt / window)); an idle one
keeps exp(-dt / window) of its average per sample. Those are what Mosquitto's
recurrence gives, so they pin it down without copying it.
"""

from __future__ import annotations

import math

import pytest

from raftmq.node.load_averages import LoadAverages

WINDOWS = {"1min": 60.0, "5min": 300.0, "15min": 900.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _from_zero(name: str) -> tuple[FakeClock, LoadAverages]:
    """A clock and the averages of counter ``name``, sampled once at 0."""
    clock = FakeClock()
    loads = LoadAverages(clock)
    loads.sample({name: 0})
    return clock, loads


def test_the_first_sample_only_sets_the_baseline() -> None:
    loads = LoadAverages(FakeClock())
    averages = loads.sample({"messages/received": 5000, "sockets": 3})
    assert averages == {
        f"{name}/{window}": 0.0 for name in ("messages/received", "sockets") for window in WINDOWS
    }


@pytest.mark.parametrize("interval", [1.0, 10.0, 7.5])
def test_a_steady_rate_is_approached_as_one_minus_exp(interval: float) -> None:
    clock, loads = _from_zero("publish/received")
    count = 0
    per_minute = 120.0
    samples = 24
    for _ in range(samples):
        clock.now += interval
        count += round(per_minute * interval / 60)
        averages = loads.sample({"publish/received": count})
    for label, window in WINDOWS.items():
        expected = per_minute * (1 - math.exp(-samples * interval / window))
        assert averages[f"publish/received/{label}"] == pytest.approx(expected), label
    assert (
        averages["publish/received/1min"]
        > averages["publish/received/5min"]
        > averages["publish/received/15min"]
        > 0
    ), "the shorter the window, the sooner it follows the load"


def test_an_idle_counter_decays_by_exp_of_the_elapsed_share() -> None:
    clock, loads = _from_zero("connections")
    clock.now += 10
    burst = loads.sample({"connections": 50})
    assert burst["connections/1min"] == pytest.approx(300 * (1 - math.exp(-10 / 60)))
    clock.now += 45  # an uneven interval: the decay follows the real elapsed time
    idle = loads.sample({"connections": 50})
    for label, window in WINDOWS.items():
        name = f"connections/{label}"
        assert idle[name] == pytest.approx(burst[name] * math.exp(-45 / window)), label


def test_two_samples_at_one_instant_change_nothing() -> None:
    clock, loads = _from_zero("bytes/sent")
    clock.now += 5
    first = loads.sample({"bytes/sent": 600})
    assert loads.sample({"bytes/sent": 900}) == first, "no time passed: no rate to fold in"
    clock.now += 5
    later = loads.sample({"bytes/sent": 900})
    rate = 300 * 60 / 5  # the 300 bytes of the same-instant sample are not lost
    assert later["bytes/sent/1min"] == pytest.approx(
        rate + math.exp(-5 / 60) * (first["bytes/sent/1min"] - rate)
    )


def test_a_counter_first_seen_later_starts_from_its_value_then() -> None:
    clock, loads = _from_zero("sockets")
    clock.now += 1
    averages = loads.sample({"sockets": 1, "publish/dropped": 10_000})
    assert averages["publish/dropped/1min"] == 0.0
    assert averages["sockets/1min"] > 0
