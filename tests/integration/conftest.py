"""Fixtures shared by the integration tests that drive paho clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clients import ClientPool


@pytest.fixture
def clients() -> Iterator[ClientPool]:
    """paho clients made through the pool are disconnected after the test, even on failure."""
    pool = ClientPool()
    yield pool
    pool.close()
