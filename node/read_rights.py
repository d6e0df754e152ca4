"""Which sessions have each delivered message checked against the ACL, and when that changes.

A SUBSCRIBE that a deny rule only partly overlaps is granted (``acl.py``);
the messages on the denied topics must then be held back one by one. Doing
that for every session on every message would tax nodes whose ACL never
needs it, so a session gets a per-message check (``Session.may_read``) only
while one of its filters needs it. The need is decided again whenever the
inputs change: at CONNECT (the user may differ from the one who subscribed,
and a restored session's user is only known then), at each granted SUBSCRIBE,
and after a SIGHUP reload, so that rights taken away stop deliveries at once.
"""

from __future__ import annotations

from .acl import AccessControl
from .session import Session


class ReadRights:
    """Keeps each session's ``may_read`` in step with its filters and the ACL."""

    def __init__(self, acl: AccessControl, sessions: dict[str, Session]) -> None:
        self.acl = acl
        self.sessions = sessions

    def connected(self, session: Session, username: str | None) -> None:
        """``username`` now owns ``session``: decide the check before anything is sent."""
        filters = (sub.topic_filter for sub in session.subscriptions.values())
        session.may_read = self.acl.read_check(username, session.client_id, filters)

    def subscribed(self, session: Session, username: str | None, topic_filter: str) -> None:
        """A filter was granted; call before its retained messages are sent."""
        if session.may_read is None:
            session.may_read = self.acl.read_check(username, session.client_id, (topic_filter,))

    def reloaded(self) -> None:
        """The ACL file changed: decide again for every connected session.

        A session whose client is away keeps its check: its queue is judged
        again as it drains, after the CONNECT that brings the client back.
        """
        for session in self.sessions.values():
            connection = session.connection
            if connection is not None:
                self.connected(session, connection.username)
