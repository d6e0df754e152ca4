"""``raftmq node``: run one broker node, alone or as a member of a cluster."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import uvloop

from raftmq.node.config import (
    DEFAULT_LISTEN,
    KEYS,
    Config,
    ConfigError,
    config_reference_text,
    load_config,
)

if TYPE_CHECKING:
    from raftmq.node.broker import Broker

log = logging.getLogger("raftmq.cluster.cli")

EXIT_FAILURE = 1

# Config keys that `raftmq node` also takes as flags (--data-dir for data_dir), with metavars.
NODE_FLAGS = {
    "listen": "URL",
    "data_dir": "DIR",
    "node_id": "ID",
    "log_level": "LEVEL",
    "cluster_secret": "SECRET",
    "raft_listen": "HOST:PORT",
    "grpc_listen": "HOST:PORT",
    "peers": "ID=RAFT,GRPC",
    "cluster_tls_ca": "FILE",
    "cluster_tls_cert": "FILE",
    "cluster_tls_key": "FILE",
}
REPEATED_FLAGS = {"listen": "--listen", "peers": "--peer"}
"""Keys whose flag is given once per list item, replacing the file's list."""


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    help_of = {key.name: key.help.replace("%", "%%") for key in KEYS}
    node = commands.add_parser(
        "node",
        help="run one broker node",
        description="Run one broker node until SIGTERM or SIGINT, then shut it down gracefully.\n"
        f"Without arguments it listens on {DEFAULT_LISTEN} only, and accepts anonymous\n"
        "clients because nobody else can reach it.",
        epilog="config file keys (flags win over the file):\n" + config_reference_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # -c as well: Mosquitto's users type `-c FILE` by habit.
    node.add_argument("-c", "--config", metavar="FILE", help="TOML file with any of the keys below")
    for name, metavar in NODE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if name in REPEATED_FLAGS:
            node.add_argument(
                REPEATED_FLAGS[name],
                dest=name,
                action="append",
                metavar=metavar,
                help=f"{help_of[name]} Repeat for several; replaces the file's list.",
            )
        else:
            node.add_argument(flag, metavar=metavar, help=help_of[name])
    node.set_defaults(handler=_run_node)


def node_config(args: argparse.Namespace) -> Config:
    """The node's config: the file named by --config, with the flags given winning over it."""
    overrides = {name: getattr(args, name) for name in NODE_FLAGS}
    return load_config(args.config, {k: v for k, v in overrides.items() if v is not None})


def _run_node(args: argparse.Namespace) -> int:
    config = node_config(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve_node(config))


async def serve_node(config: Config) -> int:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully; return the exit code.

    A second signal during the graceful stop exits at once, for the operator
    whose clients hold the shutdown up.
    """
    # Imported here so that --help, config errors and the other subcommands
    # neither pay for nor depend on loading the whole broker.
    from raftmq.node.broker import Broker

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop_requested.is_set():
            log.warning("%s again: exiting without finishing the shutdown", sig.name)
            os._exit(EXIT_FAILURE)
        log.info("%s: shutting down", sig.name)
        stop_requested.set()

    # Installed before start() so that a signal during startup still stops gracefully.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    hooks = None
    startup_errors: tuple[type[Exception], ...] = (OSError,)
    if config.cluster_secret is not None:
        # Only clustered nodes load Raft and gRPC.
        from ..assemble import build_cluster
        from ..replication.raft import RaftStartError

        startup_errors = (OSError, RaftStartError)
        try:
            hooks = build_cluster(config)
        except RaftStartError as exc:
            print(f"raftmq: error: cannot start node {config.node_id}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    broker = Broker(config, hooks)
    loop.add_signal_handler(signal.SIGHUP, reload_security_files, broker)
    try:
        await broker.start()
    except startup_errors as exc:
        print(f"raftmq: error: cannot start node {config.node_id}: {exc}", file=sys.stderr)
        await broker.stop()
        return EXIT_FAILURE
    try:
        for url in broker.addresses:
            print(f"raftmq node {config.node_id} listening on {url}", flush=True)
        await stop_requested.wait()
    finally:
        await broker.stop()
    return 0


def reload_security_files(broker: "Broker") -> None:
    """SIGHUP: read the password and ACL files again; connected clients stay connected.

    Each file is reloaded on its own, all or nothing: a file with an error
    keeps its previous contents in force, and the error is logged.
    """
    parts = [
        ("password file", broker.auth.passwords, broker.auth.reload),
        ("ACL file", broker.acl, broker.reload_acl),  # subscriptions made follow it too
    ]
    for what, part, reload in parts:
        if part is None:
            continue
        try:
            reload()
        except ConfigError as exc:
            log.error("SIGHUP: kept the previous %s: %s", what, exc)
        else:
            log.info("SIGHUP: reloaded %s %s (%d entries)", what, part.path, len(part))
    if not any(part is not None for _, part, _ in parts):
        log.info("SIGHUP: no password or ACL file to reload")
