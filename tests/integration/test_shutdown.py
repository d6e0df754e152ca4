"""A node stopped by SIGTERM or SIGINT tells v5 clients why and exits cleanly."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from rawmqtt import DISCONNECT, RawClients, raw_clients

if TYPE_CHECKING:
    from conftest import RunningBroker

SERVER_SHUTTING_DOWN = 0x8B


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_disconnects_v5_clients_with_0x8b(
    broker_factory: Callable[..., RunningBroker], sig: int
) -> None:
    broker = broker_factory()
    raw: RawClients
    with raw_clients(broker.host, broker.port) as raw:
        v5 = raw.connected("shutdown-v5")
        v3 = raw.connected("shutdown-v3", level=4)
        broker.proc.send_signal(sig)
        received = v5.read_until_closed()
        assert [(p.type, p.reason_code) for p in received] == [(DISCONNECT, SERVER_SHUTTING_DOWN)]
        assert v3.read_until_closed() == []
    assert broker.proc.wait(10) == 0
