"""SqliteStore: every kind of state round trips, survives a killed process, and is versioned."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from raftmq.node.message import Message
from raftmq.node.packets import Will
from raftmq.node.session import Delivery, Session, Subscription
from raftmq.node.sqlite_schema import SCHEMA_VERSION
from raftmq.node.sqlite_store import DB_FILE, SqliteStore
from raftmq.node.store import MemoryStore, make_store
from raftmq.node.store_records import StoredSession, StoredState, StoreError


class FakeConnection:
    """A session.Outbox for the store and the session: held output and a window."""

    def __init__(self) -> None:
        self.awaiting_commit = False
        self.released = 0
        self.send_window = 10
        self.stalled = False
        self.sent: list[tuple[bytes, int | None, bool]] = []

    def release_output(self) -> None:
        self.awaiting_commit = False
        self.released += 1

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> None:
        self.sent.append((delivery.message.payload, packet_id, dup))

    def send_pubrel(self, packet_id: int) -> None:
        self.sent.append((b"PUBREL", packet_id, False))


def new_session(client_id: str, store: SqliteStore | None = None) -> Session:
    session = Session(client_id, max_queued=100, overflow_drops_oldest=False, queue_qos0=False)
    session.expiry_interval = 3600
    session.store = store
    return session


def opened(path: Path) -> tuple[SqliteStore, StoredState]:
    store = SqliteStore(str(path))
    return store, store.open(None)


def by_id(state: StoredState) -> dict[str, StoredSession]:
    return {s.client_id: s for s in state.sessions}


def count(store: SqliteStore, table: str) -> int:
    """Rows in ``table``, read through the store's connection: it holds the file locked."""
    assert store._db is not None
    return int(store._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_every_kind_of_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    store, state = opened(path)
    assert state.sessions == [] and state.retained == []

    will = Will("wills/a", b"gone", 1, True, {"will_delay_interval": 30, "content_type": "text"})
    a = new_session("a", store)
    a.will = will
    a.will_at = 1_900_000_000.5
    a.expires_at = 1_900_000_100.25
    store.save_session(a)
    full = Subscription("x/+/z", 2, True, True, 2, 7)
    shared = Subscription("s/#", 1, share_group="g")
    store.save_subscription(a, "x/+/z", full)
    store.save_subscription(a, "$share/g/s/#", shared)

    props = {"user_property": [("k", "v"), ("k", "w")], "correlation_data": b"\x00\x01"}
    fanned = Message.create("x/y/z", b"one message, two sessions", 2, False, props)
    expiring = Message.create("x/y/z", b"expiring", 1, False, {"message_expiry_interval": 600})
    in_flight = Delivery(fanned, 2, False, (7, 9))
    released = Delivery(expiring, 1, True)
    queued = Delivery(Message.create("q", b"queued", 1, False), 1, False)
    store.send_delivery(a, in_flight, 11)
    store.send_delivery(a, released, 12)
    store.release_delivery(a, released)
    store.queue_delivery(a, queued)
    store.add_incoming(a, 5)
    store.add_incoming(a, 6)
    store.remove_incoming(a, 5)

    b = new_session("b", store)
    b.expiry_interval = 0xFFFFFFFF
    store.save_session(b)
    store.queue_delivery(b, Delivery(fanned, 1, False))

    store.set_retained("r/1", Message.create("r/1", b"kept", 1, True, {"content_type": "a/b"}))
    store.set_retained("r/2", Message.create("r/2", b"cleared", 0, True))
    store.set_retained("r/2", None)
    store.commit()
    assert count(store, "messages") == 3, "a message fanned out to two sessions is stored once"
    store.close()

    store, state = opened(path)
    sessions = by_id(state)
    assert set(sessions) == {"a", "b"}
    sa = sessions["a"]
    assert (sa.expiry_interval, sa.connected, sa.expires_at, sa.will_at) == (
        3600,
        False,
        1_900_000_100.25,
        1_900_000_000.5,
    )
    assert sa.will == will
    assert sa.subscriptions == {"x/+/z": full, "$share/g/s/#": shared}
    assert sa.incoming_qos2 == {6}
    got = [
        (d.delivery.message.payload, d.delivery.qos, d.delivery.retain, d.packet_id, d.released)
        for d in sa.deliveries
    ]
    assert got == [
        (b"one message, two sessions", 2, False, 11, False),
        (b"expiring", 1, True, 12, True),
        (b"queued", 1, False, None, False),
    ], "deliveries come back in their order, in flight or queued"
    first = sa.deliveries[0].delivery
    assert first.subscription_ids == (7, 9)
    assert first.message.properties == props
    assert [d.delivery.seq for d in sa.deliveries] == [1, 2, 3]
    expires_at = sa.deliveries[1].delivery.message.expires_at
    assert expires_at is not None and 590 < expires_at - time.monotonic() <= 600
    sb = sessions["b"]
    assert sb.expiry_interval == 0xFFFFFFFF and sb.expires_at is None and sb.will is None
    assert sb.deliveries[0].delivery.message is first.message, "one object per stored message"
    assert [(t, m.payload, m.qos, m.retain, m.properties) for t, m in state.retained] == [
        ("r/1", b"kept", 1, True, {"content_type": "a/b"})
    ]
    store.close()


def test_completed_deliveries_and_ended_sessions_leave_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    a, b = new_session("a", store), new_session("b", store)
    store.save_session(a)
    store.save_session(b)
    message = Message.create("t", b"shared", 1, False)
    da, db = Delivery(message, 1, False), Delivery(message, 1, False)
    store.send_delivery(a, da, 1)
    store.queue_delivery(b, db)
    store.commit()
    store.remove_delivery(a, da)
    store.commit()
    assert count(store, "messages") == 1, "still queued for b"
    b.queue.append(db)
    store.add_incoming(b, 3)
    store.save_subscription(b, "t", Subscription("t", 1))
    store.delete_session(b)
    store.commit()
    for table in ("messages", "deliveries", "incoming_qos2", "subscriptions"):
        assert count(store, table) == 0, table
    assert count(store, "sessions") == 1
    store.close()


def test_changes_to_the_same_rows_in_one_commit_end_as_the_last_one(tmp_path: Path) -> None:
    """A batch groups changes by kind; that must not reorder changes to one row."""
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    old = new_session("c", store)
    store.save_session(old)
    first = Delivery(Message.create("t", b"old session", 1, False), 1, False)
    store.queue_delivery(old, first)
    old.queue.append(first)
    store.add_incoming(old, 7)
    store.delete_session(old)  # ended and started again (clean start) in one turn
    new = new_session("c", store)
    new.expiry_interval = 60
    store.save_session(new)
    store.queue_delivery(new, Delivery(Message.create("t", b"new session", 1, False), 1, False))
    store.add_incoming(new, 7)
    store.remove_incoming(new, 7)
    store.add_incoming(new, 7)
    store.add_incoming(new, 8)
    store.remove_incoming(new, 8)
    store.set_retained("r", Message.create("r", b"first", 0, True))
    store.set_retained("r", None)
    store.set_retained("r", Message.create("r", b"last", 0, True))
    store.commit()
    store.close()

    _, state = opened(path)
    (stored,) = state.sessions
    assert stored.expiry_interval == 60
    assert [d.delivery.message.payload for d in stored.deliveries] == [b"new session"]
    assert stored.incoming_qos2 == {7}
    assert [(t, m.payload) for t, m in state.retained] == [("r", b"last")]


def test_deliveries_completed_out_of_order_leave_exactly_the_others(tmp_path: Path) -> None:
    """Completions are written as runs of consecutive seqs and message ids."""
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    a, b = new_session("a", store), new_session("b", store)
    store.save_session(a)
    store.save_session(b)
    deliveries = {}
    for i in range(1, 11):
        for s in (a, b):
            d = Delivery(
                Message.create("t", b"%s%d" % (s.client_id.encode(), i), 1, False), 1, False
            )
            store.queue_delivery(s, d)
            deliveries[s.client_id, i] = d
    store.commit()
    for i in (1, 2, 3, 5, 8, 9):
        store.remove_delivery(a, deliveries["a", i])
    for i in (10, 4, 6):
        store.remove_delivery(b, deliveries["b", i])
    store.commit()
    assert count(store, "messages") == 20 - 9
    store.close()

    _, state = opened(path)
    left = {s.client_id: [d.delivery.message.payload for d in s.deliveries] for s in state.sessions}
    assert left == {
        "a": [b"a4", b"a6", b"a7", b"a10"],
        "b": [b"b1", b"b2", b"b3", b"b5", b"b7", b"b8", b"b9"],
    }


def test_session_journals_its_delivery_state(tmp_path: Path) -> None:
    """Driven through Session, as the broker does: what the store holds is what the
    session would resend after a restart."""
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    s = new_session("s", store)
    store.save_session(s)
    for i in range(4):
        s.deliver(Delivery(Message.create("t", b"%d" % i, 2, False), 2, False))
    conn = FakeConnection()
    conn.send_window = 2
    s.resume(conn)  # type: ignore[arg-type]
    assert [p for p, _, _ in conn.sent] == [b"0", b"1"]
    pid0, pid1 = conn.sent[0][1], conn.sent[1][1]
    assert pid0 is not None and pid1 is not None
    assert s.received(pid0)
    assert s.acknowledge(pid1, 2)  # PUBCOMP; refills the window with b"2"
    s.add_incoming(40)
    s.add_incoming(41)
    assert s.release_incoming(40)
    assert not s.release_incoming(40)
    store.commit()
    store.close()

    _, state = opened(path)
    stored = by_id(state)["s"]
    assert [(d.delivery.message.payload, d.packet_id, d.released) for d in stored.deliveries] == [
        (b"0", pid0, True),
        (b"2", conn.sent[2][1], False),
        (b"3", None, False),
    ]
    assert stored.incoming_qos2 == {41}


async def test_one_commit_per_loop_turn_releases_held_connections(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / DB_FILE))
    store.open(asyncio.get_running_loop())
    assert store._db is not None
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    conn = FakeConnection()
    s = new_session("s", store)
    s.connection = conn  # type: ignore[assignment]
    for i in range(500):
        store.queue_delivery(s, Delivery(Message.create("t", b"%d" % i, 1, False), 1, False))
    assert conn.awaiting_commit and store.pending and commits == []
    other = FakeConnection()
    store.hold(other)  # type: ignore[arg-type]
    assert other.awaiting_commit
    await asyncio.sleep(0)
    assert commits == ["COMMIT"], "500 changes of one turn, one transaction"
    assert (conn.released, other.released) == (1, 1)
    assert not store.pending
    idle = FakeConnection()
    store.hold(idle)  # type: ignore[arg-type]
    assert not idle.awaiting_commit, "nothing pending: nothing to wait for"
    store.close()


