"""What the parts of one node share: its settings, counters, cluster, store and observers.

The broker makes one ``NodeContext`` and hands it to each part it builds
(``broker.py``). A ``NodePart`` copies it into plain attributes, because the
PUBLISH path reads them for every message and one more indirection there
is measurable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .acl import AccessControl
from .background import Background
from .config import Config
from .extensions import Extensions
from .hooks import ClusterHooks
from .message import Message, MessageStamps
from .retained import RetainedStore
from .stats import Stats
from .store import SessionStore


@dataclass(slots=True, frozen=True)
class NodeContext:
    config: Config
    stats: Stats
    hooks: ClusterHooks
    """The cluster this node belongs to (``hooks.LocalCluster`` alone)."""
    store: SessionStore
    retained: RetainedStore[Message]
    acl: AccessControl | None
    background: Background
    extensions: Extensions
    stamps: MessageStamps
    """Identities for the messages published here."""


class NodePart:
    """A part of the broker, holding the node's shared context."""

    def __init__(self, node: NodeContext) -> None:
        self.config = node.config
        self.stats = node.stats
        self.hooks = node.hooks
        self.store = node.store
        self.retained = node.retained
        self.acl = node.acl
        self.background = node.background
        self.extensions = node.extensions
        self.stamps = node.stamps
