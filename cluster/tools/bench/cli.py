"""The ``bench`` subcommand: options, then one run, then the table or the JSON.

``add_parser`` is all the ``raftmq`` command needs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys

import uvloop

from raftmq.cluster.tools.bench.plan import SCENARIOS, Address, BenchConfig, default_processes
from raftmq.cluster.tools.bench.report import render_table
from raftmq.cluster.tools.bench.runner import BenchError, run_bench

EXIT_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = """\
Load-test an MQTT broker with raw asyncio clients spread over several processes.

scenarios:
  pairs         N publishers -> N subscribers, publisher i to subscriber i on bench/<run>/i
  fanin         N publishers -> 1 subscriber of bench/<run>/#
  fanout        1 publisher -> N subscribers of one topic
  latency       pairs at a fixed total --rate for --duration; latency percentiles
  conns         open N idle connections (keepalive 600) within --timeout
  connect-rate  N clients CONNECT/CONNACK/DISCONNECT on fresh connections for --duration
  ceiling       pairs against the in-process sink: the generator's own ceiling

cluster placement:
  --sub-host/--sub-port put the subscribers of pairs, fanin, fanout and latency on
  another node than the publishers (--host/--port). Before the timed run, probes
  published where the publishers are must reach every subscriber, so that no
  message is published before its route reached the publishers' node; probes are
  counted nowhere. --target HOST:PORT, repeated, spreads conns and connect-rate
  clients over several nodes.

Every message carries its publisher and sequence number; lost, duplicate and
out-of-order deliveries are counted. The exit status is 0 only for a complete,
clean run.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``bench`` on the given subparsers."""
    parser = subparsers.add_parser(
        "bench",
        help="load-test an MQTT broker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--host", default="127.0.0.1", help="broker address (default %(default)s)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default %(default)s)")
    parser.add_argument(
        "--sub-host",
        help="subscribers connect here, publishers to --host: another node of a cluster "
        "(default: --host)",
    )
    parser.add_argument("--sub-port", type=int, help="subscribers' broker port (default: --port)")
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        type=parse_address,
        default=[],
        metavar="HOST:PORT",
        help="conns, connect-rate: a broker address, repeated for several nodes; "
        "clients round-robin over them (default: --host:--port)",
    )
    parser.add_argument(
        "--clients", type=int, default=10, help="N of the scenario (default %(default)s)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=10_000,
        help="messages per publisher; latency uses --rate x --duration (default %(default)s)",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    parser.add_argument(
        "--payload", type=int, default=64, metavar="BYTES", help="(default %(default)s, min 16)"
    )
    parser.add_argument(
        "--protocol", type=int, choices=(4, 5), default=4, help="MQTT 3.1.1 (4) or 5.0 (5)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=default_processes(),
        help="generator processes (default: half the CPUs, %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="total msgs/s across publishers, paced; 0 = as fast as possible "
        "(latency defaults to 1000)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of latency and connect-rate runs (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="stop and report what arrived after this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--inflight",
        type=int,
        default=20,
        help="QoS 1/2 messages in flight per publisher, lowered to a v5 broker's receive "
        "maximum (default %(default)s: Mosquitto's max_inflight_messages, which it "
        "enforces on 3.1.1 clients by silently dropping QoS 2 messages beyond it)",
    )
    parser.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help="conns: report the broker's RSS growth per connection (needs psutil)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run against the in-process sink instead of --host/--port (QoS 0; not fanin)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.set_defaults(handler=run)


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--target {text!r}: expected HOST:PORT")
    return host, int(port)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        scenario=args.scenario,
        host=args.host,
        port=args.port,
        clients=args.clients,
        messages=args.messages,
        qos=args.qos,
        payload=args.payload,
        protocol=args.protocol,
        processes=args.processes,
        rate=args.rate,
        duration=args.duration,
        timeout=args.timeout,
        inflight=args.inflight,
        broker_pid=args.broker_pid,
        self_test=args.self_test,
        sub_host=args.sub_host,
        sub_port=args.sub_port,
        targets=tuple(args.targets),
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe; return the exit status."""
    cfg = config_from_args(args)
    problems = cfg.problems()
    if cfg.broker_pid is not None and importlib.util.find_spec("psutil") is None:
        problems.append("--broker-pid needs psutil (pip install psutil)")
    if problems:
        for problem in problems:
            print(f"raftmq bench: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(run_bench(cfg, None if args.quiet else sys.stderr))
    except BenchError as exc:
        print(f"raftmq bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(cfg, report))
    return 0 if report["ok"] else EXIT_FAILED
