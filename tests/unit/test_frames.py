"""Inter-node frames: round trips of every item and property, and hostile input.

Whatever a peer sends, decoding raises ``FrameError`` or yields a frame: a
broken peer must never crash the node (pycapnp aborts the process on some
misuse, which is why the schema is loaded in one place only).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmq.cluster.forwarding.frames import (
    FORWARDED_PROPERTIES,
    Barrier,
    BarrierReply,
    Forwarded,
    FrameError,
    Handover,
    Kick,
    decode_frame,
    encode_frame,
    schema_path,
)
from raftmq.cluster.rpc import unwrap, wrap
from raftmq.node.hooks import SessionMessages
from raftmq.node.message import HOP_PROPERTIES, Message
from raftmq.node.properties import ALLOWED
from raftmq.node.session import Delivery, Outgoing

ROOT = Path(__file__).resolve().parents[2]

ALL_PROPERTIES = {
    "payload_format_indicator": 1,
    "message_expiry_interval": 60,
    "content_type": "application/json; charset=\u00e9",
    "response_topic": "replies/node1",
    "correlation_data": b"\x00\x01corr\xff",
    "user_property": [("k", "v"), ("k", "second"), ("\u00fc", "")],
}


def _roundtrip(items: list, seq: int = 7, ack: int = 3, delay: float = 0.0):
    now = time.monotonic()
    data = encode_frame(seq, ack, items, now)
    return decode_frame(data, now + delay)


def test_publish_with_every_property_kind_round_trips() -> None:
    message = Message.create("a/b/c", b"\x00payload\xff", 2, True, dict(ALL_PROPERTIES), "pub")
    frame = _roundtrip([Forwarded(message, (("g1", "a/+/c"), ("g2", "#")))])
    assert (frame.seq, frame.ack) == (7, 3)
    [item] = frame.items
    assert isinstance(item, Forwarded)
    got = item.message
    assert (got.topic, got.payload, got.qos, got.retain) == ("a/b/c", b"\x00payload\xff", 2, True)
    assert got.properties == ALL_PROPERTIES
    assert got.publisher is None  # no-local is decided on the publisher's node
    assert got.expires_at is not None
    assert item.shared_groups == (("g1", "a/+/c"), ("g2", "#"))


def test_message_without_properties_stays_without() -> None:
    frame = _roundtrip([Forwarded(Message.create("t", b"", 0, False))])
    got = frame.items[0].message
    assert (got.properties, got.expires_at, got.qos, got.retain) == ({}, None, 0, False)
    assert frame.items[0].shared_groups == ()


def test_each_property_alone_round_trips() -> None:
    for name, value in ALL_PROPERTIES.items():
        got = _roundtrip([Forwarded(Message.create("t", b"p", 1, False, {name: value}))])
        assert got.items[0].message.properties == {name: value}, name


def test_payload_format_zero_and_empty_strings_are_kept_distinct_from_absent() -> None:
    props = {"payload_format_indicator": 0, "content_type": "", "correlation_data": b""}
    got = _roundtrip([Forwarded(Message.create("t", b"p", 1, False, props))])
    assert got.items[0].message.properties == props


def test_expiry_carries_what_remains_not_the_original_interval() -> None:
    message = Message.create("t", b"p", 1, False, {"message_expiry_interval": 10})
    assert message.expires_at is not None
    message.expires_at -= 3.5  # 3.5 s spent queued on the publisher's node
    now = time.monotonic()
    got = decode_frame(encode_frame(1, 0, [Forwarded(message)], now), now).items[0].message
    assert got.properties["message_expiry_interval"] == 7  # 6.5 s rounded up
    assert got.expires_at == pytest.approx(now + 6.5, abs=0.01)


def test_every_publish_property_is_forwarded_except_per_hop_ones() -> None:
    publish_properties = {spec.name for spec in ALLOWED["PUBLISH"].values()}
    assert publish_properties - HOP_PROPERTIES == FORWARDED_PROPERTIES


def test_kick_and_handover_round_trip_in_order_with_publishes() -> None:
    m1 = Message.create("s/1", b"one", 1, False, {"user_property": [("a", "b")]})
    m2 = Message.create("s/2", b"two", 2, True, {"content_type": "text/plain"})
    held = SessionMessages(
        queued=[Delivery(m1, 1, False, (5, 9)), Delivery(m2, 0, True)],
        outgoing={
            7: Outgoing(Delivery(m2, 2, False, (1,)), released=False),
            3: Outgoing(Delivery(m1, 1, False), released=True),
        },
        incoming_qos2={11, 2},
    )
    handover = Handover("client-\u00e9", 42, held)
    items = [Forwarded(m1), Kick("client-x", 9), handover, Forwarded(m2)]
    got = _roundtrip(items).items
    assert [type(i) for i in got] == [Forwarded, Kick, Handover, Forwarded]
    assert got[1] == Kick("client-x", 9)
    h = got[2]
    assert (h.client_id, h.epoch, h.messages.incoming_qos2) == ("client-\u00e9", 42, {2, 11})
    h = h.messages
    assert [
        (d.message.topic, d.message.payload, d.qos, d.retain, d.subscription_ids) for d in h.queued
    ] == [
        ("s/1", b"one", 1, False, (5, 9)),
        ("s/2", b"two", 0, True, ()),
    ]
    assert list(h.outgoing) == [7, 3]  # the order the client must see them resent in
    assert h.outgoing[7].released is False and h.outgoing[3].released is True
    assert h.outgoing[7].delivery.subscription_ids == (1,)
    assert h.queued[0].message.properties == {"user_property": [("a", "b")]}
    assert got[3].message.properties == {"content_type": "text/plain"}


def test_message_identities_seen_marks_and_barriers_round_trip() -> None:
    """What a session move needs on the wire: each message's identity (its sequence on
    the frame's sender for a forwarded publish, origin and sequence inside a hand-over),
    the hand-over's per-origin marks, and route barriers with their answers."""
    forwarded = Message.create("t/1", b"a", 1, False)
    forwarded.seq = 2**53 + 7
    relayed = Message.create("t/2", b"b", 2, False)
    relayed.origin, relayed.seq = "n3", 1_764_000_000_000_001
    unstamped = Message.create("$SYS/x", b"c", 0, False)
    held = SessionMessages(
        queued=[Delivery(relayed, 2, False), Delivery(unstamped, 0, False)],
        outgoing={5: Outgoing(Delivery(forwarded, 1, False))},
        seen={"n3": 1_764_000_000_000_009, "n1": 12},
    )
    items = [
        Forwarded(forwarded),
        Barrier(77, 1234),
        Handover("c", 3, held, late=True),
        BarrierReply(77),
        Handover("c", 3),
    ]
    got = _roundtrip(items).items
    assert [got[2].late, got[4].late] == [True, False]
    assert got[0].message.seq == forwarded.seq
    assert got[0].message.origin == ""  # the receiver knows who sent the frame
    assert got[1] == Barrier(77, 1234) and got[3] == BarrierReply(77)
    h = got[2].messages
    assert [(d.message.origin, d.message.seq) for d in h.queued] == [
        ("n3", 1_764_000_000_000_001),
        ("", 0),
    ]
    assert h.outgoing[5].delivery.message.seq == forwarded.seq
    assert h.seen == {"n3": 1_764_000_000_000_009, "n1": 12}


