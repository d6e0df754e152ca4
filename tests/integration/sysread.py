"""Reading the broker's own `$SYS/broker/...` values from a test, over raw MQTT.

The limit and hostile-input tests check that each refusal is counted; the
`$SYS` tests check the whole tree. The values are retained and refreshed
every ``sys_interval`` seconds, so a test waits until a value it expects
shows up instead of sleeping, and fails with the history of what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from rawmqtt import PUBLISH, SUBACK, RawClient, subscribe

SYS_TIMEOUT = 6.0
PREFIX = "$SYS/broker/"
Number = TypeVar("Number", int, float)


class SysWatcher:
    """A connected raw client subscribed to every `$SYS/broker/` topic."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.latest: dict[str, bytes] = {}
        """The last payload seen on each topic, by its name under `$SYS/broker/`."""
        client.send(subscribe(1, [(f"{PREFIX}#", 0)], level=client.level))
        suback = client.expect(SUBACK)
        assert suback.reason_codes == [0], f"$SYS subscription refused: {suback}"

    def _next(self, deadline: float) -> str | None:
        """Read one packet before ``deadline``; the name it updated, None if it was no $SYS one.

        Raises TimeoutError once the deadline passed.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        pkt = self.client.read(left)
        if pkt.type != PUBLISH or pkt.topic is None or not pkt.topic.startswith(PREFIX):
            return None
        name = pkt.topic.removeprefix(PREFIX)
        self.latest[name] = pkt.payload
        return name

    def tree(self, names: Iterable[str], timeout: float = SYS_TIMEOUT) -> dict[str, bytes]:
        """The latest payload of every name in ``names``, once each was seen at least once."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while not wanted <= self.latest.keys():
            try:
                self._next(deadline)
            except TimeoutError:
                missing = sorted(wanted - self.latest.keys())
                raise AssertionError(f"$SYS/broker/: never saw {missing} in {timeout} s") from None
        return {name: self.latest[name] for name in wanted}

    def _wait(
        self,
        name: str,
        parse: Callable[[bytes], Number],
        accept: Callable[[Number], bool],
        timeout: float,
    ) -> Number:
        current = self.latest.get(name)
        if current is not None and accept(parse(current)):
            return parse(current)
        seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                updated = self._next(deadline)
            except TimeoutError:
                break
            if updated == name:
                payload = self.latest[name]
                seen.append(payload)
                if accept(parse(payload)):
                    return parse(payload)
        raise AssertionError(f"{PREFIX}{name}: no acceptable value in {timeout} s; saw {seen}")

    def wait(self, name: str, accept: Callable[[int], bool], timeout: float = SYS_TIMEOUT) -> int:
        """The first integer value of `$SYS/broker/<name>` that ``accept`` likes."""
        return self._wait(name, int, accept, timeout)

    def wait_rate(
        self, name: str, accept: Callable[[float], bool], timeout: float = SYS_TIMEOUT
    ) -> float:
        """The first rate (a decimal, as `load/...` are) of `<name>` that ``accept`` likes."""
        return self._wait(name, float, accept, timeout)

    def equals(self, name: str, expected: int) -> None:
        """Wait until `$SYS/broker/<name>` reads ``expected``."""
        self.wait(name, lambda value: value == expected)
