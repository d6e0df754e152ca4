"""Where a node keeps what must survive it: the storage hook and its two implementations.

The broker's in-memory objects are always the truth while the node runs.
A ``SessionStore`` is told about every change to the state that must
survive a crash -- persistent sessions with their subscriptions, expiry and
will, their queued and in-flight QoS 1/2 messages, the ids of incoming QoS 2
messages awaiting PUBREL, and retained messages -- and gives that state back
when the node starts.

``MemoryStore`` keeps nothing (``durability = "memory"``). ``SqliteStore``
journals every change into SQLite in WAL mode (``durability = "disk"``).

Group commit. Changes are not written one by one: the store collects the
changes of one event-loop turn and commits them in one transaction from a
``call_soon`` callback, the way ``MQTTConnection.write`` batches socket
writes. Within a turn, changes of one kind are bucketed so that each kind is
one ``executemany`` (see ``_LIFECYCLE``).

A packet that reports a change to a client (PUBACK/PUBREC to a publisher,
PUBCOMP, an outgoing QoS 2 PUBLISH with its packet id, a PUBREL, a SUBACK,
a CONNACK) must not leave before the change is durable, or a crash right
after it would break a promise the client relies on. So a connection whose
output depends on uncommitted changes is *held* (``hold``): its output stays
in its write buffer and the store releases it right after the commit.
Everything held in one turn goes out after one commit; the network never
waits for more than one transaction per turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .codec import MQTTProtocolError, decode_properties
from .message import Message
from .packets import Properties, Will
from .properties import encode_properties
from .session import Delivery, Subscription

if TYPE_CHECKING:
    from .connection import MQTTConnection
    from .session import Session

log = logging.getLogger("raftmq.store")

SCHEMA_VERSION = 1
DB_FILE = "state.sqlite3"
COMMIT_RETRY_SECONDS = 1.0
LOCK_WAIT_SECONDS = 2.0


class StoreError(OSError):
    """The store cannot be opened or read: the node must not start without its state.

    An OSError because, like a port that cannot be bound, it is a problem of
    the machine the node runs on, and the CLI reports it the same way.
    """


@dataclass(slots=True)
class StoredDelivery:
    delivery: Delivery
    packet_id: int | None
    """Set once the message was sent: it is in flight with this id."""
    released: bool
    """QoS 2: PUBREC received, PUBREL sent."""


@dataclass(slots=True)
class StoredSession:
    """A persistent session as the store last saw it."""

    client_id: str
    expiry_interval: int
    connected: bool
    """The client was connected when this was written: if the node crashed, it lost it."""
    expires_at: float | None
    """time.time() deadline of a disconnected session; None while connected or never."""
    will: Will | None
    will_at: float | None
    """time.time() at which a delayed will is due; None when no will is pending."""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    deliveries: list[StoredDelivery] = field(default_factory=list)
    """Queued and in-flight QoS 1/2 messages, in delivery order."""
    incoming_qos2: set[int] = field(default_factory=set)


@dataclass(slots=True)
class StoredState:
    sessions: list[StoredSession] = field(default_factory=list)
    retained: list[tuple[str, Message]] = field(default_factory=list)


class SessionStore(Protocol):
    """The storage hook: told every durable change, gives the state back at start.

    Session-scoped calls take the ``Session`` so the store can hold that
    session's connection until the change is committed.
    """

    durable: bool
    """False: nothing is kept, and the broker does not call the journal methods."""
    pending: bool
    """Changes were recorded that are not committed yet."""

    def open(self, loop: asyncio.AbstractEventLoop | None) -> StoredState:
        """Open (or create) the store; commits are scheduled on ``loop`` (None: by hand)."""

    def close(self) -> None:
        """Commit what is pending and release the store."""

    def commit(self) -> None:
        """Make every recorded change durable, then release the held connections."""

    def hold(self, conn: MQTTConnection) -> None:
        """If changes are pending, ``conn``'s output waits for their commit."""

    def save_session(self, session: Session) -> None: ...

    def delete_session(self, session: Session) -> None:
        """The session ended: its row, subscriptions, messages and QoS 2 ids go."""

    def save_subscription(self, session: Session, full_filter: str, sub: Subscription) -> None: ...

    def delete_subscription(self, session: Session, full_filter: str) -> None: ...

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        """A QoS 1/2 delivery joined the session's queue."""

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        """A QoS 1/2 delivery went in flight with ``packet_id`` (queued before or not)."""

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        """PUBREC arrived for a QoS 2 delivery: from now on only PUBREL is resent."""

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        """Completed, expired or dropped."""

    def add_incoming(self, session: Session, packet_id: int) -> None: ...

    def remove_incoming(self, session: Session, packet_id: int) -> None: ...

    def set_retained(self, topic: str, message: Message | None) -> None: ...


