"""A Raft node holding the ``ClusterState``, bridged to asyncio.

pysyncobj runs Raft on its own thread. ``RaftNode`` hides that thread:

* ``await submit(command)`` returns the command's result once it is
  committed and applied, or raises ``ClusterUnavailable`` after a bounded
  wait (no quorum, partition, leader change with an unknown outcome).
* Commands submitted during one event-loop turn travel as one log entry
  (one replicated ``apply_batch``), so a burst of CONNECTs costs one commit
  rather than one each.
* Every applied command, from any node, is handed to an apply listener on
  the event loop, with its result, so each node can react (kick a client it
  serves, update its retained store, ...).

Two copies of the state exist on purpose. pysyncobj's thread applies each
batch to its own ``ClusterState``: that copy is what it snapshots, and it
must match the log position exactly when it does. The batch is then posted
to the event loop, which applies it to a mirror ``ClusterState``. The mirror
is what the node reads (route lookups on every PUBLISH, status), without
locks and without ever seeing a half-applied command. Both copies apply the
same commands in the same order, so they are equal; results are taken from
the mirror.

Security: the Raft port unpickles what it receives, so a node refuses to
start without a cluster secret; pysyncobj then encrypts and authenticates
every message with a key derived from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import pickle
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# pysyncobj's import replaces socket.inet_ntop with a Windows-only version on
# every platform (pysyncobj/win_inet_pton.py), which breaks anything else in
# the process that calls it (psutil, for one). Put the real one back.
_inet_ntop = socket.inet_ntop
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj.syncobj import SyncObjException  # noqa: E402

from raftmq.node.hooks import ClusterUnavailable  # noqa: E402

from .commands import Rejected  # noqa: E402
from .raft_types import Applied, RaftOptions, RaftStatus  # noqa: E402
from .state import ClusterState  # noqa: E402

socket.inet_ntop = _inet_ntop

log = logging.getLogger("raftmq.raft")

MIN_SECRET_LENGTH = 16
JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"
ENTRY_OVERHEAD = 64 * 1024
"""Room for pysyncobj's framing around our payload, so a full entry never gets chunked."""

# pysyncobj failures after which the command surely never entered the log,
# so sending the batch again cannot apply it twice.
NEVER_APPENDED = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.REQUEST_DENIED,
    }
)
ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class RaftStartError(Exception):
    """The Raft node could not start (bad secret, port in use, ...)."""


class CommandRejected(Exception):
    """The state machine refused a command (a bug in the submitter, not an outage)."""


