"""The fault suite's history: every operation the workload and the nemesis did, as JSON lines.

Jepsen's shape (see /work/shared/helpers/i11-interfaces.md, and docs of the suite): each
operation is an "invoke" event and later one completion of the same process and function,
"ok" (it happened), "fail" (it surely did not) or "info" (unknown); things nobody asked for,
such as a delivery or a dropped connection, are completion-only events. The checkers read the
history and nothing else, so it must survive the run that wrote it: each line is flushed as
it is written, and a history cut short by a crash still loads (up to its last whole line).

paho runs its callbacks in the client's thread and every workload actor has its own, so
``History`` takes a lock per event; the index and the time are taken under that lock, which
makes index order and time order the same order, the one the checkers reason in.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Literal

Completion = Literal["ok", "fail", "info"]
Op = dict[str, Any]
"""One event as written: index, time, process, type, f, value."""


class History:
    """Records events to ``path`` (truncated at start), one flushed JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._index = 0
        self._outstanding: dict[str, Op] = {}
        """Each process's invoked operation, until its completion: at most one at a time."""

    def now(self) -> float:
        """Seconds since the history started, the clock of every event's ``time``."""
        return time.monotonic() - self._start

    def invoke(self, process: str, f: str, value: dict[str, Any]) -> Op:
        """Start an operation of ``process``; complete it with ``complete(op, ...)``."""
        with self._lock:
            pending = self._outstanding.get(process)
            if pending is not None:
                raise RuntimeError(
                    f"process {process!r} invoked {f!r} while its {pending['f']!r} "
                    f"(history index {pending['index']}) is still outstanding"
                )
            op = self._write(process, "invoke", f, value)
            self._outstanding[process] = op
            return op

    def complete(self, op: Op, type_: Completion, value: dict[str, Any]) -> Op:
        """The completion of ``op``, an invoke this history returned."""
        process = op["process"]
        with self._lock:
            if self._outstanding.get(process) is not op:
                raise RuntimeError(
                    f"completion of {op['f']!r} (history index {op['index']}) of process "
                    f"{process!r}, which has no such operation outstanding"
                )
            del self._outstanding[process]
            return self._write(process, type_, op["f"], value)

    def event(self, process: str, f: str, value: dict[str, Any]) -> Op:
        """A completion-only "ok" event: a delivery, a connection that ended, a read."""
        with self._lock:
            return self._write(process, "ok", f, value)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def _write(self, process: str, type_: str, f: str, value: dict[str, Any]) -> Op:
        op: Op = {
            "index": self._index,
            "time": round(self.now(), 6),
            "process": process,
            "type": type_,
            "f": f,
            "value": value,
        }
        self._index += 1
        self._file.write(json.dumps(op, separators=(",", ":")) + "\n")
        self._file.flush()
        return op


def load(path: Path) -> list[Op]:
    """The events of a history file in index order; a torn last line (a crash) is left out.

    Any other line that is not JSON is an error naming the file and line.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    ops: list[Op] = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a history event: {error}") from error
    return ops
