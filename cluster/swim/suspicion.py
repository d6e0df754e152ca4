"""How long a suspected member has to refute before it is declared dead.

Lifeguard's dynamic suspicion timeout: a suspicion starts with the longest
timeout and shortens as other members independently accuse the same member
of the same incarnation, down to the shortest after ``expected``
confirmations. One member's word (perhaps a member with trouble of its own)
leaves the accused a long time to refute; several agreeing members are
probably right and make it quick. The shrinking is logarithmic in the number
of confirmations, so the first ones count most.

``expected`` is ``indirect_checks``, or fewer in a cluster too small to have
that many other members: with 3 members, the one other survivor's agreement
is all there can be.
"""

from __future__ import annotations

import math

from .settings import SwimSettings


def timeouts(settings: SwimSettings, members: int) -> tuple[float, float]:
    """The shortest and longest suspicion timeout in a cluster of ``members``: longer in
    larger clusters, where news takes more rounds to reach the accused and back."""
    shortest = settings.suspicion_mult * max(1.0, math.log10(members)) * settings.probe_interval
    return shortest, shortest * settings.suspicion_max_mult


class Suspicion:
    """One member suspected at one incarnation, and who has accused it."""

    __slots__ = (
        "accuser",
        "accusers",
        "expected",
        "incarnation",
        "longest",
        "shortest",
        "started_at",
    )

    def __init__(
        self,
        settings: SwimSettings,
        members: int,
        incarnation: int,
        accuser: str,
        started_at: float,
    ) -> None:
        """``accuser``: the member whose accusation started it, which does not count as a
        confirmation; ``members``: the cluster's size, counting the accused."""
        self.incarnation = incarnation
        self.accuser = accuser
        self.started_at = started_at
        self.shortest, self.longest = timeouts(settings, members)
        self.expected = min(settings.indirect_checks, max(0, members - 2))
        self.accusers = {accuser}

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``'s accusation; False when it already counted."""
        if accuser in self.accusers:
            return False
        self.accusers.add(accuser)
        return True

    @property
    def deadline(self) -> float:
        """When the member is declared dead, unless it refutes first."""
        confirmations = len(self.accusers) - 1
        if self.expected < 1:
            return self.started_at + self.shortest
        shrink = math.log(confirmations + 1) / math.log(self.expected + 1)
        timeout = self.longest - shrink * (self.longest - self.shortest)
        return self.started_at + max(self.shortest, timeout)

    def postpone(self, seconds: float) -> None:
        """Give the accused ``seconds`` more: this member stalled that long, and could
        not have heard a refutation meanwhile."""
        self.started_at += seconds
