"""One raftmq broker node: MQTT codec, sessions, topic index and listeners.

``async with raftmq.node.Broker(config) as broker:`` runs a node inside
another asyncio program; ``load_config`` builds its configuration.
"""

from .broker import Broker
from .config import Config, ConfigError, load_config

__all__ = ["Broker", "Config", "ConfigError", "load_config"]
