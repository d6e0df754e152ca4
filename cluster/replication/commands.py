"""What travels in the Raft log: the commands, the records they carry, and their results.

Commands are small frozen dataclasses: they travel pickled through the Raft
log, one log entry carrying a batch of them. Writes on behalf of a client
carry the (node, epoch) of its claim and are ignored once another claim
superseded it, so a node that lost a client cannot clobber its new owner's
state ("fencing"). ``state.ClusterState`` applies them.

Pickle names a class by its module and name, so the module name is part of
the log format: journals on disk and entries from peers name these classes
``raftmq.cluster.state.<Class>``, the module they were first defined in.
They keep that name (``LOG_MODULE``) wherever the code lives.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any, NamedTuple

LOG_MODULE = "raftmq.cluster.state"
"""The module name every class of the log is pickled under."""

Properties = dict[str, Any]


# -- records held by the state ---------------------------------------------------


class StoredSubscription(NamedTuple):
    """One subscription of a persistent session, as SUBSCRIBE granted it.

    The node's ``Subscription`` holds the same options, and this record stays
    a type of its own on purpose: it travels in the Raft log, where pickle
    names every class by module and name (see ``LOG_MODULE``), so a node class
    here would tie the log format to the broker's internals. It also keeps
    the full filter (``$share/group/...``) as the client wrote it, where the
    node's record splits group and filter.
    """

    topic_filter: str
    """The full filter, ``$share/group/...`` included for shared subscriptions."""
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None


class SessionRecord(NamedTuple):
    """What of a persistent session follows its client from node to node.

    Queued and in-flight messages stay on the owner node; only the
    subscriptions and the expiry interval are replicated.
    """

    expiry_interval: int
    subscriptions: tuple[StoredSubscription, ...] = ()


class WillRecord(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties


class RetainedRecord(NamedTuple):
    payload: bytes
    qos: int
    properties: Properties
    expires_at: float | None = None
    """Wall-clock (time.time()) deadline, stamped by the publishing node, or None."""


class Owner(NamedTuple):
    node_id: str
    epoch: int


# -- commands ------------------------------------------------------------------


class _Compact:
    """Pickles as (class, field values).

    Every command is pickled once and unpickled on every node (twice with the
    event-loop mirror); this form is 2-3x faster both ways than a dataclass's
    default (a state tuple, then one setattr per field) and a little smaller.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), tuple([getattr(self, name) for name in self.__slots__]))


@dataclass(frozen=True, slots=True)
class SetMembers(_Compact):
    """The node ids of the cluster; persistent sessions are re-homed among them."""

    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeDown(_Compact):
    """``node_id`` is dead: its routes go, its sessions move, its wills go out.

    The times are the declaring node's wall clock, carried so that every
    replica computes the same will due times: ``last_seen``, when the node was
    last heard alive (a will delay counts from then), and ``declared_at``.
    ``incarnation`` is the SWIM incarnation it was declared dead at: a
    declaration at or below one already applied changes nothing (0: an
    operator's, applied unless the node is down already).
    """

    node_id: str
    last_seen: float = 0.0
    declared_at: float = 0.0
    incarnation: int = 0
    leaving: bool = False
    """The node itself says it goes (a graceful stop): its sessions move, no will goes
    out, and it is up again when it comes back."""

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        """Without the SWIM fields, pickled as before they existed: logs keep one form."""
        if not (self.last_seen or self.declared_at or self.incarnation or self.leaving):
            return (NodeDown, (self.node_id,))
        return _Compact.__reduce__(self)


@dataclass(frozen=True, slots=True)
class FireWill(_Compact):
    """A dead node's client's delayed will is due: the node that commits this publishes
    it, once (``ClusterState.delayed_wills``)."""

    client_id: str


@dataclass(frozen=True, slots=True)
class NodeUp(_Compact):
    node_id: str