def test_ack_only_frame() -> None:
    frame = _roundtrip([], seq=0, ack=123456789012)
    assert (frame.seq, frame.ack, frame.items) == (0, 123456789012, [])


# -- hostile input --------------------------------------------------------------


def _valid_frame() -> bytes:
    message = Message.create("topic/abcd", b"payload", 1, False, dict(ALL_PROPERTIES))
    handover = Handover("cid", 1, SessionMessages([Delivery(message, 1, False, (3,))], {}, {4}))
    return encode_frame(5, 2, [Forwarded(message, (("g", "f"),)), Kick("k", 2), handover], 0.0)


@pytest.mark.parametrize("data", [b"", b"\x00", b"garbage!garbage!", b"\xff" * 64])
def test_garbage_is_a_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data, 0.0)


def test_every_truncation_of_a_valid_frame_is_a_frame_error() -> None:
    data = _valid_frame()
    for end in range(len(data)):
        with pytest.raises(FrameError):
            decode_frame(data[:end], 0.0)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_frames_never_raise_anything_but_frame_error(data: st.DataObject) -> None:
    frame = bytearray(_valid_frame())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FrameError):
        decode_frame(bytes(frame), 0.0)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(data, 0.0)


def test_invalid_utf8_in_a_topic_is_a_frame_error() -> None:
    data = encode_frame(1, 0, [Forwarded(Message.create("aaaa", b"", 0, False))], 0.0)
    assert data.count(b"aaaa") == 1
    with pytest.raises(FrameError, match="undecodable"):
        decode_frame(data.replace(b"aaaa", b"\xff\xfe\xfd\xfc"), 0.0)


