"""A waiter for one forwarded item that remembers what it was told (``link.Waiter``)."""

from __future__ import annotations


class RecordingWaiter:
    def __init__(self) -> None:
        self.hits = 0
        self.failures: list[BaseException] = []

    def hit(self) -> None:
        self.hits += 1

    def fail(self, exc: BaseException) -> None:
        self.failures.append(exc)
