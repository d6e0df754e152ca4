"""The SQLite store's file format: its tables and statements, and how it is read back.

``sqlite_store.SqliteStore`` writes through the statements defined here and
reads the file back through ``load``. Columns are listed in table order, so a
statement's placeholders and the ``CREATE TABLE`` they write go together.
Deadlines are stored as time.time() values (``wall_deadline``): a
time.monotonic() deadline means nothing after a restart.
"""

from __future__ import annotations

import sqlite3
import time

from .message import Message
from .packets import Properties, Will
from .properties import decode_properties
from .session import Delivery, Subscription
from .store_records import StoredDelivery, StoredSession, StoredState, StoreError
from .wire import MQTTProtocolError

SCHEMA_VERSION = 2
"""2: messages keep their identity (origin, origin_seq), so that a node restarting
after a crash hands back what it held with the identities the new owner dedupes by.
A version 1 file is upgraded in place (its messages get no identity)."""

SCHEMA = """
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
    expires_at REAL,
    origin TEXT NOT NULL DEFAULT '',
    origin_seq INTEGER NOT NULL DEFAULT 0
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

SAVE_SESSION = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
SAVE_SUBSCRIPTION = "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE client_id = ? AND filter = ?"
INSERT_MESSAGE = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_MESSAGES = "DELETE FROM messages WHERE id BETWEEN ? AND ?"
INSERT_DELIVERY = "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
SEND_DELIVERY = "UPDATE deliveries SET packet_id = ? WHERE client_id = ? AND seq = ?"
RELEASE_DELIVERY = "UPDATE deliveries SET released = 1 WHERE client_id = ? AND seq = ?"
REMOVE_DELIVERIES = "DELETE FROM deliveries WHERE client_id = ? AND seq BETWEEN ? AND ?"
ADD_INCOMING = "INSERT OR IGNORE INTO incoming_qos2 VALUES (?, ?)"
REMOVE_INCOMING = "DELETE FROM incoming_qos2 WHERE client_id = ? AND packet_id = ?"
SET_RETAINED = "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)"
DELETE_RETAINED = "DELETE FROM retained WHERE topic = ?"
DELETE_SESSION = tuple(
    f"DELETE FROM {table} WHERE client_id = ?"
    for table in ("sessions", "subscriptions", "deliveries", "incoming_qos2")
)
# The life of a stored message and its deliveries, in the order a row goes
# through it. Messages and deliveries get fresh keys and never come back, so
# a batch may apply all changes of one kind together in this order without
# changing the outcome for any row; that makes each kind one executemany.
LIFECYCLE = (
    INSERT_MESSAGE,
    INSERT_DELIVERY,
    SEND_DELIVERY,
    RELEASE_DELIVERY,
    REMOVE_DELIVERIES,
    DELETE_MESSAGES,
)
INSERT_MSG, INSERT_DLV, SEND_DLV, RELEASE_DLV, REMOVE_DLV, DELETE_MSG = range(6)


def wall_deadline(monotonic_deadline: float | None) -> float | None:
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


def check_schema(db: sqlite3.Connection, path: str) -> None:
    """Create the tables in an empty file, or check that the file holds this version of them."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        # One statement at a time: executescript() would commit the open
        # transaction first, and a half-made schema must not survive a crash.
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        return
    if "schema_version" not in tables:
        raise StoreError(f"{path}: not a raftmq store (no schema_version table)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else None
    if version == 1:
        for column in ("origin TEXT NOT NULL DEFAULT ''", "origin_seq INTEGER NOT NULL DEFAULT 0"):
            db.execute(f"ALTER TABLE messages ADD COLUMN {column}")
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        return
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema version {version}, but this raftmq reads "
            f"version {SCHEMA_VERSION}"
        )


def load(
    db: sqlite3.Connection, path: str, refs: dict[Message, list[int]], next_message_id: int
) -> tuple[StoredState, int]:
    """Everything the file holds, as records, and the next free message row id.

    ``refs`` (stored message -> [row id, deliveries referring to it]) gets an
    entry for every stored message a loaded delivery refers to.
    """
    state = StoredState()
    for topic, payload, qos, props, expires_at in db.execute("SELECT * FROM retained"):
        properties = _decode_props(props, "PUBLISH", f"{path}: retained {topic!r}")
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
            where = f"{path}: will of {client_id!r}"
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
    for mid, topic, payload, qos, retain, props, expires_at, origin, seq in db.execute(
        "SELECT * FROM messages"
    ):
        properties = _decode_props(props, "PUBLISH", f"{path}: message {mid}")
        deadline = _monotonic_deadline(expires_at)
        message = Message(topic, payload, qos, bool(retain), properties, None, deadline)
        message.origin, message.seq = origin, seq
        messages[mid] = message
        next_message_id = max(next_message_id, mid + 1)

    for client_id, seq, mid, qos, retain, sub_ids, packet_id, released in db.execute(
        "SELECT * FROM deliveries ORDER BY client_id, seq"
    ):
        stored = sessions.get(client_id)
        message = messages.get(mid)
        if stored is None or message is None:
            raise StoreError(
                f"{path}: delivery {seq} of {client_id!r} refers to a missing "
                f"{'session' if stored is None else f'message {mid}'}"
            )
        ids = tuple(int(i) for i in sub_ids.split(",")) if sub_ids else ()
        delivery = Delivery(message, qos, bool(retain), ids, seq)
        stored.deliveries.append(StoredDelivery(delivery, packet_id, bool(released)))
        entry = refs.get(message)
        if entry is None:
            refs[message] = [mid, 1]
        else:
            entry[1] += 1
    return state, next_message_id
