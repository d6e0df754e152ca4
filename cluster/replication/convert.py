"""The node's forms of what the cluster replicates, and the log's forms of the node's.

The log carries records of its own (``commands.py``), never node classes:
these functions are the one place the two meet.
"""

from __future__ import annotations

import time

from raftmq.node.hooks import SessionTransfer
from raftmq.node.message import Message
from raftmq.node.packets import Will
from raftmq.node.session import Subscription

from .commands import RetainedRecord, SessionRecord, StoredSubscription, WillRecord
from .state import route_key


def retained_record(message: Message) -> RetainedRecord:
    """The replicated form of a retained message; its expiry becomes a wall-clock deadline."""
    expires_at = None
    if message.expires_at is not None:
        expires_at = time.time() + (message.expires_at - time.monotonic())
    return RetainedRecord(message.payload, message.qos, dict(message.properties), expires_at)


def retained_message(topic: str, record: RetainedRecord) -> Message | None:
    """The node's form of a replicated retained message, or None once it has expired."""
    message = Message.create(topic, record.payload, record.qos, True, dict(record.properties))
    if record.expires_at is not None:
        remaining = record.expires_at - time.time()
        if remaining <= 0:
            return None
        message.expires_at = time.monotonic() + remaining
    return message


def will_record(will: Will) -> WillRecord:
    return WillRecord(will.topic, will.payload, will.qos, will.retain, dict(will.properties))


def stored_subscription(full_filter: str, sub: Subscription) -> StoredSubscription:
    """The replicated form of a session's subscription (``full_filter`` keeps ``$share/...``)."""
    return StoredSubscription(
        full_filter,
        sub.qos,
        sub.no_local,
        sub.retain_as_published,
        sub.retain_handling,
        sub.identifier,
    )


def session_transfer(record: SessionRecord) -> SessionTransfer:
    """The node's form of a replicated persistent session."""
    subscriptions = dict(subscription_from(s) for s in record.subscriptions)
    return SessionTransfer(record.expiry_interval, subscriptions)


def subscription_from(stored: StoredSubscription) -> tuple[str, Subscription]:
    """(full filter, the node's subscription) of a replicated one."""
    group, topic_filter = route_key(stored.topic_filter)
    sub = Subscription(
        topic_filter,
        stored.qos,
        stored.no_local,
        stored.retain_as_published,
        stored.retain_handling,
        stored.identifier,
        group,
    )
    return stored.topic_filter, sub