_CRASHING_WRITER = """
import sys, time
from raftmq.node.message import Message
from raftmq.node.session import Delivery, Session
from raftmq.node.sqlite_store import SqliteStore

store = SqliteStore(sys.argv[1])
store.open(None)
session = Session("victim", max_queued=10, overflow_drops_oldest=False, queue_qos0=False)
session.expiry_interval = 60
store.save_session(session)
for i in range(3):
    store.queue_delivery(session, Delivery(Message.create("t", b"c%d" % i, 1, False), 1, False))
store.add_incoming(session, 9)
store.set_retained("r", Message.create("r", b"retained", 1, True))
store.commit()
store.queue_delivery(session, Delivery(Message.create("t", b"never committed", 1, False), 1, False))
print("committed", flush=True)
time.sleep(60)
"""


def test_committed_state_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CRASHING_WRITER), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        assert Path(f"{path}-wal").exists(), "the writer died with its changes in the WAL"
    finally:
        child.kill()
        child.wait(10)
    store, state = opened(path)
    victim = by_id(state)["victim"]
    assert [d.delivery.message.payload for d in victim.deliveries] == [b"c0", b"c1", b"c2"]
    assert victim.incoming_qos2 == {9}
    assert [(t, m.payload) for t, m in state.retained] == [("r", b"retained")]
    store.close()


