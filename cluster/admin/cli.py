"""``raftmq cluster status`` and ``raftmq cluster node-down NODE``: the admin service's clients.

Both read a node's config file (``--config FILE``, or ``--dir D`` for the
``D/n1/raftmq.toml`` of ``raftmq cluster up``): it gives the cluster secret
that admin calls are signed with, and every node's gRPC address (its own
``grpc_listen`` and its ``peers``).

``status`` asks one node (``--node``, else the config's own) for its view of
the cluster. ``node-down NODE`` asks the nodes in turn (never NODE itself)
until one names the Raft leader, then has the leader declare NODE dead: it
publishes the wills of NODE's clients and re-homes NODE's persistent
sessions on live nodes.

Exit codes: 0 done, 1 the cluster could not be asked or refused, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftmq.node.config import ConfigError, load_config

if TYPE_CHECKING:
    from ..tls import NodeTLS
    from .client import AdminClient

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 10.0
CLUSTER_UP_CONFIG = Path("n1") / "raftmq.toml"
"""The config ``--dir D`` stands for, inside D."""

Report = dict[str, Any]


class AdminCommandFailed(Exception):
    """The command could not be carried out; the message names the nodes involved."""


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """What a node's config tells an admin client: who is where, and how to sign calls."""

    config_path: Path
    own_node: str
    addresses: dict[str, str]
    """Node id -> gRPC address, the config's own node first, then its peers in order."""
    secret: bytes
    tls: NodeTLS | None
    """The node's own certificate, when its config sets node TLS: nodes then demand one."""

    def address_of(self, node_id: str) -> str:
        address = self.addresses.get(node_id)
        if address is None:
            raise ConfigError(
                f"node {node_id!r} is not in the cluster of {self.config_path} "
                f"({', '.join(self.addresses)})"
            )
        return address

    def client(self, node_id: str, timeout: float) -> AdminClient:
        from .client import AdminClient

        address = self.address_of(node_id)
        return AdminClient(node_id, address, self.secret, self.tls, timeout)


def cluster_access(config_file: Path | None, directory: Path | None) -> ClusterAccess:
    """Read ``--config``'s file (or ``--dir``'s first node's); ``ConfigError`` if unfit."""
    path = config_file if config_file is not None else Path(directory or ".") / CLUSTER_UP_CONFIG
    config = load_config(path)
    if config.cluster_secret is None or config.grpc_listen is None:
        raise ConfigError(f"{path}: no 'cluster_secret': not the config of a cluster node")
    addresses = {config.node_id: config.grpc_listen}
    addresses.update((peer.node_id, peer.grpc) for peer in config.peers)
    from ..tls import NodeTLS  # here: grpc loads only for the commands that call nodes

    tls = NodeTLS.of_node(config)
    secret = config.cluster_secret.encode()
    return ClusterAccess(path, config.node_id, addresses, secret, tls)


# -- commands --------------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``status`` and ``node-down`` under ``raftmq cluster``."""
    status = commands.add_parser(
        "status",
        help="show members, leader, commit index, routes, sessions and stream health",
        description="Show one node's view of the cluster: members, Raft leader, term and "
        "commit index, counts of clients, sessions, routes, retained messages and wills, "
        "the route table, and the health of the node's forwarding streams.",
    )
    _add_access_options(status)
    status.set_defaults(handler=_run_status)
    node_down = commands.add_parser(
        "node-down",
        help="declare a node dead: publish its clients' wills, re-home its sessions",
        description="Have the Raft leader declare NODE dead: NODE's routes go, its persistent "
        "sessions are re-homed on live nodes and the wills of its clients are published. "
        "A node declared down that is in fact running loses its clients.",
    )
    node_down.add_argument("node_id", metavar="NODE", help="id of the dead node")
    node_down.add_argument(
        "--force",
        action="store_true",
        help="declare NODE down even though SWIM sees it alive (its clients are kicked)",
    )
    _add_access_options(node_down)
    node_down.set_defaults(handler=_run_node_down)


