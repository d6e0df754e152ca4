"""The ``raftmq`` command.

Each subcommand is registered by one ``add_parser`` function (one module of
this folder, or the bench's) that builds its parser and sets ``handler``;
``main`` only parses and dispatches, so new subcommands (``bench``, ``certs``,
``passwd``, ``cluster ...``, ``config ...``) touch nothing else. Handlers return the process
exit code.
"""

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

from raftmq.node.config import ConfigError

from ..tools.bench.cli import add_parser as add_bench_command
from .certs import add_parser as add_certs_command
from .cluster_up import add_parser as add_cluster_command
from .config import add_parser as add_config_command
from .node import add_parser as add_node_command
from .passwd import add_parser as add_passwd_command

EXIT_USAGE = 2  # what argparse exits with; a bad config is a usage error too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftmq", description="A clustered MQTT broker.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('raftmq')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_node_command(commands)
    add_bench_command(commands)
    add_certs_command(commands)
    add_passwd_command(commands)
    add_cluster_command(commands)
    add_config_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"raftmq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
