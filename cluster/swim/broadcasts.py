"""The updates waiting to be piggybacked, and which of them go in the next message.

SWIM spreads news infection-style: every message carries a few updates, and
each update is sent ``retransmit_mult * ceil(log10(n + 1))`` times by each
member that learns it, which reaches all n members with high probability in
O(log n) rounds. The least-sent updates go first, newest first among equals,
so fresh news spreads fastest and a burst of news does not starve the last
of it. One update is kept per member: newer news of a member replaces the
older, which nobody needs any more.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass

from .members import Update
from .wire import update_size


def retransmit_limit(retransmit_mult: int, members: int) -> int:
    """How many times each member sends an update in a cluster of ``members``."""
    return retransmit_mult * math.ceil(math.log10(members + 1))


@dataclass(slots=True)
class _Pending:
    update: Update
    order: int
    sent: int = 0


class BroadcastQueue:
    """Updates to piggyback, one per member they are about."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._order = itertools.count()

    def add(self, update: Update) -> None:
        """Queue ``update`` to be sent afresh, replacing older news of its member."""
        self._pending[update.node_id] = _Pending(update, -next(self._order))

    def pick(self, room: int, most: int, limit: int, skip: Collection[str] = ()) -> list[Update]:
        """Up to ``most`` updates that fit in ``room`` bytes, counted as sent once more;
        those sent ``limit`` times are done. ``skip``: members already told of."""
        picked: list[Update] = []
        for node_id, pending in sorted(
            self._pending.items(), key=lambda item: (item[1].sent, item[1].order)
        ):
            if len(picked) == most:
                break
            size = update_size(pending.update)
            if node_id in skip or size > room:
                continue
            picked.append(pending.update)
            room -= size
            pending.sent += 1
            if pending.sent >= limit:
                del self._pending[node_id]
        return picked

    def __len__(self) -> int:
        return len(self._pending)
