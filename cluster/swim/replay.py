"""Which sealed packets were already received: a sliding window per sender boot.

Every sealed packet carries its sender's boot id (random per process start)
and a counter the sender raises by one per packet. As in IPsec (RFC 4303,
3.4.3), the receiver keeps per boot the highest counter seen and a bitmap of
the ``width`` counters below it: a counter seen before, or older than the
window, is a replay. UDP reorders a little, never by more than a probe's
worth of packets, so 128 is ample.

A restarted member is a new boot, so its counters start over without being
taken for replays. Boots are tracked in LRU order up to ``max_boots``, so a
cluster's churn over months does not grow the table; a boot evicted that long
after it last spoke is a process long gone.
"""

from __future__ import annotations

from collections import OrderedDict


class ReplayGuard:
    """Accepts each (boot, counter) once, within a window below the highest seen."""

    def __init__(self, width: int = 128, max_boots: int = 1024) -> None:
        if width < 1 or max_boots < 1:
            raise ValueError("a replay window needs a width and room for a boot")
        self.width = width
        self.max_boots = max_boots
        self._full = (1 << width) - 1
        self._boots: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        """Per boot: the highest counter seen, and a bitmap whose bit i is counter
        highest - i seen."""

    def accept(self, boot: bytes, counter: int) -> bool:
        """Whether this is the first time (within the window) that ``counter`` of
        ``boot`` arrives; it is then remembered. Call only for authentic packets, or
        forged counters would push the window past real ones."""
        highest, seen = self._boots.get(boot, (0, 0))
        if counter > highest:
            ahead = counter - highest
            seen = ((seen << ahead) | 1) & self._full if ahead < self.width else 1
            highest = counter
        else:
            behind = highest - counter
            if behind >= self.width or seen >> behind & 1:
                return False
            seen |= 1 << behind
        self._boots[boot] = (highest, seen)
        self._boots.move_to_end(boot)
        if len(self._boots) > self.max_boots:
            self._boots.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._boots)
