"""Reading and writing the small text files operators edit: password file, ACL, certificates.

Both halves exist so that every such file fails the same way: a read names
the kind of file, its path and the reason, and a write never leaves a
half-written file for a node reloading it on SIGHUP to find.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .config import ConfigError


def read_text(path: str, what: str, error: type[ConfigError]) -> str:
    """The UTF-8 text of ``path``; else ``error`` naming ``what`` (say "ACL file") and ``path``."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        raise error(f"{what} {path}: cannot read: {reason}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with ``mode``, then rename over ``path``.

    mkstemp creates the file 0600 already, so a key is never readable by
    others, not even between creation and chmod.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
