"""Reading a Mosquitto config into directive lines, ``include_dir`` files included.

Mosquitto reads a config line by line: ``#`` starts a comment, the first word
is the directive and the rest of the line its value. ``include_dir DIR`` in
the main file reads every ``*.conf`` file of DIR in sorted order, at that
point; in an included file it is ignored (as Mosquitto does, which the
converter reports). The files themselves come from a ``ConfigSource``, so
this module does no I/O of its own and tests can hand it files in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class MosquittoConfigError(Exception):
    """A config Mosquitto itself would refuse; the message starts with FILE:LINE."""


class ConfigSource(Protocol):
    """Where the config files come from. Both raise OSError as the file system does."""

    def read_bytes(self, path: str) -> bytes: ...

    def conf_files(self, directory: str) -> list[str]:
        """The paths of the ``*.conf`` files in ``directory``, in any order."""
        ...


@dataclass(frozen=True, slots=True)
class Line:
    """One directive: where it is, its name and its value (the rest of the line)."""

    file: str
    number: int
    directive: str
    value: str
    included: bool = False
    """From a file read through include_dir rather than the main file."""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"

    @property
    def text(self) -> str:
        return f"{self.directive} {self.value}".rstrip()

    def error(self, problem: str) -> MosquittoConfigError:
        return MosquittoConfigError(f"{self.where}: {self.directive}: {problem}")


def read_config(path: str, source: ConfigSource) -> list[Line]:
    """Every directive of ``path`` and of the files it includes, in Mosquitto's order."""
    lines: list[Line] = []
    for line in _read_file(path, source, included=False):
        lines.append(line)
        if line.directive == "include_dir" and not line.included:
            for conf in _included_files(line, source):
                lines.extend(_read_file(conf, source, included=True))
    return lines


def _included_files(line: Line, source: ConfigSource) -> list[str]:
    if not line.value:
        raise line.error("needs a directory")
    try:
        files = source.conf_files(line.value)
    except OSError as exc:
        raise line.error(f"cannot read directory {line.value!r}: {_reason(exc)}") from None
    # Mosquitto sorts the names byte by byte (strcmp), which is code point order.
    return sorted(files)


def _read_file(path: str, source: ConfigSource, *, included: bool) -> list[Line]:
    try:
        data = source.read_bytes(path)
    except OSError as exc:
        raise MosquittoConfigError(f"{path}: cannot read file: {_reason(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data[: exc.start].count(b"\n") + 1
        raise MosquittoConfigError(f"{path}:{number}: not UTF-8 ({exc.reason})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        directive, _, value = stripped.partition(" ")
        if "\t" in directive:
            directive, _, rest = directive.partition("\t")
            value = f"{rest} {value}"
        lines.append(Line(path, number, directive, value.strip(), included))
    return lines


def _reason(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
