"""pytest fixtures that run a real raftmq broker inside the test process.

Registered through the ``pytest11`` entry point, so any project with raftmq
installed can use ``raftmq_broker`` without a conftest. The broker runs in a
thread with its own event loop, which works the same for sync tests and for
async tests, whatever loop the test itself runs on.

To change settings, override ``raftmq_broker_config`` in a conftest, either
by changing the default ``Config``::

    @pytest.fixture
    def raftmq_broker_config(raftmq_broker_config):
        raftmq_broker_config.max_inflight = 5
        return raftmq_broker_config

or by returning a dict of config keys, as a TOML file would hold them, which
replace the fixture's defaults (loopback, a free port, a fresh data dir) key
by key::

    @pytest.fixture
    def raftmq_broker_config():
        return {"max_inflight": 5, "listen": ["mqtt://127.0.0.1:0"]}

Either way the result goes through the loader's checks, so a bad value fails
the test with the ``ConfigError`` a config file would give, naming the key.
"""

import asyncio
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvloop

from raftmq.node.config import Config, ConfigError, config_table, load_config, parse_listen

if TYPE_CHECKING:
    from raftmq.node.broker import Broker

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
FIXTURE_ORIGIN = "raftmq_broker_config fixture"
"""Where a bad value came from, in the ConfigError, as a file's path would be."""


@dataclass(frozen=True, slots=True)
class RaftmqBroker:
    """A running broker and where to reach it (its first listener).

    ``broker`` belongs to ``loop``, in another thread: call its coroutines
    with ``asyncio.run_coroutine_threadsafe(coro, loop)``, never directly.
    """

    broker: "Broker"
    loop: asyncio.AbstractEventLoop
    host: str
    port: int
    url: str


class _BrokerThread(threading.Thread):
    def __init__(self, config: Config) -> None:
        # Daemon, so that a broker that will not stop cannot keep pytest alive.
        super().__init__(name=f"raftmq-broker-{config.node_id}", daemon=True)
        self.config = config
        self.started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broker: Broker | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            # Imported here, not at module level: pytest loads this plugin in every
            # run, and a broken broker must fail the tests that use it, not pytest.
            from raftmq.node.broker import Broker

            self.broker = Broker(self.config)
            await self.broker.start()
        except Exception as exc:
            self.error = exc
            return
        finally:
            self.started.set()
        await self.broker.wait_closed()


def _fixture_defaults(tmp_path: Path) -> dict[str, object]:
    return {"listen": ["tcp://127.0.0.1:0"], "data_dir": str(tmp_path / "raftmq-data")}


@pytest.fixture
def raftmq_broker_config(tmp_path: Path) -> Config:
    """Settings for ``raftmq_broker``: loopback, a free port, a fresh data dir."""
    return load_config(overrides=_fixture_defaults(tmp_path), origin=FIXTURE_ORIGIN)


def checked_config(settings: object, tmp_path: Path) -> Config:
    """The broker's Config from what ``raftmq_broker_config`` returned, checked as a file is.

    A Config may have been changed in code after loading, so its values are
    read back as TOML values and loaded again; a dict is loaded over the
    fixture's defaults. Both go through ``load_config``: one validator, one
    set of messages.
    """
    if isinstance(settings, Config):
        table = config_table(settings)
    elif isinstance(settings, Mapping):
        table = {**_fixture_defaults(tmp_path), **settings}
    else:
        raise ConfigError(
            f"{FIXTURE_ORIGIN}: expected a raftmq Config or a dict of config keys, "
            f"got {type(settings).__name__}"
        )
    return load_config(overrides=table, origin=FIXTURE_ORIGIN)


@pytest.fixture
def raftmq_broker(raftmq_broker_config: object, tmp_path: Path) -> Iterator[RaftmqBroker]:
    """A broker running for the duration of one test, stopped gracefully after it."""
    thread = _BrokerThread(checked_config(raftmq_broker_config, tmp_path))
    thread.start()
    if not thread.started.wait(START_TIMEOUT):
        pytest.fail(f"raftmq broker did not start within {START_TIMEOUT:g} s")
    if thread.error is not None:
        raise thread.error
    assert thread.broker is not None and thread.loop is not None
    url = thread.broker.addresses[0]
    address = parse_listen(url, source="broker address")
    yield RaftmqBroker(thread.broker, thread.loop, address.host, address.port, url)

    if not thread.is_alive():
        pytest.fail("raftmq broker thread ended before the test was over")
    stopping = asyncio.run_coroutine_threadsafe(thread.broker.stop(), thread.loop)
    stopping.result(STOP_TIMEOUT)
    thread.join(STOP_TIMEOUT)
    if thread.is_alive():
        pytest.fail(f"raftmq broker thread did not end within {STOP_TIMEOUT:g} s of stop()")
