"""Mosquitto's `$SYS/broker/load/...` figures: per-minute rates, averaged over 1, 5 and 15 min.

Dashboards built for Mosquitto plot these, so they are computed the way
Mosquitto computes them (its src/sys_tree.c), in the manner of Unix load
averages. At each sample, every counter's growth since the previous sample
becomes a per-minute rate, ``growth * 60 / elapsed``, and each average moves
towards it by the share the elapsed time is of its window:

    average = rate + exp(-elapsed / window) * (average - rate)

so a steady rate is approached within a few windows and an idle node decays
towards 0. All averages start at 0; the first sample only sets the baseline.

No I/O and no timer: the caller samples (every ``sys_interval``), and the
clock is injected, so tests drive time by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

WINDOWS: tuple[tuple[str, float], ...] = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))
"""(topic suffix, window in seconds) of each average, as Mosquitto names them."""


class LoadAverages:
    """The decayed per-minute rates of named, ever-growing counters."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sampled_at: float | None = None
        self._counts: dict[str, int] = {}
        """Each counter's value at the previous sample."""
        self._averages: dict[str, list[float]] = {}
        """Each counter's averages, in ``WINDOWS`` order."""

    def sample(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Fold in the counters' growth since the last sample; the averages by ``name/window``.

        A counter seen for the first time only sets its baseline. Two samples
        at the same instant leave the averages as they are.
        """
        now = self._clock()
        sampled_at = self._sampled_at
        if sampled_at is None or now > sampled_at:
            elapsed = now - sampled_at if sampled_at is not None else 0.0
            self._fold(counts, elapsed)
            self._sampled_at = now
            self._counts = dict(counts)
        return {
            f"{name}/{label}": averages[index]
            for name, averages in self._averages.items()
            for index, (label, _) in enumerate(WINDOWS)
        }

    def _fold(self, counts: Mapping[str, int], elapsed: float) -> None:
        decays = [math.exp(-elapsed / window) for _, window in WINDOWS] if elapsed else []
        for name, count in counts.items():
            averages = self._averages.setdefault(name, [0.0] * len(WINDOWS))
            previous = self._counts.get(name)
            if previous is None or not decays:
                continue
            rate = (count - previous) * 60.0 / elapsed
            for index, decay in enumerate(decays):
                averages[index] = rate + decay * (averages[index] - rate)
