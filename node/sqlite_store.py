"""``durability = "disk"``: the store that journals every durable change into SQLite.

Group commit. Changes are not written one by one: the store collects the
changes of one event-loop turn and commits them in one transaction from a
``call_soon`` callback, the way the connection driver batches socket
writes. Within a turn, changes of one kind are bucketed so that each kind is
one ``executemany`` (see ``sqlite_schema.LIFECYCLE``).

A connection whose output depends on uncommitted changes is held until the
commit (see ``store``). The tables, the statements and reading the file back
are in ``sqlite_schema``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .message import Message
from .properties import encode_properties
from .session import Delivery, Subscription
from .sqlite_schema import (
    ADD_INCOMING,
    DELETE_MSG,
    DELETE_RETAINED,
    DELETE_SESSION,
    DELETE_SUBSCRIPTION,
    INSERT_DLV,
    INSERT_MSG,
    LIFECYCLE,
    RELEASE_DLV,
    REMOVE_DLV,
    REMOVE_INCOMING,
    SAVE_SESSION,
    SAVE_SUBSCRIPTION,
    SEND_DLV,
    SET_RETAINED,
    check_schema,
    load,
    wall_deadline,
)
from .store_records import StoredState, StoreError

if TYPE_CHECKING:
    from .session import Outbox, Session

log = logging.getLogger("raftmq.store")

DB_FILE = "state.sqlite3"
COMMIT_RETRY_SECONDS = 1.0
LOCK_WAIT_SECONDS = 2.0


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
        self._lifecycle: list[list[tuple[Any, ...]]] = [[] for _ in LIFECYCLE]
        """Rows of the message/delivery statements not yet placed in ``_batch``."""
        self._incoming: dict[tuple[str, int], bool] = {}
        """(client id, packet id) -> present, for incoming QoS 2 ids: the last change wins."""
        self._retained: dict[str, tuple[Any, ...] | None] = {}
        """Topic -> retained row (None: cleared): the last change wins."""
        self._held: list[Outbox] = []
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
            check_schema(db, self.path)
            # Messages no delivery refers to any more (none normally: refs are exact).
            db.execute("DELETE FROM messages WHERE id NOT IN (SELECT message_id FROM deliveries)")
            state, self._next_message_id = load(
                db, self.path, self._messages, self._next_message_id
            )
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

    def close(self) -> None:
        if self._db is None:
            return
        self.commit()
        if self.pending:
            log.error("%s: closing with changes that could not be written", self.path)
        self._db.close()
        self._db = None

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
        if lifecycle[REMOVE_DLV]:
            lifecycle[REMOVE_DLV] = _removed_deliveries(lifecycle[REMOVE_DLV])
        if lifecycle[DELETE_MSG]:
            lifecycle[DELETE_MSG] = _deleted_messages(lifecycle[DELETE_MSG])
        for index, sql in enumerate(LIFECYCLE):
            rows = lifecycle[index]
            if rows:
                batch.append((sql, rows))
                lifecycle[index] = []
        incoming = self._incoming
        if incoming:
            added = [key for key, present in incoming.items() if present]
            removed = [key for key, present in incoming.items() if not present]
            if added:
                batch.append((ADD_INCOMING, added))
            if removed:
                batch.append((REMOVE_INCOMING, removed))
            incoming.clear()
        retained = self._retained
        if retained:
            rows = [row for row in retained.values() if row is not None]
            cleared = [(topic,) for topic, row in retained.items() if row is None]
            if rows:
                batch.append((SET_RETAINED, rows))
            if cleared:
                batch.append((DELETE_RETAINED, cleared))
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
            for outbox in held:
                outbox.release_output()

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

    def hold(self, outbox: Outbox) -> None:
        if self.pending and not outbox.awaiting_commit:
            outbox.awaiting_commit = True
            self._held.append(outbox)

    def _hold_session(self, session: Session) -> None:
        """The session's client output waits for the commit of what changed."""
        outbox = session.connection
        if outbox is not None and not outbox.awaiting_commit:
            outbox.awaiting_commit = True
            self._held.append(outbox)

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
            SAVE_SESSION,
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
        for sql in DELETE_SESSION:
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
            SAVE_SUBSCRIPTION,
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
        self._record(DELETE_SUBSCRIPTION, (session.client_id, full_filter))
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
        self._lifecycle[INSERT_MSG].append(
            (
                mid,
                message.topic,
                message.payload,
                message.qos,
                message.retain,
                encode_properties(message.properties, "PUBLISH"),
                wall_deadline(message.expires_at),
                message.origin,
                message.seq,
            ),
        )
        return mid

    def _release_message(self, message: Message) -> None:
        entry = self._messages[message]
        entry[1] -= 1
        if not entry[1]:
            del self._messages[message]
            self._lifecycle[DELETE_MSG].append((entry[0],))

    def _step(self, index: int, params: tuple[Any, ...], session: Session) -> None:
        """One step in the life of a delivery; the session's output waits for it."""
        self._lifecycle[index].append(params)
        if not self.pending:
            self._changed()
        self._hold_session(session)

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
        self._step(INSERT_DLV, row, session)

    def queue_delivery(self, session: Session, delivery: Delivery) -> None:
        self._insert(session, delivery, None)

    def send_delivery(self, session: Session, delivery: Delivery, packet_id: int) -> None:
        if not delivery.seq:
            self._insert(session, delivery, packet_id)
            return
        self._step(SEND_DLV, (packet_id, session.client_id, delivery.seq), session)

    def release_delivery(self, session: Session, delivery: Delivery) -> None:
        if delivery.seq:
            self._step(RELEASE_DLV, (session.client_id, delivery.seq), session)

    def remove_delivery(self, session: Session, delivery: Delivery) -> None:
        """Nothing the client is sent depends on this: a completion lost in a crash
        only means a QoS 1 message comes again, or a QoS 2 one gets its PUBREL again."""
        if delivery.seq:
            self._lifecycle[REMOVE_DLV].append((session.client_id, delivery.seq))
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
            expires_at = wall_deadline(message.expires_at)
            row = (topic, message.payload, message.qos, props, expires_at)
        self._retained[topic] = row
        if not self.pending:
            self._changed()
