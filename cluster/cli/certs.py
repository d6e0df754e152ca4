"""``raftmq certs``: development certificates, and node certificates for clusters.

``raftmq certs init DIR``: a private CA with a server and a client certificate.

    DIR/ca.crt       the CA certificate: clients trust it (mosquitto_sub --cafile)
    DIR/ca.key       the CA key: keep it, or delete it once you have what you need
    DIR/server.crt   server certificate, SAN localhost, 127.0.0.1, ::1 and every --name
    DIR/server.key
    DIR/client.crt   client certificate (CN --client-name) for mutual TLS
    DIR/client.key

``raftmq certs node --dir DIR NODE_ID...``: a certificate per cluster node,
for mutual TLS between nodes (``cluster_tls_*`` keys).

    DIR/<id>.crt     CN and DNS SAN the node id (and every --name); server and
    DIR/<id>.key     client authentication; signed by DIR/ca.crt + DIR/ca.key,
                     which are made first if neither exists

Private keys are mode 0600 and never printed. Existing files are not
overwritten unless ``--force`` is given (and ``node`` never replaces the CA). The
certificates themselves are made by ``raftmq.cluster.tools.certgen``, imported only
when this command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_FAILURE = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``certs`` on the given subparsers."""
    certs = subparsers.add_parser(
        "certs",
        help="make TLS certificates: for development, and for cluster nodes",
        description="Development certificates (a private CA, a server and a client "
        "certificate) and node certificates for mutual TLS between cluster nodes.",
    )
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init_parser = actions.add_parser(
        "init",
        help="make a CA, a server certificate and a client certificate in DIR",
        description="Write ca.crt/ca.key, server.crt/server.key (SAN localhost, 127.0.0.1, "
        "::1 and every --name) and client.crt/client.key to DIR. Keys are mode 0600 "
        "and never printed; existing files are kept unless --force.",
    )
    init_parser.add_argument("dir", metavar="DIR", type=Path, help="where to write the files")
    init_parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the server certificate (repeatable)",
    )
    init_parser.add_argument(
        "--client-name",
        default="client",
        metavar="CN",
        help="common name of the client certificate, the user name under "
        'tls_cert_as_username = "cn" (default %(default)s)',
    )
    init_parser.add_argument("--force", action="store_true", help="replace existing files")
    init_parser.set_defaults(handler=_run_init)
    _add_node_parser(actions)


def _add_node_parser(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    node_parser = actions.add_parser(
        "node",
        help="make a certificate for each cluster node, for mutual TLS between nodes",
        description="Write DIR/NODE_ID.crt and DIR/NODE_ID.key for each NODE_ID: CN and DNS "
        "SAN the node id, server and client authentication, signed by DIR/ca.crt and "
        "DIR/ca.key (from `raftmq certs init DIR`, or made now if neither exists). Peers "
        "accept a node's forwarding streams only with a certificate naming its node id. "
        "Keys are mode 0600 and never printed; existing node files are an error unless --force.",
    )
    node_parser.add_argument(
        "node_ids", nargs="+", metavar="NODE_ID", help="node ids, as in node_id"
    )
    node_parser.add_argument(
        "--dir", required=True, type=Path, metavar="DIR", help="where the CA is and the files go"
    )
    node_parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for every certificate made (repeatable)",
    )
    node_parser.add_argument(
        "--force", action="store_true", help="replace existing node files (never the CA)"
    )
    node_parser.set_defaults(handler=_run_node)


def _run_init(args: argparse.Namespace) -> int:
    from ..tools.certgen import DEFAULT_SERVER_NAMES, init

    try:
        paths = init(args.dir, args.name, client_name=args.client_name, force=args.force)
    except (OSError, ValueError) as exc:
        print(f"raftmq certs: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for path in paths:
        print(f"wrote {path}")
    directory = args.dir.resolve()
    names = ", ".join([*DEFAULT_SERVER_NAMES, *args.name])
    print(
        f"\nThe server certificate is valid for {names}.\n"
        "For a TLS node, put this in a config file (say tls.toml) and run "
        "`raftmq node --config tls.toml`:\n"
        '  listen = "mqtts://127.0.0.1:8883"\n'
        f'  tls_cert = "{directory / "server.crt"}"\n'
        f'  tls_key = "{directory / "server.key"}"\n'
        "Then connect with:\n"
        f"  mosquitto_sub --cafile {directory / 'ca.crt'} -h localhost -p 8883 -t '#' -v"
    )
    return 0


def _run_node(args: argparse.Namespace) -> int:
    from ..tools.certgen import issue_node_files, node_files

    if_exists = "replace" if args.force else "refuse"
    try:
        paths = issue_node_files(args.dir, args.node_ids, args.name, if_exists=if_exists)
    except (OSError, ValueError) as exc:
        print(f"raftmq certs: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for path in paths:
        print(f"wrote {path}")
    first = node_files(args.dir.resolve(), args.node_ids[0])
    print(
        f"\nIn the config of node {args.node_ids[0]} (likewise for the others), next to "
        "cluster_secret:\n"
        f'  cluster_tls_ca = "{first.ca}"\n'
        f'  cluster_tls_cert = "{first.cert}"\n'
        f'  cluster_tls_key = "{first.key}"'
    )
    return 0
