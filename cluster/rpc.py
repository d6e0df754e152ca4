"""What forwarding and the admin service share on gRPC: the message envelope,
keyed proofs, metadata and channel options.

Why no generated code: each method's message is one ``bytes`` field, so
protobuf would only add a runtime dependency and a generated module to keep
in sync. Methods are registered by path with generic handlers, and the
envelope (field 1, length-delimited) is written by hand. ``proto/raftmq.proto``
still describes the wire exactly; a unit test compiles it with grpcio-tools
and compares protobuf's bytes with ours.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from .forwarding.frames import MAX_FRAME_BYTES, FrameError

_FRAME_TAG = 0x0A  # field 1, wire type 2 (length-delimited)
_ENVELOPE_SLACK = 16  # tag + length varint


# -- envelope -----------------------------------------------------------------


def wrap(frame: bytes) -> bytes:
    """The protobuf ``Frame`` message holding ``frame`` in field ``capnp``."""
    length = len(frame)
    head = bytearray((_FRAME_TAG,))
    while length >= 0x80:
        head.append((length & 0x7F) | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head) + frame


def unwrap(message: bytes) -> bytes:
    """The Cap'n Proto bytes inside a protobuf ``Frame``; ``FrameError`` if malformed.

    A copy on purpose: Cap'n Proto refuses data that is not word-aligned,
    and the payload starts 2 to 6 bytes into the gRPC message.
    """
    view = memoryview(message)
    if len(view) < 2 or view[0] != _FRAME_TAG:
        raise FrameError(f"gRPC message of {len(view)} bytes is not a Frame envelope")
    length = 0
    shift = 0
    pos = 1
    while True:
        if pos >= len(view) or shift > 28:
            raise FrameError("Frame envelope has a malformed length")
        byte = view[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if pos + length != len(view):
        raise FrameError(f"Frame envelope announces {length} bytes, carries {len(view) - pos}")
    return bytes(view[pos:])


# -- proofs and metadata ---------------------------------------------------------


def keyed_proof(secret: bytes, purpose: str, fields: Sequence[str]) -> str:
    """HMAC-SHA256 over ``fields`` with a key derived from ``secret`` for ``purpose`` alone.

    The raw secret (also the Raft password) never serves as a key, and a proof
    made for one purpose (forwarding, admin) never passes for another's.
    """
    key = hashlib.sha256(f"raftmq {purpose}\0".encode() + secret).digest()
    text = "\n".join([f"raftmq-{purpose}-v1", *fields])
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def text_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The text entries of gRPC metadata by key; binary (``-bin``) values are left out."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


# -- credentials and channel options ---------------------------------------------


def common_options(keepalive_s: float) -> list[tuple[str, int | str]]:
    """Options for both ends: frames up to MAX_FRAME_BYTES, dead peers noticed by keepalive."""
    limit = MAX_FRAME_BYTES + _ENVELOPE_SLACK
    keepalive_ms = int(keepalive_s * 1000)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
    ]


def channel_options(
    peer_id: str, tls: bool, keepalive_s: float, backoff: tuple[float, float]
) -> list[tuple[str, int | str]]:
    options = common_options(keepalive_s)
    low, high = (int(s * 1000) for s in backoff)
    options += [
        ("grpc.initial_reconnect_backoff_ms", low),
        ("grpc.min_reconnect_backoff_ms", low),
        ("grpc.max_reconnect_backoff_ms", high),
    ]
    if tls:
        options.append(("grpc.ssl_target_name_override", peer_id))
    return options