class MemoryStore:
    """``durability = "memory"``: nothing survives the process; the fast option."""

    durable = False
    pending = False

    def open(self, loop: asyncio.AbstractEventLoop | None) -> StoredState:
        return StoredState()

    def close(self) -> None:
        return None

    def commit(self) -> None:
        return None

    def hold(self, conn: MQTTConnection) -> None:
        return None

    def save_session(self, session: Session) -> None:
        return None

    def delete_session(self, session: Session) -> None:
        return None

    def save_subscription(self, session: Session, full_filter: str, sub: Subscription) -> None:
        return None

    def delete_subscription(self, session: Session, full_filter: str) -> None:
        return None

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        return None

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        return None

    def add_incoming(self, session: Session, packet_id: int) -> None:
        return None

    def remove_incoming(self, session: Session, packet_id: int) -> None:
        return None

    def set_retained(self, topic: str, message: Message | None) -> None:
        return None


_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry_interval INTEGER NOT NULL,
    connected INTEGER NOT NULL,
    expires_at REAL,
    will_topic TEXT,
    will_payload BLOB,
    will_qos INTEGER,
    will_retain INTEGER,
    will_properties BLOB,
    will_at REAL
) WITHOUT ROWID;
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    filter TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    identifier INTEGER,
    share_group TEXT,
    PRIMARY KEY (client_id, filter)
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires_at REAL
);
CREATE TABLE deliveries (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT NOT NULL,
    packet_id INTEGER,
    released INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;
CREATE TABLE incoming_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
"""

_SAVE_SESSION = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SAVE_SUBSCRIPTION = "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE client_id = ? AND filter = ?"
_INSERT_MESSAGE = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
_DELETE_MESSAGES = "DELETE FROM messages WHERE id BETWEEN ? AND ?"
_INSERT_DELIVERY = "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
_SEND_DELIVERY = "UPDATE deliveries SET packet_id = ? WHERE client_id = ? AND seq = ?"
_RELEASE_DELIVERY = "UPDATE deliveries SET released = 1 WHERE client_id = ? AND seq = ?"
_REMOVE_DELIVERIES = "DELETE FROM deliveries WHERE client_id = ? AND seq BETWEEN ? AND ?"
_ADD_INCOMING = "INSERT OR IGNORE INTO incoming_qos2 VALUES (?, ?)"
_REMOVE_INCOMING = "DELETE FROM incoming_qos2 WHERE client_id = ? AND packet_id = ?"
_SET_RETAINED = "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)"
_DELETE_RETAINED = "DELETE FROM retained WHERE topic = ?"
_DELETE_SESSION = tuple(
    f"DELETE FROM {table} WHERE client_id = ?"
    for table in ("sessions", "subscriptions", "deliveries", "incoming_qos2")
)
# The life of a stored message and its deliveries, in the order a row goes
# through it. Messages and deliveries get fresh keys and never come back, so
# a batch may apply all changes of one kind together in this order without
# changing the outcome for any row; that makes each kind one executemany.
_LIFECYCLE = (
    _INSERT_MESSAGE,
    _INSERT_DELIVERY,
    _SEND_DELIVERY,
    _RELEASE_DELIVERY,
    _REMOVE_DELIVERIES,
    _DELETE_MESSAGES,
)
_INSERT_MSG, _INSERT_DLV, _SEND_DLV, _RELEASE_DLV, _REMOVE_DLV, _DELETE_MSG = range(6)


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ``numbers`` as (first, last) runs of consecutive values.

    Deliveries complete mostly in order, so the deletes of a turn collapse
    into a few range deletes: SQLite still deletes each row, but Python binds
    and steps once per run instead of once per row.
    """
    runs: list[tuple[int, int]] = []
    first = last = numbers[0]
    for n in numbers[1:]:
        if n != last + 1:
            runs.append((first, last))
            first = n
        last = n
    runs.append((first, last))
    return runs


def _removed_deliveries(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """(client id, seq) rows as (client id, first seq, last seq) runs."""
    seqs: dict[str, list[int]] = {}
    for client_id, seq in rows:
        seqs.setdefault(client_id, []).append(seq)
    return [
        (client_id, first, last)
        for client_id, numbers in seqs.items()
        for first, last in _runs(sorted(numbers))
    ]


def _deleted_messages(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return _runs(sorted(mid for (mid,) in rows))


def _wall_deadline(monotonic_deadline: float | None) -> float | None:
    """A time.monotonic() deadline as time.time(): only wall time means anything after a restart."""
    if monotonic_deadline is None:
        return None
    return monotonic_deadline - time.monotonic() + time.time()


def _monotonic_deadline(wall_deadline: float | None) -> float | None:
    if wall_deadline is None:
        return None
    return wall_deadline - time.time() + time.monotonic()


def _decode_props(blob: bytes, context: str, where: str) -> Properties:
    try:
        with memoryview(blob) as mv:
            props, _ = decode_properties(mv, 0, len(blob), context)
    except MQTTProtocolError as exc:
        raise StoreError(f"{where}: stored properties are corrupt: {exc}") from None
    return props


class SqliteStore:
    """``durability = "disk"``: SQLite in WAL mode, one file in the node's data dir.

    ``synchronous = NORMAL``: a commit returns once its pages are written to
    the WAL file, without fsync. That survives kill -9 of the process (the
    writes are in the OS page cache, and SQLite recovers the WAL on the next
    open), which is the guarantee raftmq gives. It does not survive a power
    loss or kernel crash between a commit and the next checkpoint; ``FULL``
    would, at the price of one fsync per commit, which bounds every
    acknowledgement by the disk's flush latency.

    ``locking_mode = EXCLUSIVE`` keeps a second node from opening the same
    data dir while this one runs; the lock dies with the process.

    Commits run on the event-loop thread. A dedicated commit thread was
    measured (QoS 1 pairs with persistent subscribers, where SQLite is about
    a third of the broker's CPU time) and gave no clear gain on the 2-core
    reference machine, which the load generator shares; it would also need
    each held connection's output split per in-flight transaction, so that
    output of a later turn never overtakes it.
    """

    durable = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.pending = False
        self._db: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list[tuple[str, list[tuple[Any, ...]]]] = []
        """Statements with their rows, in the order they must run."""
        self._lifecycle: list[list[tuple[Any, ...]]] = [[] for _ in _LIFECYCLE]
        """Rows of the message/delivery statements not yet placed in ``_batch``."""
        self._incoming: dict[tuple[str, int], bool] = {}
        """(client id, packet id) -> present, for incoming QoS 2 ids: the last change wins."""
        self._retained: dict[str, tuple[Any, ...] | None] = {}
        """Topic -> retained row (None: cleared): the last change wins."""
        self._held: list[MQTTConnection] = []
        self._scheduled = False
        self._messages: dict[Message, list[int]] = {}
        """Stored message -> [row id, deliveries referring to it]: one row per fan-out."""
        self._next_message_id = 1

    # -- lifecycle -------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop | None) -> StoredState:
        self._loop = loop
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_WAIT_SECONDS)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        self._db = db
        try:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not at the first write
            self._check_schema(db)
            # Messages no delivery refers to any more (none normally: refs are exact).
            db.execute("DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries)")
            state = self._load(db)
            db.execute("COMMIT")
        except StoreError:
            self._abandon(db)
            raise
        except sqlite3.Error as exc:
            self._abandon(db)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StoreError(
                    f"{self.path}: the store is locked; is another node using this data_dir?"
                ) from None
            raise StoreError(f"{self.path}: cannot read the store: {exc}") from None
        return state

    def _abandon(self, db: sqlite3.Connection) -> None:
        db.close()
        self._db = None

    def _check_schema(self, db: sqlite3.Connection) -> None:
        tables = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            # One statement at a time: executescript() would commit the open
            # transaction first, and a half-made schema must not survive a crash.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            return
        if "schema_version" not in tables:
            raise StoreError(f"{self.path}: not a raftmq store (no schema_version table)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else None
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version}, but this raftmq reads "
                f"version {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        if self._db is None:
            return
        self.commit()
        if self.pending:
            log.error("%s: closing with changes that could not be written", self.path)
        self._db.close()
        self._db = None

    # -- reading it back -------------------------------------------------------

    def _load(self, db: sqlite3.Connection) -> StoredState:
        state = StoredState()
        for topic, payload, qos, props, expires_at in db.execute("SELECT * FROM retained"):
            properties = _decode_props(props, "PUBLISH", f"{self.path}: retained {topic!r}")
            message = Message(
                topic, payload, qos, True, properties, None, _monotonic_deadline(expires_at)
            )
            state.retained.append((topic, message))

        sessions: dict[str, StoredSession] = {}
        for client_id, expiry, connected, expires_at, *will_row, will_at in db.execute(
            "SELECT * FROM sessions ORDER BY client_id"
        ):
            topic, payload, qos, retain, props = will_row
            will = None
            if topic is not None:
                where = f"{self.path}: will of {client_id!r}"
                will = Will(topic, payload, qos, bool(retain), _decode_props(props, "WILL", where))
            sessions[client_id] = StoredSession(
                client_id, expiry, bool(connected), expires_at, will, will_at
            )
        state.sessions = list(sessions.values())

        for client_id, full_filter, topic_filter, qos, nl, rap, rh, ident, group in db.execute(
            "SELECT * FROM subscriptions"
        ):
            stored = sessions.get(client_id)
            if stored is not None:
                sub = Subscription(topic_filter, qos, bool(nl), bool(rap), rh, ident, group)
                stored.subscriptions[full_filter] = sub

        for client_id, packet_id in db.execute("SELECT * FROM incoming_qos2"):
            stored = sessions.get(client_id)
            if stored is not None:
                stored.incoming_qos2.add(packet_id)

        messages: dict[int, Message] = {}
        for mid, topic, payload, qos, retain, props, expires_at in db.execute(
            "SELECT * FROM messages"
        ):
            properties = _decode_props(props, "PUBLISH", f"{self.path}: message {mid}")
            messages[mid] = Message(
                topic, payload, qos, bool(retain), properties, None, _monotonic_deadline(expires_at)
            )
            self._next_message_id = max(self._next_message_id, mid + 1)

        for client_id, seq, mid, qos, retain, sub_ids, packet_id, released in db.execute(
            "SELECT * FROM deliveries ORDER BY client_id, seq"
        ):
            stored = sessions.get(client_id)
            message = messages.get(mid)
            if stored is None or message is None:
                raise StoreError(
                    f"{self.path}: delivery {seq} of {client_id!r} refers to a missing "
                    f"{'session' if stored is None else f'message {mid}'}"
                )
            ids = tuple(int(i) for i in sub_ids.split(",")) if sub_ids else ()
            delivery = Delivery(message, qos, bool(retain), ids, seq)
            stored.deliveries.append(StoredDelivery(delivery, packet_id, bool(released)))
            entry = self._messages.get(message)
            if entry is None:
                self._messages[message] = [mid, 1]
            else:
                entry[1] += 1
        return state

    # -- committing ------------------------------------------------------------

    def _changed(self) -> None:
        """Something is pending: commit it at the end of this loop turn."""
        self.pending = True
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._commit_turn)

    def _record(self, sql: str, params: tuple[Any, ...]) -> None:
        """A change to a session or its subscriptions: it runs after every change
        recorded before it (a session can end and start again in one turn)."""
        self._seal()
        batch = self._batch
        if batch and batch[-1][0] == sql:
            batch[-1][1].append(params)
        else:
            batch.append((sql, [params]))
        if not self.pending:
            self._changed()

    def _seal(self) -> None:
        """Move the bucketed changes (messages, deliveries, incoming QoS 2 ids,
        retained messages) into the batch, after everything already in it."""
        batch = self._batch
        lifecycle = self._lifecycle
        if lifecycle[_REMOVE_DLV]:
            lifecycle[_REMOVE_DLV] = _removed_deliveries(lifecycle[_REMOVE_DLV])
        if lifecycle[_DELETE_MSG]:
            lifecycle[_DELETE_MSG] = _deleted_messages(lifecycle[_DELETE_MSG])
        for index, sql in enumerate(_LIFECYCLE):
            rows = lifecycle[index]
            if rows:
                batch.append((sql, rows))
                lifecycle[index] = []
        incoming = self._incoming
        if incoming:
            added = [key for key, present in incoming.items() if present]
            removed = [key for key, present in incoming.items() if not present]
            if added:
                batch.append((_ADD_INCOMING, added))
            if removed:
                batch.append((_REMOVE_INCOMING, removed))
            incoming.clear()
        retained = self._retained
        if retained:
            rows = [row for row in retained.values() if row is not None]
            cleared = [(topic,) for topic, row in retained.items() if row is None]
            if rows:
                batch.append((_SET_RETAINED, rows))
            if cleared:
                batch.append((_DELETE_RETAINED, cleared))
            retained.clear()

    def _commit_turn(self) -> None:
        self._scheduled = False
        if self._db is not None:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            db = self._db
            if db is None:
                raise StoreError(f"{self.path}: store used after close()")
            self._seal()
            try:
                db.execute("BEGIN")
                for sql, rows in self._batch:
                    db.executemany(sql, rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.rollback()
                self._commit_failed(exc)
                return
            self._batch = []
            self.pending = False
        held = self._held
        if held:
            self._held = []
            for conn in held:
                conn.release_output()

    def _commit_failed(self, exc: sqlite3.Error) -> None:
        """Keep the changes and the held connections, and try again: nothing that is
        not durable may be acknowledged, and a full disk may get space back."""
        log.error(
            "%s: commit of %d changes failed (%s); acknowledgements wait, retrying in %ss",
            self.path,
            sum(len(rows) for _, rows in self._batch),
            exc,
            COMMIT_RETRY_SECONDS,
        )
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_later(COMMIT_RETRY_SECONDS, self._commit_turn)

    def hold(self, conn: MQTTConnection) -> None:
        if self.pending and not conn.awaiting_commit:
            conn.awaiting_commit = True
            self._held.append(conn)

    def _hold_session(self, session: Session) -> None:
        conn = session.connection
        if conn is not None and not conn.awaiting_commit:
            conn.awaiting_commit = True
            self._held.append(conn)

    # -- sessions --------------------------------------------------------------

    def save_session(self, session: Session) -> None:
        will = session.will
        if will is None:
            will_row: tuple[Any, ...] = (None, None, None, None, None, None)
        else:
            props = encode_properties(will.properties, "WILL")
            will_row = (will.topic, will.payload, will.qos, will.retain, props, session.will_at)
        connected = session.connection is not None
        self._record(
            _SAVE_SESSION,
            (
                session.client_id,
                session.expiry_interval,
                connected,
                None if connected else session.expires_at,
                *will_row,
            ),
        )
        self._hold_session(session)

    def delete_session(self, session: Session) -> None:
        client_id = session.client_id
        for sql in _DELETE_SESSION:
            self._record(sql, (client_id,))
        for delivery in self._stored(session):
            self._release_message(delivery.message)
            delivery.seq = 0
        self._hold_session(session)

    @staticmethod
    def _stored(session: Session) -> Iterable[Delivery]:
        for delivery in session.queue:
            if delivery.seq:
                yield delivery
        for entry in session.outgoing.values():
            if entry.delivery.seq:
                yield entry.delivery

    def save_subscription(self, session: Session, full_filter: str, sub: Subscription) -> None:
        self._record(
            _SAVE_SUBSCRIPTION,
            (
                session.client_id,
                full_filter,
                sub.topic_filter,
                sub.qos,
                sub.no_local,
                sub.retain_as_published,
                sub.retain_handling,
                sub.identifier,
                sub.share_group,
            ),
        )
        self._hold_session(session)

    def delete_subscription(self, session: Session, full_filter: str) -> None:
        self._record(_DELETE_SUBSCRIPTION, (session.client_id, full_filter))
        self._hold_session(session)

    # -- deliveries ------------------------------------------------------------

    def _message_id(self, message: Message) -> int:
        entry = self._messages.get(message)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        mid = self._next_message_id
        self._next_message_id = mid + 1
        self._messages[message] = [mid, 1]
        self._lifecycle[_INSERT_MSG].append(
            (
                mid,
                message.topic,
                message.payload,
                message.qos,
                message.retain,
                encode_properties(message.properties, "PUBLISH"),
                _wall_deadline(message.expires_at),
            ),
        )
        return mid

    def _release_message(self, message: Message) -> None:
        entry = self._messages[message]
        entry[1] -= 1
        if not entry[1]:
            del self._messages[message]
            self._lifecycle[_DELETE_MSG].append((entry[0],))

    def _step(self, index: int, params: tuple[Any, ...], session: Session) -> None:
        """One step in the life of a delivery; the session's output waits for it."""
        self._lifecycle[index].append(params)
        if not self.pending:
            self._changed()
        conn = session.connection
        if conn is not None and not conn.awaiting_commit:
            conn.awaiting_commit = True
            self._held.append(conn)

    def _insert(self, session: Session, delivery: Delivery, packet_id: int | None) -> None:
        seq = session.next_seq
        session.next_seq = seq + 1
        delivery.seq = seq
        ids = delivery.subscription_ids
        row = (
            session.client_id,
            seq,
            self._message_id(delivery.message),
            delivery.qos,
            delivery.retain,
            ",".join(map(str, ids)) if ids else "",
            packet_id,
        )
        self._step(_INSERT_DLV, row, session)

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        self._insert(session, delivery, None)

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        if not delivery.seq:
            self._insert(session, delivery, packet_id)
            return
        self._step(_SEND_DLV, (packet_id, session.client_id, delivery.seq), session)

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        if delivery.seq:
            self._step(_RELEASE_DLV, (session.client_id, delivery.seq), session)

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        """Nothing the client is sent depends on this: a completion lost in a crash
        only means a QoS 1 message comes again, or a QoS 2 one gets its PUBREL again."""
        if delivery.seq:
            self._lifecycle[_REMOVE_DLV].append((session.client_id, delivery.seq))
            self._release_message(delivery.message)
            delivery.seq = 0
            if not self.pending:
                self._changed()

    # -- incoming QoS 2 and retained -------------------------------------------

    def add_incoming(self, session: Session, packet_id: int) -> None:
        self._incoming_change(session, packet_id, True)

    def remove_incoming(self, session: Session, packet_id: int) -> None:
        self._incoming_change(session, packet_id, False)

    def _incoming_change(self, session: Session, packet_id: int, present: bool) -> None:
        self._incoming[(session.client_id, packet_id)] = present
        if not self.pending:
            self._changed()
        self._hold_session(session)

    def set_retained(self, topic: str, message: Message | None) -> None:
        row = None
        if message is not None:
            props = encode_properties(message.properties, "PUBLISH")
            expires_at = _wall_deadline(message.expires_at)
            row = (topic, message.payload, message.qos, props, expires_at)
        self._retained[topic] = row
        if not self.pending:
            self._changed()


def make_store(durability: str, data_dir: str) -> SessionStore:
    """The store ``durability`` names, for a node whose data dir is ``data_dir``."""
    if durability == "memory":
        return MemoryStore()
    return SqliteStore(os.path.join(data_dir, DB_FILE))
