"""Inter-node frames: the Cap'n Proto schema, loaded once, and its Python side.

``capnp/frames.capnp`` is loaded here and nowhere else, under one name:
pycapnp aborts the whole process when a file is loaded twice under two names
or a schema fails to compile, so no other module may call ``capnp.load``.

A frame travels from one node to one peer. Decoding never trusts the peer:
anything malformed raises ``FrameError``, which the forwarding treats as a
broken peer (the stream is dropped and re-established), never as a crash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import capnp

from raftmq.node.hooks import RouteKey, SessionMessages
from raftmq.node.message import Message
from raftmq.node.packets import Properties
from raftmq.node.session import Delivery, Outgoing

SCHEMA_PACKAGE = "raftmq.capnp"
SCHEMA_FILE = "frames.capnp"

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame a node sends or accepts (also the gRPC message limit)."""

_TRAVERSAL_LIMIT_WORDS = MAX_FRAME_BYTES // 8 * 2
_NESTING_LIMIT = 16


def schema_path() -> Path:
    """Where ``frames.capnp`` is, installed as a wheel or editable.

    Found through the package's search path rather than importlib.resources,
    which on Python 3.11 fails on the namespace package an editable install
    makes (its path holds a non-directory hook entry).
    """
    spec = find_spec(SCHEMA_PACKAGE)
    for entry in (spec and spec.submodule_search_locations) or ():
        candidate = Path(entry) / SCHEMA_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_FILE} not found in package {SCHEMA_PACKAGE}")


def _load_schema() -> Any:
    return capnp.load(str(schema_path()))


schema = _load_schema()
_Frame = schema.Frame

FORWARDED_PROPERTIES = frozenset(
    {
        "message_expiry_interval",
        "payload_format_indicator",
        "content_type",
        "response_topic",
        "correlation_data",
        "user_property",
    }
)
"""The PUBLISH properties a frame carries: all of them but the per-hop ones."""

_VALUE_PROPERTIES = (
    ("content_type", "contentType"),
    ("response_topic", "responseTopic"),
    ("correlation_data", "correlationData"),
)
"""Properties carried as a ``none``/``value`` union: (property name, schema field)."""


class FrameError(Exception):
    """A peer sent bytes that are not a valid frame: the peer (or its version) is broken."""


@dataclass(slots=True)
class Forwarded:
    """A publish for the receiving node's local subscribers."""

    message: Message
    shared_groups: tuple[RouteKey, ...] = ()
    """The shared groups the sender chose this node to serve for this message."""


@dataclass(slots=True)
class Kick:
    """``client_id`` is now owned elsewhere at ``epoch``: drop older connections of it."""

    client_id: str
    epoch: int


@dataclass(slots=True)
class Handover:
    """A persistent session's undelivered messages, moving to the client id's new owner
    (the claim of ``client_id`` at ``epoch``)."""

    client_id: str
    epoch: int
    messages: SessionMessages = field(default_factory=SessionMessages)
    late: bool = False
    """Not the first hand-over of this claim (``Handovers.arrived``)."""


@dataclass(slots=True)
class Barrier:
    """Answer with ``BarrierReply(token)`` once ``applied`` commands are applied here."""

    token: int
    applied: int


@dataclass(slots=True)
class BarrierReply:
    """The answer to the ``Barrier`` with ``token``: everything the sender forwarded
    before it was sent, the sender routes by the state the barrier named."""

    token: int


Item = Forwarded | Kick | Handover | Barrier | BarrierReply


@dataclass(slots=True)
class Frame:
    seq: int
    """0 for an acknowledgement-only frame."""
    ack: int
    items: list[Item]
    ack_incarnation: int = 0
    """The receiver's incarnation that ``ack`` refers to."""
    applied: int = 0
    """The sender's ``ClusterState.applied`` when it made the frame."""


# -- encoding -----------------------------------------------------------------


