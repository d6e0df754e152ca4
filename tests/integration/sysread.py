"""Reading the broker's own `$SYS/broker/...` values from a test, over raw MQTT.

The limit and hostile-input tests check that each refusal is counted. The
counters are retained and refreshed every ``sys_interval`` seconds, so a
test waits until a value it expects shows up instead of sleeping, and fails
with the history of what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rawmqtt import PUBLISH, SUBACK, RawClient, subscribe

SYS_TIMEOUT = 6.0


class SysWatcher:
    """A connected raw client subscribed to every `$SYS/broker/` topic."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.latest: dict[str, bytes] = {}
        client.send(subscribe(1, [("$SYS/broker/#", 0)], level=client.level))
        suback = client.expect(SUBACK)
        assert suback.reason_codes == [0], f"$SYS subscription refused: {suback}"

    def wait(self, name: str, accept: Callable[[int], bool], timeout: float = SYS_TIMEOUT) -> int:
        """The first integer value of `$SYS/broker/<name>` that ``accept`` likes."""
        topic = f"$SYS/broker/{name}"
        seen: list[bytes] = []
        current = self.latest.get(topic)
        if current is not None and accept(int(current)):
            return int(current)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                pkt = self.client.read(left)
            except TimeoutError:
                break
            if pkt.type != PUBLISH or pkt.topic is None:
                continue
            self.latest[pkt.topic] = pkt.payload
            if pkt.topic == topic:
                seen.append(pkt.payload)
                if accept(int(pkt.payload)):
                    return int(pkt.payload)
        raise AssertionError(f"{topic}: no acceptable value in {timeout} s; saw {seen}")

    def equals(self, name: str, expected: int) -> None:
        """Wait until `$SYS/broker/<name>` reads ``expected``."""
        self.wait(name, lambda value: value == expected)
