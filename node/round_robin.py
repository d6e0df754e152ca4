"""Whose turn it is, per key: the shared-subscription rotation, on a node and across nodes."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RoundRobin(Generic[K]):
    """One turn counter per key (a share group), advanced at each pick."""

    def __init__(self) -> None:
        self._turns: dict[K, int] = {}

    def pick(self, key: K, count: int, usable: Callable[[int], bool] | None = None) -> int:
        """The index, below ``count``, of the member whose turn it is.

        With ``usable``, the first member from that turn on that it accepts
        (an online one); the member in turn when it accepts none. The next
        pick starts after the chosen member.
        """
        start = self._turns.get(key, 0)
        chosen = start
        if usable is not None:
            for offset in range(count):
                if usable((start + offset) % count):
                    chosen = start + offset
                    break
        self._turns[key] = chosen + 1
        return chosen % count