def _publish_frame(**fields: object) -> bytes:
    from raftmq.cluster.forwarding.frames import schema

    frame = schema.Frame.new_message(seq=fields.pop("seq", 1))
    publish = frame.init("items", 1)[0].init("publish")
    publish.topic = fields.pop("topic", "t")
    for name, value in fields.items():
        if name == "payloadFormat":
            publish.init("properties").payloadFormat.indicator = value
        else:
            setattr(publish, name, value)
    return frame.to_bytes()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"qos": 3}, "QoS 3"),
        ({"topic": ""}, "without a topic"),
        ({"payloadFormat": 2}, "payload format indicator 2"),
        ({"seq": 0}, "no sequence number"),
    ],
)
def test_well_formed_but_invalid_frames_are_frame_errors(fields: dict, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(_publish_frame(**fields), 0.0)


def test_handover_with_a_delivery_above_the_message_qos_is_a_frame_error() -> None:
    message = Message.create("t", b"", 0, False)
    handover = Handover("c", 1, SessionMessages([Delivery(message, 2, False)]))
    data = encode_frame(1, 0, [handover], 0.0)
    with pytest.raises(FrameError, match="above the message's"):
        decode_frame(data, 0.0)


# -- the protobuf envelope ---------------------------------------------------------


@pytest.mark.parametrize("size", [1, 127, 128, 300, 16383, 16384, 70000])
def test_envelope_round_trips(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert unwrap(wrap(payload)) == payload


@pytest.mark.parametrize(
    "message",
    [b"", b"\x0a", b"\x12\x01x", b"\x0a\x05abc", b"\x0a\x01abc", b"\x0a\xff\xff\xff\xff\xff\xff"],
)
def test_malformed_envelopes_are_frame_errors(message: bytes) -> None:
    with pytest.raises(FrameError):
        unwrap(message)


def test_unwrapped_frames_decode_although_they_start_unaligned() -> None:
    data = _valid_frame()
    assert decode_frame(unwrap(wrap(data)), 0.0).seq == 5


# -- one schema, found wherever raftmq is installed ---------------------------------


def test_only_frames_py_loads_a_capnp_schema() -> None:
    loaders = [
        path.relative_to(ROOT).as_posix()
        for folder in ("node", "cluster")
        for path in (ROOT / folder).rglob("*.py")
        if "capnp.load(" in path.read_text()
    ]
    assert loaders == ["cluster/forwarding/frames.py"]


def test_schema_is_found_in_the_checkout_when_installed_editable() -> None:
    assert schema_path() == ROOT / "capnp" / "frames.capnp"


@pytest.mark.timeout(300)
def test_wheel_ships_the_schemas_and_loads_the_frames_schema_from_them(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (setuptools writes build/ next to them),
    unpack it, and import it with nothing of the checkout on the path."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("node", "cluster", "capnp", "proto"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("raftmq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "raftmq/capnp/frames.capnp" in names
    assert "raftmq/proto/raftmq.proto" in names
    assert not any(name.startswith("raftmq/capnp/__init__") for name in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    # -S: no site module, so the editable install's path hook is not active.
    probe = (
        "from raftmq.cluster.forwarding import frames; "
        "print(frames.schema_path()); "
        "print(frames.decode_frame(frames.encode_frame(1, 0, [], 0.0), 0.0).seq)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": f"{target}:{site_packages}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out == [str(target / "raftmq" / "capnp" / "frames.capnp"), "1"]