def raft_password(secret: str) -> str:
    """The pysyncobj password for a cluster secret.

    Derived rather than the secret itself, so the Raft port never holds key
    material shared with other cluster channels (SWIM, gRPC).
    """
    return hmac.new(secret.encode(), b"raftmq raft transport", hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Batch:
    payload: bytes
    """The pickled tuple of commands, as it travels in the log entry."""
    futures: list[asyncio.Future[object]]
    timer: asyncio.TimerHandle | None = None
    resend: asyncio.TimerHandle | None = None


class _Machine(SyncObjConsumer):
    """The replicated object pysyncobj drives; everything here runs on its thread."""

    def __init__(self, on_batch: Callable[..., None], on_restore: Callable[..., None]) -> None:
        super().__init__()
        self.state = ClusterState()
        self._on_batch = on_batch
        self._on_restore = on_restore

    @replicated
    def apply_batch(self, origin: str, seq: int, payload: bytes) -> None:
        try:
            commands: tuple[object, ...] | None = pickle.loads(payload)
        except Exception:
            # Every replica fails alike (e.g. a command class this version lacks).
            log.exception("undecodable Raft entry %s#%d", origin, seq)
            commands = None
        else:
            for command in commands:  # type: ignore[union-attr]
                apply_safely(self.state, command)
        self._on_batch(origin, seq, commands)

    def _serialize(self) -> dict[str, Any]:
        return self.state.snapshot()

    def _deserialize(self, data: dict[str, Any]) -> None:
        self.state.restore(data)
        self._on_restore(data)


def apply_safely(state: ClusterState, command: object) -> object:
    """Apply, turning any exception into a ``Rejected`` result.

    An exception escaping into pysyncobj would make it retry the same log
    entry forever; every replica raises alike, so rejecting is deterministic.
    """
    try:
        return state.apply(command)
    except Exception as exc:
        return Rejected(f"{type(command).__name__}: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class _Counters:
    log_entries: int = 0
    """Replicated calls sent (a resent batch counts again)."""
    applied_batches: int = 0
    """Log entries of this group applied here, from any node."""


class RaftNode:
    """One member of the Raft group; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        address: str,
        peers: Mapping[str, str],
        data_dir: str | Path,
        secret: str | None,
        options: RaftOptions | None = None,
    ) -> None:
        """``address`` and ``peers`` values are "host:port" Raft addresses; ``peers``
        maps the other nodes' ids to theirs."""
        if not secret:
            raise RaftStartError(
                "cluster secret is required: the Raft port unpickles what it receives, "
                "so it only talks to peers that know the secret"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise RaftStartError(
                f"cluster secret is {len(secret)} characters; at least {MIN_SECRET_LENGTH} needed"
            )
        if node_id in peers:
            raise RaftStartError(f"node id {node_id!r} is listed among its own peers")
        self.node_id = node_id
        self.address = address
        self.peers = dict(peers)
        self.data_dir = Path(data_dir)
        self.options = options or RaftOptions()
        self.state = ClusterState()
        """The event-loop mirror of the replicated state: read it, never write it."""
        self.counters = _Counters()
        self._password = raft_password(secret)
        self._node_of_address = {addr: nid for nid, addr in self.peers.items()}
        self._node_of_address[address] = node_id
        self._origin = f"{node_id}/{secrets.token_hex(8)}"
        self._listeners: list[Callable[[Applied], None]] = []
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        """Who waits for the state to reach a count of applied commands (``wait_applied``)."""
        self.listener_failures = 0
        self.leading = False
        """Whether this node is the Raft leader, as of the last role change it heard of."""
        """Apply and restore listeners that raised (``RaftStatus.listener_failures``)."""
        self._restore_listeners: list[Callable[[ClusterState], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._syncobj: SyncObj | None = None
        self._machine: _Machine | None = None
        self._pending: list[tuple[object, asyncio.Future[object], float]] = []
        """(command, future, deadline) submitted and not yet sent."""
        self._flush_scheduled = False
        self._inflight: dict[int, _Batch] = {}
        self._seq = 0
        self._running = False
        self._ready = asyncio.Event()

    # -- listeners -------------------------------------------------------------

    def add_listener(self, listener: Callable[[Applied], None]) -> None:
        """Call ``listener`` on the event loop for every command applied, in log order."""
        self._listeners.append(listener)

    def add_restore_listener(self, listener: Callable[[ClusterState], None]) -> None:
        """Call ``listener`` when a snapshot replaced the whole state (no per-command events)."""
        self._restore_listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bind the Raft port and join the group; a RaftNode starts once (restart = new one)."""
        if self._loop is not None:
            raise RaftStartError(f"raft node {self.node_id} was started before; make a new one")
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        opts = self.options
        conf = SyncObjConf(
            password=self._password,
            appendEntriesUseBatch=False,
            journalFile=str(self.data_dir / JOURNAL_FILE),
            fullDumpFile=str(self.data_dir / DUMP_FILE),
            bindAddress=self.address,
            maxBindRetries=opts.bind_retries,
            bindRetryTime=0.2,
            appendEntriesBatchSizeBytes=opts.max_entry_bytes + ENTRY_OVERHEAD,
            raftMinTimeout=opts.election_timeout[0],
            raftMaxTimeout=opts.election_timeout[1],
            appendEntriesPeriod=opts.heartbeat_interval,
            connectionTimeout=opts.connection_timeout,
            connectionRetryTime=opts.connection_retry,
            leaderFallbackTimeout=opts.leader_fallback,
            logCompactionMinEntries=opts.compaction_min_entries,
            logCompactionMinTime=opts.compaction_min_time,
            useFork=opts.fork_snapshots,
            dynamicMembershipChange=False,
            onStateChanged=self._thread_role_changed,
            onReady=self._thread_ready,
        )
        self._machine = _Machine(self._thread_batch_applied, self._thread_restored)
        self._running = True
        # Built on the loop thread on purpose: pysyncobj's thread stops when the
        # thread that created it ends, and executor threads come and go.
        self._syncobj = SyncObj(
            self.address, list(self.peers.values()), conf, consumers=[self._machine]
        )
        try:
            await asyncio.to_thread(self._syncobj.waitBinded)
        except SyncObjException:
            await self._destroy_syncobj()
            self._running = False
            raise RaftStartError(f"cannot bind the Raft port {self.address}") from None
        log.info("raft node %s on %s, peers %s", self.node_id, self.address, self.peers)

    async def stop(self) -> None:
        """Fail what is waiting, stop pysyncobj's thread, close journal and port."""
        if not self._running:
            return
        self._running = False
        failure = ClusterUnavailable(f"raft node {self.node_id} stopped")
        for _, future, _ in self._pending:
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()
        for seq in list(self._inflight):
            self._fail_batch(seq, failure)
        await self._destroy_syncobj()

    async def _destroy_syncobj(self) -> None:
        syncobj = self._syncobj
        if syncobj is None:
            return
        self._syncobj = None
        if syncobj.tick_thread_alive():
            await asyncio.to_thread(syncobj.destroy_synchronous)
        else:
            syncobj._doDestroy()

    @property
    def caught_up(self) -> bool:
        """This node has applied all the leader had committed when it started: what it
        applies from now on is news, not a replay of its journal or a catch-up."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until this node has applied everything the leader had committed."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- submitting --------------------------------------------------------------

    async def submit(self, command: object) -> object:
        """Commit ``command`` through Raft and return its result from the state machine.

        Raises ClusterUnavailable when no commit happens within
        ``options.commit_timeout``; the command may still be applied later,
        in which case listeners see it with ``orphaned=True``.
        """
        if not self._running or self._loop is None:
            raise ClusterUnavailable(f"raft node {self.node_id} is not running")
        loop = self._loop
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append((command, future, loop.time() + self.options.commit_timeout))
        self._schedule_flush()
        result = await future
        if isinstance(result, Rejected):
            raise CommandRejected(result.reason)
        return result

    def _schedule_flush(self) -> None:
        if (
            self._flush_scheduled
            or not self._pending
            or len(self._inflight) >= self.options.max_inflight_batches
        ):
            return
        assert self._loop is not None
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send everything submitted since the last batch left as one log entry.

        Scheduled with call_soon, so it runs after every task that became
        ready in this loop turn has had its chance to submit.
        """
        self._flush_scheduled = False
        if not self._pending or not self._running:
            return
        if len(self._inflight) >= self.options.max_inflight_batches:
            return  # _batch_done flushes again when a slot frees up
        assert self._loop is not None
        pending, self._pending = self._pending, []
        for entry, payload in self._entries(pending):
            self._seq += 1
            seq = self._seq
            batch = _Batch(payload, [future for _, future, _ in entry])
            # Every command waits at most commit_timeout since it was submitted: the
            # oldest one in the batch sets the deadline for all.
            batch.timer = self._loop.call_at(entry[0][2], self._expire, seq)
            self._inflight[seq] = batch
            self._send(seq)

    def _entries(
        self, pending: list[tuple[object, asyncio.Future[object], float]]
    ) -> Iterator[tuple[list[tuple[object, asyncio.Future[object], float]], bytes]]:
        """Pickle pending commands into log entries of at most ``max_entry_bytes``.

        pysyncobj splits an entry larger than its message size into chunks,
        and its reassembly is broken (the follower fails to unpickle and the
        entry never commits), so no entry may reach that size.
        """
        limit = self.options.max_entry_bytes
        try:
            payload = pickle.dumps(tuple(c for c, _, _ in pending), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            payload, problem = b"", f"cannot be pickled ({exc})"
        else:
            problem = f"is {len(payload)} bytes, over the Raft entry limit of {limit} bytes"
        if payload and len(payload) <= limit:
            yield pending, payload
        elif len(pending) > 1:
            half = len(pending) // 2
            yield from self._entries(pending[:half])
            yield from self._entries(pending[half:])
        else:
            command, future, _ = pending[0]
            if not future.done():
                future.set_exception(CommandRejected(f"{type(command).__name__} {problem}"))

    def _send(self, seq: int) -> None:
        batch = self._inflight.get(seq)
        if batch is None or self._machine is None or not self._running:
            return
        batch.resend = None
        self.counters.log_entries += 1
        callback = functools.partial(self._thread_outcome, seq)
        # BlockingIOError: pysyncobj queued the batch, then found its wake-up pipe
        # full; its thread is awake already and will take it.
        with contextlib.suppress(BlockingIOError):
            self._machine.apply_batch(self._origin, seq, batch.payload, callback=callback)

    def _expire(self, seq: int) -> None:
        self._fail_batch(
            seq,
            ClusterUnavailable(
                f"no Raft commit within {self.options.commit_timeout:g}s on node {self.node_id}"
            ),
        )

    def _fail_batch(self, seq: int, error: Exception) -> None:
        batch = self._batch_done(seq)
        if batch is None:
            return
        for future in batch.futures:
            if not future.done():
                future.set_exception(error)

    def _batch_done(self, seq: int) -> _Batch | None:
        """Forget an in-flight batch, freeing its slot for what is pending."""
        batch = self._inflight.pop(seq, None)
        if batch is None:
            return None
        for handle in (batch.timer, batch.resend):
            if handle is not None:
                handle.cancel()
        self._schedule_flush()
        return batch

    # -- called on pysyncobj's thread --------------------------------------------

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            loop.call_soon_threadsafe(callback, *args)

    def _thread_batch_applied(
        self, origin: str, seq: int, commands: tuple[object, ...] | None
    ) -> None:
        self._post(self._batch_applied, origin, seq, commands)

    def _thread_restored(self, snapshot: dict[str, Any]) -> None:
        self._post(self._restored, snapshot)

    def _thread_outcome(self, seq: int, _result: object, error: int) -> None:
        if error != FAIL_REASON.SUCCESS:
            self._post(self._failed_outcome, seq, error)

    def _thread_role_changed(self, old: int, new: int) -> None:
        self._post(self._role_changed, old, new)

    def _thread_ready(self) -> None:
        self._post(self._ready.set)

    # -- back on the event loop ------------------------------------------------------

    def _batch_applied(self, origin: str, seq: int, commands: tuple[object, ...] | None) -> None:
        self.counters.applied_batches += 1
        mine = origin == self._origin
        batch = self._batch_done(seq) if mine else None
        if commands is None:
            if batch is not None:
                for future in batch.futures:
                    if not future.done():
                        future.set_exception(CommandRejected(f"undecodable entry {origin}#{seq}"))
            return
        for index, command in enumerate(commands):
            result = apply_safely(self.state, command)
            future = batch.futures[index] if batch is not None else None
            orphaned = mine and (future is None or future.done())
            if future is not None and not future.done():
                future.set_result(result)
            if self._running:
                self._notify(Applied(command, result, mine, orphaned))
        if self._applied_waiters:
            self._wake_applied()

    async def wait_applied(self, applied: int, timeout: float) -> bool:
        """Wait until this node's state has applied ``applied`` commands
        (``ClusterState.applied``); False if that did not happen within ``timeout``."""
        if self.state.applied >= applied:
            return True
        if self._loop is None or not self._running:
            return False
        future: asyncio.Future[None] = self._loop.create_future()
        self._applied_waiters.append((applied, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._applied_waiters.remove((applied, future))
        return True

    def _wake_applied(self) -> None:
        applied = self.state.applied
        for wanted, future in self._applied_waiters:
            if wanted <= applied and not future.done():
                future.set_result(None)

    def _notify(self, applied: Applied) -> None:
        for listener in self._listeners:
            try:
                listener(applied)
            except Exception:
                # The state applied the command on every replica alike; only this
                # node's reaction failed. Raising would make pysyncobj apply the entry
                # again, so it is counted (status, fault suite) and logged as the bug it is.
                self.listener_failures += 1
                log.exception("BUG: apply listener failed on %r", applied.command)

    def _restored(self, snapshot: dict[str, Any]) -> None:
        self.state.restore(snapshot)
        self._wake_applied()
        if not self._running:
            return
        for listener in self._restore_listeners:
            try:
                listener(self.state)
            except Exception:
                self.listener_failures += 1
                log.exception("BUG: restore listener failed")

    def _failed_outcome(self, seq: int, error: int) -> None:
        batch = self._inflight.get(seq)
        if batch is None or batch.resend is not None or self._loop is None:
            return
        if error in NEVER_APPENDED:
            batch.resend = self._loop.call_later(self.options.retry_delay, self._send, seq)
        # Otherwise (leader changed, unknown outcome) the batch may still commit:
        # keep waiting for it to apply until the timer says the cluster is unavailable.

    def _role_changed(self, old: int, new: int) -> None:
        self.leading = ROLES.get(new) == "leader"
        log.info("raft node %s: %s -> %s", self.node_id, ROLES.get(old, old), ROLES.get(new, new))

    # -- status ------------------------------------------------------------------

    def status(self) -> RaftStatus:
        syncobj = self._syncobj
        if syncobj is None:
            return RaftStatus(
                self.node_id,
                "stopped",
                None,
                0,
                0,
                0,
                False,
                dict.fromkeys(self.peers, False),
                self.listener_failures,
            )
        raw = syncobj.getStatus()
        leader = raw["leader"]
        peers = {
            node_id: raw.get(f"partner_node_status_server_{address}", 0) == 2
            for node_id, address in self.peers.items()
        }
        return RaftStatus(
            node_id=self.node_id,
            role=ROLES.get(raw["state"], str(raw["state"])),
            leader=None if leader is None else self._node_of_address.get(leader.id, leader.id),
            term=raw["raft_term"],
            commit_index=raw["commit_idx"],
            last_applied=raw["last_applied"],
            has_quorum=raw["has_quorum"],
            peers=peers,
            listener_failures=self.listener_failures,
        )

    @property
    def running(self) -> bool:
        return self._running
