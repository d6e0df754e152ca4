"""The fault suite's pytest fixtures and hooks, as a plugin module.

``tests/faults/conftest.py`` imports them; a separate pytest run can load them with
``-p labfixtures`` (``test_lab_teardown.py`` does, to SIGTERM a run mid-test).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from lab import Lab

LAB_NODES = 3


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (``timeout``, CI cancelling a job) becomes KeyboardInterrupt.

    pytest runs fixture finalizers on KeyboardInterrupt but dies on a plain SIGTERM,
    which would leave namespaces, a bridge and node processes behind.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session", autouse=True)
def fault_lab_available() -> None:
    """Skip every fault test, with the reason, where no lab can be built."""
    reason = Lab.available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A 3-node lab with a Raft leader elected; torn down after the test, whatever happens."""
    with Lab(tmp_path / "lab", nodes=LAB_NODES) as running:
        running.wait_for_leader()
        yield running