def encode_frame(
    seq: int,
    ack: int,
    items: Sequence[Item],
    now: float,
    ack_incarnation: int = 0,
    applied: int = 0,
) -> bytes:
    """One frame as unpacked Cap'n Proto bytes; ``now`` is time.monotonic() for expiries."""
    frame = _Frame.new_message()
    if seq:
        frame.seq = seq
    if applied:
        frame.applied = applied
    if ack:
        frame.ack = ack
        frame.ackIncarnation = ack_incarnation
    if items:
        slots = frame.init("items", len(items))
        for i, item in enumerate(items):
            slot = slots[i]
            if type(item) is Forwarded:
                _fill_publish(slot.init("publish"), item.message, item.shared_groups, now)
            elif type(item) is Kick:
                kick = slot.init("kick")
                kick.clientId = item.client_id
                kick.epoch = item.epoch
            elif type(item) is Handover:
                _fill_handover(slot.init("handover"), item, now)
            elif type(item) is Barrier:
                barrier = slot.init("barrier")
                barrier.token = item.token
                barrier.applied = item.applied
            elif type(item) is BarrierReply:
                slot.barrierReply = item.token
            else:
                raise TypeError(f"cannot put {type(item).__name__} in a frame")
    return frame.to_bytes()


def _fill_publish(out: Any, message: Message, groups: tuple[RouteKey, ...], now: float) -> None:
    out.topic = message.topic
    out.payload = message.payload
    if message.qos:
        out.qos = message.qos
    if message.seq:
        out.originSeq = message.seq
    if message.retain:
        out.retain = True
    if message.properties or message.expires_at is not None:
        _fill_properties(out.init("properties"), message, now)
    if groups:
        slots = out.init("sharedGroups", len(groups))
        for i, (group, topic_filter) in enumerate(groups):
            slots[i].group = group
            slots[i].topicFilter = topic_filter


def _fill_properties(out: Any, message: Message, now: float) -> None:
    props = message.properties
    if message.expires_at is not None:
        out.expiry.remainingMs = max(0, round((message.expires_at - now) * 1000))
    value = props.get("payload_format_indicator")
    if value is not None:
        out.payloadFormat.indicator = value
    for key, name in _VALUE_PROPERTIES:
        value = props.get(key)
        if value is not None:
            getattr(out, name).value = value
    pairs = props.get("user_property")
    if pairs:
        slots = out.init("userProperties", len(pairs))
        for i, (key, val) in enumerate(pairs):
            slots[i].key = key
            slots[i].value = val


def _fill_delivery(out: Any, delivery: Delivery, now: float) -> None:
    message = delivery.message
    _fill_publish(out.init("message"), message, (), now)
    if message.origin:
        out.origin = message.origin
    out.qos = delivery.qos
    out.retain = delivery.retain
    if delivery.subscription_ids:
        ids = out.init("subscriptionIds", len(delivery.subscription_ids))
        for i, sid in enumerate(delivery.subscription_ids):
            ids[i] = sid


def _fill_handover(out: Any, handover: Handover, now: float) -> None:
    out.clientId = handover.client_id
    out.epoch = handover.epoch
    out.late = handover.late
    held = handover.messages
    queued = out.init("queued", len(held.queued))
    for i, delivery in enumerate(held.queued):
        _fill_delivery(queued[i], delivery, now)
    outgoing = out.init("outgoing", len(held.outgoing))
    for i, (packet_id, entry) in enumerate(held.outgoing.items()):
        slot = outgoing[i]
        slot.packetId = packet_id
        slot.released = entry.released
        _fill_delivery(slot.init("delivery"), entry.delivery, now)
    incoming = out.init("incomingQos2", len(held.incoming_qos2))
    for i, packet_id in enumerate(sorted(held.incoming_qos2)):
        incoming[i] = packet_id
    seen = out.init("seen", len(held.seen))
    for i, (node, seq) in enumerate(sorted(held.seen.items())):
        seen[i].node = node
        seen[i].seq = seq


# -- decoding -----------------------------------------------------------------


def decode_frame(data: bytes | memoryview, now: float) -> Frame:
    """Parse a peer's frame; ``FrameError`` for anything that is not a valid one."""
    if not data:
        raise FrameError("empty frame")
    try:
        with _Frame.from_bytes(
            data, traversal_limit_in_words=_TRAVERSAL_LIMIT_WORDS, nesting_limit=_NESTING_LIMIT
        ) as frame:
            return _read_frame(frame, now)
    except FrameError:
        raise
    except Exception as exc:  # pycapnp raises KjException, UnicodeDecodeError, ValueError...
        reason = str(exc).split("\n", 1)[0][:200]
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {reason})") from exc


