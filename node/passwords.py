"""The password file: one ``user:hash`` line per user, with salted, deliberately slow hashes.

New hashes are scrypt with a per-user random salt, and the cost parameters are
stored in each line, so raising them later (``hash_password(n=...)``) leaves
existing lines valid:

    alice:$scrypt$16384$8$1$<salt, base64>$<hash, base64>

Files written by ``mosquitto_passwd`` are read too (``$7$`` PBKDF2-SHA512 and
the older ``$6$`` salted SHA-512), so a Mosquitto deployment can move over
with its users; ``raftmq passwd`` rewrites a user's line as scrypt whenever
that user's password is set.

Checking costs tens of milliseconds of CPU on purpose: callers on an event
loop run ``verify`` in a thread (hashlib releases the GIL while hashing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from .config import ConfigError
from .files import read_text

SCRYPT_N = 1 << 14
"""CPU/memory cost: 16 MiB and ~40 ms per check. Higher makes a CONNECT storm of
password clients proportionally more expensive for the broker itself."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
"""Refuse lines whose parameters would need more: a typo must not exhaust the node's memory."""
MAX_PBKDF2_ITERATIONS = 10_000_000


class PasswordFileError(ConfigError):
    """A password file that cannot be used; the message names the file and line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _scrypt_memory(n: int, r: int, p: int) -> int:
    # What OpenSSL allocates: 128·r·N for V plus 128·r·p for B, with headroom.
    return 128 * r * (n + p + 2) + 1024 * 1024


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One stored hash; ``verify`` recomputes it from a candidate password."""

    scheme: str  # "scrypt", "pbkdf2-sha512" ($7$) or "sha512" ($6$)
    salt: bytes
    digest: bytes
    n: int = 0  # scrypt cost, or PBKDF2 iterations
    r: int = 0
    p: int = 0

    def compute(self, password: bytes) -> bytes:
        if self.scheme == "scrypt":
            return hashlib.scrypt(
                password,
                salt=self.salt,
                n=self.n,
                r=self.r,
                p=self.p,
                maxmem=_scrypt_memory(self.n, self.r, self.p),
                dklen=len(self.digest),
            )
        if self.scheme == "pbkdf2-sha512":
            return hashlib.pbkdf2_hmac("sha512", password, self.salt, self.n, len(self.digest))
        return hashlib.sha512(password + self.salt).digest()

    def verify(self, password: bytes) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)

    def encode(self) -> str:
        if self.scheme == "scrypt":
            return f"$scrypt${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.digest)}"
        if self.scheme == "pbkdf2-sha512":
            return f"$7${self.n}${_b64(self.salt)}${_b64(self.digest)}"
        return f"$6${_b64(self.salt)}${_b64(self.digest)}"


def hash_password(
    password: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """A new ``$scrypt$...`` hash of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    template = PasswordHash("scrypt", salt, bytes(HASH_BYTES), n, r, p)
    return PasswordHash("scrypt", salt, template.compute(password), n, r, p).encode()


def parse_hash(text: str) -> PasswordHash:
    """Decode a stored hash; ValueError says what is wrong with it (never echoing it)."""
    parts = text.split("$")
    if len(parts) < 2 or parts[0] != "":
        raise ValueError("the hash must start with '$scrypt$' (or Mosquitto's '$7$' or '$6$')")
    kind = parts[1]
    try:
        if kind == "scrypt":
            if len(parts) != 7:
                raise ValueError("expected $scrypt$N$r$p$salt$hash")
            n, r, p = int(parts[2]), int(parts[3]), int(parts[4])
            if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 64:
                raise ValueError("scrypt N must be a power of 2 above 1, r and p 1 to 64")
            if _scrypt_memory(n, r, p) > MAX_SCRYPT_MEMORY:
                raise ValueError(f"scrypt parameters need more than {MAX_SCRYPT_MEMORY} bytes")
            salt, digest = _unb64(parts[5]), _unb64(parts[6])
            parsed = PasswordHash("scrypt", salt, digest, n, r, p)
        elif kind == "7":
            if len(parts) != 5:
                raise ValueError("expected $7$iterations$salt$hash")
            iterations = int(parts[2])
            if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
                raise ValueError(f"iterations must be 1 to {MAX_PBKDF2_ITERATIONS}")
            parsed = PasswordHash("pbkdf2-sha512", _unb64(parts[3]), _unb64(parts[4]), iterations)
        elif kind == "6":
            if len(parts) != 4:
                raise ValueError("expected $6$salt$hash")
            parsed = PasswordHash("sha512", _unb64(parts[2]), _unb64(parts[3]))
        else:
            raise ValueError(f"unknown hash type '${kind}$' (expected $scrypt$, $7$ or $6$)")
    except binascii.Error:
        raise ValueError("salt or hash is not valid base64") from None
    if not parsed.salt or len(parsed.digest) < 16:
        raise ValueError("salt is empty or hash is shorter than 16 bytes")
    return parsed


def split_line(line: str) -> tuple[str, str] | None:
    """(user, hash) of one line, or None for a blank or ``#`` comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    user, sep, stored = text.partition(":")
    if not sep:
        raise ValueError("expected USER:HASH")
    if not user:
        raise ValueError("empty user name")
    return user, stored


class PasswordFile:
    """The users of one password file, as loaded; ``reload`` replaces them all or none."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users: dict[str, PasswordHash] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again; on any error the users loaded before are kept."""
        self.users = self._read()

    def _read(self) -> dict[str, PasswordHash]:
        lines = read_text(self.path, "password file", PasswordFileError).splitlines()
        users: dict[str, PasswordHash] = {}
        for number, line in enumerate(lines, 1):
            where = f"{self.path}:{number}"
            try:
                entry = split_line(line)
                if entry is None:
                    continue
                user, stored = entry
                if user in users:
                    raise ValueError(f"user {user!r} is listed twice")
                users[user] = parse_hash(stored)
            except ValueError as exc:
                raise PasswordFileError(f"password file {where}: {exc}") from None
        return users

    def verify(self, username: str, password: bytes | None) -> bool:
        """Whether ``password`` is ``username``'s. Blocking: tens of milliseconds.

        An unknown user costs a full scrypt too, so timing does not tell an
        attacker which user names exist.
        """
        stored = self.users.get(username)
        if stored is None or password is None:
            _DUMMY.verify(password or b"")
            return False
        return stored.verify(password)

    def __len__(self) -> int:
        return len(self.users)


_DUMMY = PasswordHash(
    "scrypt", os.urandom(SALT_BYTES), bytes(HASH_BYTES), SCRYPT_N, SCRYPT_R, SCRYPT_P
)