@dataclass(frozen=True, slots=True)
class ClaimClient(_Compact):
    """A CONNECT on ``node_id``: the client id, its persistent session and its will move there.

    One command carries all three so that a CONNECT costs one commit: a clean
    start ends any previous session, a session expiry interval above zero
    keeps (or starts) one, and the will replaces the previous connection's.
    """

    client_id: str
    node_id: str
    clean_start: bool = True
    expiry_interval: int = 0
    will: WillRecord | None = None
    seen_epoch: int | None = None
    """The client's owner epoch the claimer had applied when it submitted (0: no owner).

    The claim takes effect only if that is still the owner's epoch when it
    commits: a claim whose CONNECT gave up and that commits late, after the
    client connected elsewhere, then changes nothing (issue 11). None: no fence.
    """

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Without a fence, the five fields of the entries written before it existed.
        values = (self.client_id, self.node_id, self.clean_start, self.expiry_interval, self.will)
        return (type(self), values if self.seen_epoch is None else (*values, self.seen_epoch))


@dataclass(frozen=True, slots=True)
class ReleaseClient(_Compact):
    client_id: str
    node_id: str
    epoch: int
    keep_session: bool = False
    """Give the client id back but keep its persistent session for its next CONNECT:
    a claim that committed after its CONNECT gave up (the client never got it)."""

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        values = (self.client_id, self.node_id, self.epoch)
        return (type(self), (*values, True) if self.keep_session else values)


@dataclass(frozen=True, slots=True)
class AddSessionSubscriptions(_Compact):
    """SUBSCRIBE on a persistent session; an existing filter gets its new options."""

    client_id: str
    node_id: str
    epoch: int
    subscriptions: tuple[StoredSubscription, ...]


@dataclass(frozen=True, slots=True)
class RemoveSessionSubscriptions(_Compact):
    client_id: str
    node_id: str
    epoch: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegisterWill(_Compact):
    """Record (or, with None, clear) the will of a client its writer owns."""

    client_id: str
    node_id: str
    epoch: int
    will: WillRecord | None


@dataclass(frozen=True, slots=True)
class AddRoute(_Compact):
    """The first local subscriber of (share_group, topic_filter) appeared on node_id.

    The fields keep the order the log has always had (pickled by position),
    which is not the order of ``RouteKey``.
    """

    node_id: str
    topic_filter: str
    share_group: str | None = None


@dataclass(frozen=True, slots=True)
class RemoveRoute(_Compact):
    node_id: str
    topic_filter: str
    share_group: str | None = None


@dataclass(frozen=True, slots=True)
class SetRetained(_Compact):
    """Set (or, with None, clear) the retained message of ``topic``."""

    topic: str
    retained: RetainedRecord | None


ROUTE_COMMANDS = (AddRoute, RemoveRoute, NodeDown)
"""Commands after which route lookups may answer differently."""


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimResult:
    epoch: int
    previous_owner: str | None
    previous_epoch: int | None
    session: SessionRecord | None
    """The persistent session the client resumes (as it was before this claim), or None:
    none existed, or the claim was a clean start."""


@dataclass(frozen=True, slots=True)
class ClaimFenced:
    """A claim that found another owner epoch than the one its claimer saw: no effect."""

    owner_epoch: int
    """The client's owner epoch now (0: no owner), for the claimer's next attempt."""


@dataclass(frozen=True, slots=True)
class NodeDownResult:
    wills: tuple[tuple[str, WillRecord], ...]
    """(client id, will) of the dead node's clients, to be published once."""
    rehomed: tuple[tuple[str, Owner], ...]
    """(client id, new owner) of the dead node's persistent sessions."""
    released: tuple[str, ...]
    """Client ids of the dead node that had no persistent session."""
    fence_epoch: int
    """An epoch above every claim so far: kicking with it disconnects any stale holder."""
    delayed: tuple[str, ...] = ()
    """Client ids whose wills wait for their delay (``FireWill``)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command the state could not apply; every replica rejects it alike."""

    reason: str


def _log_names(*classes: type) -> None:
    """Pickle ``classes`` under ``LOG_MODULE`` and let unpickling find them there."""
    module = sys.modules.get(LOG_MODULE)
    if module is None:
        module = types.ModuleType(LOG_MODULE, "The Raft log's name for the command classes.")
        sys.modules[LOG_MODULE] = module
    for cls in classes:
        cls.__module__ = LOG_MODULE
        setattr(module, cls.__name__, cls)


_log_names(
    StoredSubscription,
    WillRecord,
    RetainedRecord,
    SetMembers,
    NodeDown,
    FireWill,
    NodeUp,
    ClaimClient,
    ReleaseClient,
    AddSessionSubscriptions,
    RemoveSessionSubscriptions,
    RegisterWill,
    AddRoute,
    RemoveRoute,
    SetRetained,
)
