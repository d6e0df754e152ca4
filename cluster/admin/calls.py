"""The admin RPC both ends share: its methods, its metadata, and how a call proves
its caller knows the cluster secret.

Both methods take and return an ``AdminMessage`` (one ``bytes`` field, the
same envelope as ``Frame``) holding a JSON object. ``proto/raftmq.proto``
documents the methods, the JSON and the metadata.

Who may call: whoever knows the cluster secret. Each call carries an
HMAC-SHA256 over the method, the node it is meant for, the caller's clock,
a random nonce and the request body, keyed from the secret with a label of
its own (so neither the raw secret, which is also the Raft password, nor the
forwarding key serves here). A node accepts a call only within
``CLOCK_WINDOW`` of its own clock and never the same nonce twice, so a
recorded call cannot be played again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..rpc import keyed_proof, text_metadata

SERVICE = "raftmq.forwarding.v1.Admin"
"""In the package of the one .proto file, beside Forwarding: both are served on one port."""
STATUS = "Status"
NODE_DOWN = "NodeDown"

NODE_KEY = "raftmq-admin-node"
TIME_KEY = "raftmq-admin-time"
NONCE_KEY = "raftmq-admin-nonce"
AUTH_KEY = "raftmq-admin-auth"
LEADER_KEY = "raftmq-leader"
"""Trailing metadata of a FAILED_PRECONDITION NodeDown: the leader's node id."""

CLOCK_WINDOW = 30.0
"""Seconds a call's timestamp may be away from the node's clock."""
NONCE_HEX = 32
MAX_REMEMBERED_NONCES = 100_000
"""Calls within two clock windows beyond which a node refuses more (only callers
that know the secret can fill it)."""
Metadata = Sequence[tuple[str, str | bytes]]
Report = dict[str, Any]


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


# -- authentication ------------------------------------------------------------------


class AdminRejected(Exception):
    """An admin call failed authentication; the message says which check failed."""


def _proof(secret: bytes, method: str, node_id: str, stamp: str, nonce: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    return keyed_proof(secret, "admin", [method, node_id, stamp, nonce, digest])


def call_metadata(
    secret: bytes, method: str, node_id: str, body: bytes, now: float | None = None
) -> tuple[tuple[str, str], ...]:
    """The metadata that authenticates one call of ``method`` on ``node_id`` with ``body``."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(NONCE_HEX // 2)
    return (
        (NODE_KEY, node_id),
        (TIME_KEY, stamp),
        (NONCE_KEY, nonce),
        (AUTH_KEY, _proof(secret, method, node_id, stamp, nonce, body)),
    )


class CallChecker:
    """Checks the metadata of admin calls made to one node; remembers nonces it accepted."""

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        window: float = CLOCK_WINDOW,
        clock: Callable[[], float] = time.time,
        capacity: int = MAX_REMEMBERED_NONCES,
    ) -> None:
        self.node_id = node_id
        self._secret = secret
        self._window = window
        self._clock = clock
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        """Accepted nonce -> when it can be forgotten (its timestamp is out of the window)."""

    def check(self, method: str, metadata: Metadata | None, body: bytes) -> None:
        """Return if the call is authentic, fresh and new; else raise ``AdminRejected``."""
        values = text_metadata(metadata)
        missing = [k for k in (NODE_KEY, TIME_KEY, NONCE_KEY, AUTH_KEY) if not values.get(k)]
        if missing:
            raise AdminRejected(f"no {missing[0]} in the call's metadata")
        node_id, stamp, nonce = values[NODE_KEY], values[TIME_KEY], values[NONCE_KEY]
        if node_id != self.node_id:
            raise AdminRejected(
                f"call meant for node {node_id[:64]!r} reached node {self.node_id!r}"
            )
        expected = _proof(self._secret, method, node_id, stamp, nonce, body)
        if not hmac.compare_digest(values[AUTH_KEY], expected):
            raise AdminRejected("the caller does not know the cluster secret")
        now = self._clock()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise AdminRejected(f"bad {TIME_KEY} {stamp[:24]!r}")
        if len(nonce) != NONCE_HEX:
            raise AdminRejected(f"{NONCE_KEY} must be {NONCE_HEX} hex digits")
        skew = int(stamp) - now
        if abs(skew) > self._window:
            raise AdminRejected(
                f"the call's timestamp is {skew:+.0f} s from the clock of node "
                f"{self.node_id!r} (at most {self._window:g} s allowed)"
            )
        self._forget_expired(now)
        if nonce in self._seen:
            raise AdminRejected("a replayed call (its nonce was used before)")
        if len(self._seen) >= self._capacity:
            raise AdminRejected(
                f"more than {self._capacity} admin calls within {2 * self._window:g} s"
            )
        # Its timestamp is at most `window` ahead of now, so it is accepted until at
        # most now + 2 * window: remember the nonce that long.
        self._seen[nonce] = now + 2 * self._window

    def _forget_expired(self, now: float) -> None:
        seen = self._seen
        while seen:
            nonce, until = next(iter(seen.items()))
            if until >= now:
                return
            del seen[nonce]