def _read_frame(frame: Any, now: float) -> Frame:
    seq = frame.seq
    items: list[Item] = []
    for slot in frame.items:
        kind = slot._which_str()
        if kind == "publish":
            publish = slot._get("publish")
            items.append(Forwarded(_read_message(publish, now), _read_groups(publish)))
        elif kind == "kick":
            kick = slot._get("kick")
            items.append(Kick(_client_id(kick), kick._get("epoch")))
        elif kind == "handover":
            items.append(_read_handover(slot._get("handover"), now))
        elif kind == "barrier":
            barrier = slot._get("barrier")
            items.append(Barrier(barrier.token, barrier.applied))
        elif kind == "barrierReply":
            items.append(BarrierReply(slot._get("barrierReply")))
        else:  # pragma: no cover - pycapnp reports unknown union members by number
            raise FrameError(f"frame {seq}: unknown item kind {kind!r}")
    if items and not seq:
        raise FrameError("frame carries items but no sequence number")
    return Frame(seq, frame.ack, items, frame.ackIncarnation, frame.applied)


def _read_message(publish: Any, now: float) -> Message:
    topic = publish._get("topic")
    if not topic:
        raise FrameError("publish without a topic")
    qos = publish._get("qos")
    if qos > 2:
        raise FrameError(f"publish on {topic!r}: QoS {qos}")
    props: Properties = {}
    expires_at = None
    if publish._has("properties"):
        expires_at = _read_properties(publish._get("properties"), props, now)
    return Message(
        topic,
        publish._get("payload"),
        qos,
        publish._get("retain"),
        props,
        None,
        expires_at,
        seq=publish._get("originSeq"),
    )


def _read_properties(src: Any, props: Properties, now: float) -> float | None:
    """Fill ``props``; returns the expiry deadline (time.monotonic()) or None."""
    expires_at = None
    expiry = src.expiry
    if expiry._which_str() == "remainingMs":
        remaining_ms = expiry.remainingMs
        expires_at = now + remaining_ms / 1000
        props["message_expiry_interval"] = max(1, math.ceil(remaining_ms / 1000))
    payload_format = src.payloadFormat
    if payload_format._which_str() == "indicator":
        indicator = payload_format.indicator
        if indicator > 1:
            raise FrameError(f"payload format indicator {indicator}")
        props["payload_format_indicator"] = indicator
    for key, name in _VALUE_PROPERTIES:
        union = getattr(src, name)
        if union._which_str() == "value":
            props[key] = union.value
    pairs = src.userProperties
    if len(pairs):
        props["user_property"] = [(pair.key, pair.value) for pair in pairs]
    return expires_at


def _read_groups(publish: Any) -> tuple[RouteKey, ...]:
    if not publish._has("sharedGroups"):
        return ()
    return tuple(RouteKey(g.group, g.topicFilter) for g in publish._get("sharedGroups"))


def _client_id(src: Any) -> str:
    client_id = src._get("clientId")
    if not client_id:
        raise FrameError("empty client id")
    return client_id


def _read_delivery(src: Any, now: float) -> Delivery:
    message = _read_message(src.message, now)
    message.origin = src.origin
    qos = src.qos
    if qos > message.qos:
        raise FrameError(f"delivery on {message.topic!r} at QoS {qos} above the message's")
    return Delivery(message, qos, src.retain, tuple(src.subscriptionIds))


def _read_handover(src: Any, now: float) -> Handover:
    client_id = _client_id(src)
    outgoing: dict[int, Outgoing] = {}
    for entry in src.outgoing:
        packet_id = entry.packetId
        if not packet_id or packet_id in outgoing:
            raise FrameError(f"hand-over of {client_id!r}: bad packet id {packet_id}")
        outgoing[packet_id] = Outgoing(_read_delivery(entry.delivery, now), entry.released)
    queued = [_read_delivery(d, now) for d in src.queued]
    seen = {mark.node: mark.seq for mark in src.seen}
    held = SessionMessages(queued, outgoing, set(src.incomingQos2), seen)
    return Handover(client_id, src.epoch, held, src.late)
