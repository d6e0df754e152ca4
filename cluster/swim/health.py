"""Lifeguard's local health multiplier: a member that is itself slow probes less eagerly.

A member whose process is starved (a loaded machine, a pause) misses the acks
of healthy members and would accuse them. Lifeguard (Dadgar et al., 2018)
has it notice the signs of its own trouble instead: probes that get neither
an ack nor the relays' nacks, having to refute a suspicion of itself, and
(here) ticks that come far later than asked for. Each sign raises a score,
each clean probe lowers it, and the member's probe interval and timeout are
stretched by ``1 + score``, so it accuses slower while it is the likely
culprit.
"""

from __future__ import annotations


class LocalHealth:
    """The score, between 0 (healthy) and ``ceiling``."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.score = 0

    def adjust(self, delta: int) -> None:
        """Worse by ``delta`` (better if negative), within 0..ceiling."""
        self.score = min(self.ceiling, max(0, self.score + delta))

    @property
    def scale(self) -> int:
        """What probe intervals and timeouts are multiplied by."""
        return 1 + self.score
