"""``raftmq config from-mosquitto FILE``: print the raftmq config equivalent to a Mosquitto one.

    raftmq config from-mosquitto /etc/mosquitto/mosquitto.conf > raftmq.toml
    raftmq node --config raftmq.toml

The TOML goes to standard output; each Mosquitto directive that raftmq cannot
honour as written gets one line on standard error: FILE:LINE, the directive,
and what to do about it. Exit status: 0, or 1 with --strict when any such line
was printed, or 2 when the file cannot be read or Mosquitto would refuse it.
"""

from __future__ import annotations

import argparse
import os
import sys

from raftmq.cluster.tools.mosquitto_conf.convert import convert
from raftmq.cluster.tools.mosquitto_conf.reader import MosquittoConfigError

EXIT_REMARKS = 1
EXIT_INVALID = 2


class FileSystem:
    """The ``ConfigSource`` of the converter: the files as they are on disk."""

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    def conf_files(self, directory: str) -> list[str]:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.name.endswith(".conf") and e.is_file()]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``config`` and its one subcommand, ``from-mosquitto``."""
    config = commands.add_parser("config", help="convert configs to raftmq's")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    from_mosquitto = actions.add_parser(
        "from-mosquitto",
        help="print the raftmq config equivalent to a Mosquitto 2.x config",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from_mosquitto.add_argument("file", metavar="FILE", help="the mosquitto.conf to convert")
    from_mosquitto.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any directive could not be converted as written",
    )
    from_mosquitto.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        conversion = convert(args.file, FileSystem())
    except MosquittoConfigError as exc:
        print(f"raftmq config: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for remark in conversion.remarks:
        print(f"warning: {remark}", file=sys.stderr)
    sys.stdout.write(conversion.toml)
    if args.strict and conversion.remarks:
        return EXIT_REMARKS
    return 0
