"""The log lines about clients: connect, refusal, disconnect, and rate-limited warnings.

Mosquitto's users read its log to see who connected from where, and why each
client left. raftmq writes the same facts under the logger ``raftmq.clients``,
one line per event (the table is in docs/behaviour.md):

- info: each accepted CONNECT (client id, peer, user, protocol level, keep
  alive, clean start, session present), each refused one, and each
  disconnect with its reason;
- warning, at most ``WARNINGS_PER_INTERVAL`` per client per ``INTERVAL``:
  failed logins (the user name, never the password) and ACL denials.

Nothing here runs per message, except ``denied`` when the ACL refuses one,
and that costs a dict lookup once the client's warnings are used up.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .reason_codes import ReasonCode

if TYPE_CHECKING:
    from .packets import Connect
    from .protocol import ClientProtocol, Ending

log = logging.getLogger("raftmq.clients")

WARNINGS_PER_INTERVAL = 5
INTERVAL = 60.0
MAX_TRACKED_CLIENTS = 10_000
"""Clients whose warning counts are kept at once; the oldest is reported and forgotten first."""

LOGIN_FAILURES = frozenset({ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.NOT_AUTHORIZED})
"""Refusals logged as failed-login warnings (rate-limited) rather than info lines."""


class _Window:
    """One client's warnings in its current interval."""

    __slots__ = ("sent", "started", "suppressed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.sent = 0
        self.suppressed = 0


class ClientWarnings:
    """Warnings about clients, at most ``limit`` per client per ``interval`` seconds.

    A client that keeps failing (a wrong password in a reconnect loop, a
    publisher the ACL refuses) would otherwise fill the log with one line per
    attempt. Past its limit its warnings are counted, and one line reports
    the count when its interval is over: at the next warning about anyone
    after that, when the client disconnects (``forget``), or when the node
    stops (``flush``). Memory is bounded: expired intervals are dropped as
    they are passed, and beyond ``max_tracked`` clients the oldest interval is
    reported and dropped early.
    """

    __slots__ = ("_clock", "_interval", "_limit", "_logger", "_max_tracked", "_windows")

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = WARNINGS_PER_INTERVAL,
        interval: float = INTERVAL,
        max_tracked: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._limit = limit
        self._interval = interval
        self._max_tracked = max_tracked
        self._clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        """Open intervals by client, oldest first: each starts at the end, at a later time."""

    def __len__(self) -> int:
        return len(self._windows)

    def warn(self, client_id: str, message: str, *args: object) -> None:
        """Log ``message % args`` as a warning about ``client_id``, unless over its limit."""
        now = self._clock()
        windows = self._windows
        self._expire(now)
        window = windows.get(client_id)
        if window is None:
            if len(windows) >= self._max_tracked:
                self._report(*windows.popitem(last=False))
            window = windows[client_id] = _Window(now)
        if window.sent < self._limit:
            window.sent += 1
            self._logger.warning(message, *args)
        else:
            window.suppressed += 1

    def forget(self, client_id: str) -> None:
        """The client is gone: report what was suppressed and free its entry."""
        window = self._windows.pop(client_id, None)
        if window is not None:
            self._report(client_id, window)

    def flush(self) -> None:
        """Report every suppressed count now (the node stops) and forget all clients."""
        windows, self._windows = self._windows, OrderedDict()
        for client_id, window in windows.items():
            self._report(client_id, window)

    def _expire(self, now: float) -> None:
        windows = self._windows
        horizon = now - self._interval
        while windows:
            client_id, window = next(iter(windows.items()))
            if window.started > horizon:
                return
            del windows[client_id]
            self._report(client_id, window)

    def _report(self, client_id: str, window: _Window) -> None:
        if window.suppressed:
            self._logger.warning(
                "client %r: %d more warnings suppressed (at most %d per %gs)",
                client_id,
                window.suppressed,
                self._limit,
                self._interval,
            )


WARNINGS = ClientWarnings(log)
"""The node's one limiter: warnings go to the process's one log, so its budget is per process."""


def denied(client_id: str, username: str | None, action: str, topic: str) -> None:
    """The ACL refused ``action`` ("publish", "subscribe", "read") on ``topic``; rate-limited."""
    WARNINGS.warn(
        client_id,
        "client %r denied %s %r by the ACL: user %s",
        client_id,
        action,
        topic,
        _user(username),
    )


def _user(username: str | None) -> str:
    """``'alice'``, or ``anonymous`` (no quotes: no user name may be mistaken for it)."""
    return "anonymous" if username is None else repr(username)


def _plain(code: int) -> str:
    try:
        return ReasonCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown reason"


def reason_name(code: int) -> str:
    """``session taken over (0x8E)``: a reason code as the log shows it."""
    return f"{_plain(code)} (0x{code:02X})"


def connected(client: ClientProtocol, clean_start: bool, session_present: bool) -> None:
    log.info(
        "client %r connected: peer %s, user %s, protocol %d, keepalive %ds, "
        "clean start %d, session present %d",
        client.client_id,
        client.peer,
        _user(client.username),
        client.protocol_level,
        client.keepalive,
        clean_start,
        session_present,
    )


_REFUSAL = "peer %s, user %s, protocol %d, reason %s"


def refused(client: ClientProtocol, packet: Connect, reason: int) -> None:
    """A refusing CONNACK; a failed login is a warning, rate-limited by client id (or peer)."""
    args = (
        packet.client_id,
        client.peer,
        _user(packet.username),
        packet.protocol_level,
        reason_name(reason),
    )
    if reason in LOGIN_FAILURES:
        key = packet.client_id or client.peer.rpartition(":")[0]
        WARNINGS.warn(key, "client %r login failed: " + _REFUSAL, *args)
    else:
        log.info("client %r refused: " + _REFUSAL, *args)


def closed(client: ClientProtocol, was_connected: bool, error: Exception | None) -> None:
    """The one line of a connection's end (a refused CONNECT has had its own)."""
    ending = client.ended
    if was_connected:
        WARNINGS.forget(client.client_id)
        log.info(
            "client %r disconnected: peer %s, reason %s",
            client.client_id,
            client.peer,
            _why(ending, error),
        )
    elif ending is None:
        # A port probe or health check, most likely: not worth a line by default.
        log.debug("connection from %s closed before CONNECT: %s", client.peer, _why(None, error))
    elif ending.by != "refused":
        log.info(
            "connection from %s ended before CONNECT: reason %s", client.peer, _why(ending, None)
        )


def _why(ending: Ending | None, error: Exception | None = None) -> str:
    """The disconnect line's reason: who ended it, the reason code, and any detail."""
    if ending is None:
        if error is not None:
            return f"socket error {error!r}"
        return "closed by the client without DISCONNECT"
    code = ending.reason
    if code is None:
        return ending.detail
    if ending.by == "client":
        name = reason_name(code) if code else "normal disconnection (0x00)"
        return f"client DISCONNECT {name}"
    text = reason_name(code)
    if ending.by == "protocol" and code != ReasonCode.PROTOCOL_ERROR:
        text = f"protocol error {text}"
    if ending.detail and ending.detail != _plain(code):
        text += f": {ending.detail}"
    return text