def _add_access_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", type=Path, metavar="FILE", help="a cluster node's config file (raftmq.toml)"
    )
    source.add_argument(
        "--dir",
        type=Path,
        metavar="D",
        help=f"a `raftmq cluster up` directory: use D/{CLUSTER_UP_CONFIG}",
    )
    parser.add_argument(
        "--node", metavar="ID", help="the node to ask first (default: the config's own node)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each call ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def _run_status(args: argparse.Namespace) -> int:
    access = cluster_access(args.config, args.dir)
    node_id = args.node or access.own_node
    access.address_of(node_id)
    return _run(args, lambda: _ask_status(access, node_id, args.timeout), render_status)


def _run_node_down(args: argparse.Namespace) -> int:
    access = cluster_access(args.config, args.dir)
    access.address_of(args.node_id)
    first = args.node or access.own_node
    access.address_of(first)
    return _run(
        args,
        lambda: declare_down(access, args.node_id, first, args.timeout, args.force),
        render_node_down,
    )


def _run(
    args: argparse.Namespace,
    work: Callable[[], Coroutine[Any, Any, Report]],
    render: Callable[[Report], str],
) -> int:
    from .client import AdminCallFailed

    try:
        report = asyncio.run(work())
    except (AdminCallFailed, AdminCommandFailed) as exc:
        print(f"raftmq: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        print(json.dumps(report, indent=2) if args.json else render(report), flush=True)
    except BrokenPipeError:  # `raftmq cluster status | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


async def _ask_status(access: ClusterAccess, node_id: str, timeout: float) -> Report:
    async with access.client(node_id, timeout) as client:
        return await client.status()


async def declare_down(
    access: ClusterAccess, dead: str, first: str, timeout: float, force: bool = False
) -> Report:
    """Find the leader (asking ``first``, then the other nodes but ``dead``) and have it
    declare ``dead`` down; follows the leader's redirect once if leadership moved."""
    from .client import AdminCallFailed

    asked = [first, *access.addresses]
    failures: list[str] = []
    leader = seen_by = None
    for node_id in dict.fromkeys(n for n in asked if n != dead):
        try:
            status = await _ask_status(access, node_id, timeout)
        except AdminCallFailed as exc:
            failures.append(str(exc))
            continue
        if status.get("leader"):
            leader, seen_by = status["leader"], node_id
            break
        failures.append(f"node {node_id} knows no Raft leader")
    if leader is None:
        raise AdminCommandFailed("no node named the Raft leader: " + "; ".join(failures))
    if leader == dead:
        raise AdminCommandFailed(
            f"node {dead} is the Raft leader (as node {seen_by} sees it); if it is down, "
            "try again once the other nodes have elected a new leader"
        )
    try:
        async with access.client(leader, timeout) as client:
            return await client.node_down(dead, force)
    except AdminCallFailed as exc:
        moved = exc.leader
        if moved is None or moved in (leader, dead) or moved not in access.addresses:
            raise
    async with access.client(moved, timeout) as client:
        return await client.node_down(dead, force)


# -- rendering ---------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [list(headers), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_status(report: Report) -> str:
    """A node's status reply as a few compact tables."""
    down = set(report["down"])
    leader = report["leader"]
    raft_peers = report["raft_peers"]
    clients, sessions = report["clients_by_node"], report["sessions_by_node"]
    lines = [
        f"node {report['node']}: {report['role']}, term {report['term']}, "
        f"commit index {report['commit_index']}, last applied {report['last_applied']}, "
        f"quorum {_cell(report['has_quorum'])}",
        f"leader: {leader or 'none known'}",
        *(
            [f"BUG: {failures} Raft apply listener failures (see the node's log)"]
            if (failures := report.get("listener_failures", 0))
            else []
        ),
        "",
    ]
    health = report.get("health", {})
    members = []
    for node_id in report["members"]:
        raft = "this node" if node_id == report["node"] else _link(raft_peers.get(node_id))
        swim = health.get(node_id)
        members.append(
            (
                node_id,
                "down" if node_id in down else "up",
                None if swim is None else f"{swim['state']} ({swim['incarnation']})",
                None if swim is None or swim["rtt_ms"] is None else f"{swim['rtt_ms']:g} ms",
                "leader" if node_id == leader else None,
                raft,
                clients.get(node_id, 0),
                sessions.get(node_id, 0),
            )
        )
    headers = ("MEMBER", "STATE", "SWIM", "PROBE RTT", "ROLE", "RAFT LINK")
    lines += _table((*headers, "CLIENTS", "SESSIONS"), members)
    counts = report["counts"]
    lines += [
        "",
        f"clients {counts['clients']}, persistent sessions {counts['persistent_sessions']}, "
        f"wills {counts['wills']}, retained {counts['retained']}, routes {counts['routes']}",
        "",
    ]
    routes = [(r["filter"], r["share_group"], ",".join(r["nodes"])) for r in report["routes"]]
    if routes:
        lines += _table(("ROUTE", "SHARE GROUP", "NODES"), routes)
    else:
        lines.append("no routes")
    if report["routes_more"]:
        lines.append(f"... and {report['routes_more']} more routes")
    streams = [
        (
            peer,
            s["address"],
            _stream_state(s),
            s["queued"],
            s["unacked"],
            f"{s['frames_sent']}/{s['frames_received']}",
            s["resends"],
            s["dropped"],
            s["last_error"],
        )
        for peer, s in report["streams"].items()
    ]
    lines.append("")
    headers = ("STREAM", "ADDRESS", "STATE", "QUEUED", "UNACKED", "FRAMES OUT/IN", "RESENT")
    lines += _table((*headers, "DROPPED", "LAST ERROR"), streams)
    return "\n".join(lines)


def _link(connected: bool | None) -> str:
    return "unknown" if connected is None else "connected" if connected else "lost"


def _stream_state(stream: Report) -> str:
    if stream["connected"]:
        return "connected"
    return "unreachable" if stream["unreachable"] else "reconnecting"


def render_node_down(report: Report) -> str:
    """What a node-down did, one line per kind of consequence."""
    node = report["node"]
    rehomed = report["rehomed"]
    again = " (it was down already)" if report["already_down"] else ""
    lines = [
        f"node {node} declared down by leader {report['leader']}{again}",
        _listed("wills published", report["wills"]),
        _listed("wills waiting for their delay", report.get("delayed_wills", [])),
        _listed("sessions re-homed", [f"{cid} -> {owner}" for cid, owner in rehomed.items()]),
        _listed("clients released", report["released"]),
    ]
    if report["stream_connected"]:
        lines.append(
            f"warning: the leader still had a forwarding stream to node {node}; "
            "if it is running, its clients have been disconnected"
        )
    return "\n".join(lines)


def _listed(what: str, items: Sequence[str]) -> str:
    return f"{what}: {len(items)}" + (f" ({', '.join(items)})" if items else "")
