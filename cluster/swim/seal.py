"""Sealing SWIM packets: AES-256-GCM under a key derived from the cluster secret.

A sealed packet is ``version | mode | nonce (12) | ciphertext | tag (16)``.
The plaintext is ``boot id (8) | counter (8) | message``, so who sent it and
its place in the sender's sequence are hidden and authenticated along with
the message; ``version | mode`` is authenticated as associated data, so a
packet cannot be passed off as another format. The nonce is random per
packet: members share one key, and 96 random bits do not collide in any
realistic number of packets (2^32 of them keep the risk below 2^-32).

The key is HKDF-SHA256 of the secret with a fixed ``info`` naming this use
and its version, so the same secret used elsewhere (the cluster tag that
discovery announces, a future v2 format) yields unrelated keys. HKDF does not
stretch a weak secret: the cluster secret must be random, hence at least 16
bytes.

Without a secret (``Sealer(None)``), packets are framed the same way, boot id
and counter in the clear, which still drops duplicated datagrams but
authenticates nothing: mode byte 0. A member with a secret refuses such
packets, and one without refuses encrypted ones, both as ``auth`` drops.

``Sealer`` keeps the derived key inside ``AESGCM`` and never the secret, and
no message or ``repr`` shows either.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadPacket, Replayed, Unauthenticated, UnknownVersion
from .replay import ReplayGuard

VERSION = 1
"""The sealing format's version, the first byte of every datagram."""
KEY_INFO = b"raftmq swim packet key v1 (aes-256-gcm)"
"""HKDF ``info``: binds the derived key to this use and this version of it."""
MIN_SECRET = 16
"""Shortest cluster secret accepted, in bytes."""

_PLAIN, _AES_GCM = 0, 1
_HEADER = struct.Struct("!BB")
_FRAME = struct.Struct("!8sQ")
_NONCE = 12
_TAG = 16
OVERHEAD = _HEADER.size + _NONCE + _FRAME.size + _TAG
"""Bytes sealing adds to a message (46)."""


def derive_key(secret: bytes) -> bytes:
    """The AES-256 key for ``secret``."""
    if len(secret) < MIN_SECRET:
        raise ValueError(
            f"the cluster secret is {len(secret)} bytes; at least {MIN_SECRET} random bytes "
            "are needed"
        )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(secret)


class Sealer:
    """Seals this member's outgoing packets and opens, once each, those of others."""

    def __init__(
        self,
        secret: bytes | None,
        *,
        boot_id: bytes | None = None,
        replay_window: int = 128,
        max_boots: int = 1024,
    ) -> None:
        """``secret``: the cluster secret, or None to frame packets without encrypting or
        authenticating them. ``boot_id``: 8 bytes naming this process start (random by
        default; set by tests)."""
        self._aead = AESGCM(derive_key(secret)) if secret is not None else None
        self.boot_id = boot_id if boot_id is not None else os.urandom(8)
        if len(self.boot_id) != 8:
            raise ValueError(f"a boot id is 8 bytes, not {len(self.boot_id)}")
        self._counter = 0
        self._replays = ReplayGuard(replay_window, max_boots)

    @property
    def encrypted(self) -> bool:
        """Whether packets are encrypted and authenticated (a secret was given)."""
        return self._aead is not None

    def __repr__(self) -> str:
        return f"Sealer(encrypted={self.encrypted}, boot_id={self.boot_id.hex()})"

    def seal(self, message: bytes) -> bytes:
        """The datagram carrying ``message``, ``OVERHEAD`` bytes longer (less unencrypted)."""
        self._counter += 1
        frame = _FRAME.pack(self.boot_id, self._counter) + message
        if self._aead is None:
            return _HEADER.pack(VERSION, _PLAIN) + frame
        header = _HEADER.pack(VERSION, _AES_GCM)
        nonce = os.urandom(_NONCE)
        return header + nonce + self._aead.encrypt(nonce, frame, header)

    def open(self, datagram: bytes) -> bytes:
        """The message sealed in ``datagram``. Raises ``UnknownVersion``, ``BadPacket``
        (truncated), ``Unauthenticated`` (not sealed with this cluster's secret, or
        altered) or ``Replayed``; each names the datagram's size, never key material."""
        size = len(datagram)
        if size < _HEADER.size:
            raise BadPacket(f"truncated SWIM datagram of {size} bytes")
        version, mode = _HEADER.unpack_from(datagram)
        if version != VERSION or mode not in (_PLAIN, _AES_GCM):
            raise UnknownVersion(
                f"SWIM datagram of {size} bytes in sealing format {version}, mode {mode}; "
                f"this member speaks format {VERSION}"
            )
        if (mode == _AES_GCM) != self.encrypted:
            raise Unauthenticated(
                f"SWIM datagram of {size} bytes is "
                + (
                    "not encrypted, and this member requires the cluster secret"
                    if self.encrypted
                    else "encrypted, and this member has no cluster secret"
                )
            )
        frame = _decrypt(self._aead, datagram) if self._aead else datagram[_HEADER.size :]
        if len(frame) < _FRAME.size:
            raise BadPacket(f"truncated SWIM datagram of {size} bytes")
        boot, counter = _FRAME.unpack_from(frame)
        if not self._replays.accept(boot, counter):
            raise Replayed(
                f"SWIM datagram of {size} bytes replayed or too old: packet {counter} of "
                f"boot {boot.hex()}"
            )
        return frame[_FRAME.size :]


def _decrypt(aead: AESGCM, datagram: bytes) -> bytes:
    size = len(datagram)
    if size < OVERHEAD:
        raise BadPacket(f"truncated SWIM datagram of {size} bytes")
    header, nonce = datagram[: _HEADER.size], datagram[_HEADER.size : _HEADER.size + _NONCE]
    try:
        return aead.decrypt(nonce, datagram[_HEADER.size + _NONCE :], header)
    except InvalidTag:
        raise Unauthenticated(
            f"SWIM datagram of {size} bytes failed authentication: sealed with another "
            "cluster secret, or altered on the way"
        ) from None