def test_a_copy_taken_while_the_store_is_open_reopens(tmp_path: Path) -> None:
    """The files as they are on disk mid-run (db + WAL, no clean close) are a valid store."""
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    s = new_session("copied", store)
    store.save_session(s)
    store.save_subscription(s, "a/#", Subscription("a/#", 1))
    store.commit()
    copy = tmp_path / "copy" / DB_FILE
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    Path(f"{copy}-wal").write_bytes(Path(f"{path}-wal").read_bytes())
    store.close()
    reopened, state = opened(copy)
    assert by_id(state)["copied"].subscriptions == {"a/#": Subscription("a/#", 1)}
    reopened.close()


def test_schema_version_is_checked(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(
        StoreError, match=rf"{DB_FILE}: store schema version 99, but .* {SCHEMA_VERSION}"
    ):
        SqliteStore(str(path)).open(None)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a raftmq store"):
        SqliteStore(str(path)).open(None)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db: cannot"):
        SqliteStore(str(garbage)).open(None)


def test_a_second_node_cannot_open_a_store_in_use(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    first, _ = opened(path)
    with pytest.raises(StoreError, match="another node"):
        SqliteStore(str(path)).open(None)
    first.close()
    second, _ = opened(path)
    second.close()


def test_memory_durability_keeps_nothing(tmp_path: Path) -> None:
    store = make_store("memory", str(tmp_path))
    assert isinstance(store, MemoryStore) and not store.durable
    session: Any = new_session("m")
    store.save_session(session)
    store.set_retained("r", Message.create("r", b"x", 0, True))
    store.commit()
    assert store.open(None) == StoredState()
    assert list(tmp_path.iterdir()) == []
    assert isinstance(make_store("disk", str(tmp_path)), SqliteStore)


def test_messages_keep_their_identity_and_a_version_1_file_is_upgraded(tmp_path: Path) -> None:
    """A node restarting after kill -9 hands back what it held (releases.hand_back); the new
    owner drops its own copies by identity, so the identity must survive the restart."""
    path = tmp_path / DB_FILE
    store, _ = opened(path)
    session = new_session("s", store)
    store.save_session(session)
    stamped = Message.create("t", b"stamped", 1, False)
    stamped.origin, stamped.seq = "n2", 1_764_000_000_000_042
    store.queue_delivery(session, Delivery(stamped, 1, False))
    store.commit()
    store.close()
    store, state = opened(path)
    message = by_id(state)["s"].deliveries[0].delivery.message
    assert (message.origin, message.seq) == ("n2", 1_764_000_000_000_042)
    store.close()

    # The same file as version 1 wrote it: no identity columns.
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE messages DROP COLUMN origin")
    db.execute("ALTER TABLE messages DROP COLUMN origin_seq")
    db.execute("UPDATE schema_version SET version = 1")
    db.commit()
    db.close()
    store, state = opened(path)
    message = by_id(state)["s"].deliveries[0].delivery.message
    assert (message.payload, message.origin, message.seq) == (b"stamped", "", 0)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    db.close()
