"""Fixtures shared by the integration tests that drive paho clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest
from clients import ClientPool
from clusterkit import Cluster, NodeClients, start_cluster

if TYPE_CHECKING:
    from conftest import RunningBroker


@pytest.fixture
def clients() -> Iterator[ClientPool]:
    """paho clients made through the pool are disconnected after the test, even on failure."""
    pool = ClientPool()
    yield pool
    pool.close()


@pytest.fixture
def cluster(broker_factory: Callable[..., RunningBroker]) -> Cluster:
    """Three `raftmq node` processes (n1, n2, n3) on loopback; stopped by broker_factory."""
    return start_cluster(broker_factory)


@pytest.fixture
def node_clients() -> Iterator[NodeClients]:
    """Raw MQTT clients of cluster nodes, all closed after the test."""
    with ExitStack() as opened:
        yield NodeClients(opened)
