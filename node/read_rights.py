"""Which sessions have each delivered message checked against the ACL, and when that changes.

A SUBSCRIBE that a deny rule only partly overlaps is granted (``acl.py``);
the messages on the denied topics must then be held back one by one. Doing
that for every session on every message would tax nodes whose ACL never
needs it, so a session gets a per-message check (``Session.read_filter``)
only while one of its filters needs it. The need is decided again whenever
the inputs change: at CONNECT (the user may differ from the one who
subscribed, and a restored session's user is only known then), at each
granted SUBSCRIBE, and after a SIGHUP reload, so that rights taken away stop
deliveries at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from .acl import ClientRights
from .session import Session


def on_connect(session: Session, rights: ClientRights) -> None:
    """``rights``' client now owns ``session``: decide before anything is sent to it."""
    filters = (sub.topic_filter for sub in session.subscriptions.values())
    session.read_filter = None if rights.clean(filters) else rights


def on_subscribe(session: Session, rights: ClientRights, topic_filter: str) -> None:
    """A filter was granted; call before its retained messages are sent."""
    if session.read_filter is None and not rights.clean((topic_filter,)):
        session.read_filter = rights


def after_reload(sessions: Iterable[Session]) -> None:
    """The ACL file changed (its ClientRights are refreshed): decide again for every
    connected session. A session whose client is away keeps what it has: its queue is
    judged again as it drains, after the CONNECT that brings the client back."""
    for session in sessions:
        connection = session.connection
        if connection is not None and connection.rights is not None:
            on_connect(session, connection.rights)
